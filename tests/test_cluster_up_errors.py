"""`runink up`'s error when its servers elect no leader: the last answer and the newest warning
of the servers' logs (the reason), not only "no Barn leader?"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from http_stub import HttpStub

from runink.core.cli import cluster_cmd
from runink.core.errors import RuninkError


def _log(path: Path, *records: tuple[str, str, str]) -> Path:
    path.write_text(
        "not json: a line a library printed\n"
        + "".join(json.dumps({"time": t, "level": level, "message": m}) + "\n" for t, level, m in records)
    )
    return path


def test_no_leader_in_time_says_the_last_answer_and_the_newest_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_cmd, "UP_TIMEOUT", 0.6)
    body = b'{"detail": "no leader: an election is in progress"}'
    server = HttpStub(
        lambda request: b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    logs = [
        _log(
            tmp_path / "s0.log",
            ("2026-12-06T18:12:13.363+00:00", "warning", "Raft connection to 127.0.0.1:10991 refused: another CA"),
            ("2026-12-06T18:12:14.000+00:00", "info", "newer, but not a warning"),
        ),
        _log(tmp_path / "s1.log", ("2026-12-06T18:12:10.000+00:00", "warning", "an older warning")),
        tmp_path / "missing.log",
    ]
    try:
        with pytest.raises(RuninkError) as info:
            cluster_cmd._wait_for_leader([server.address], "token", None, logs, {"name": "default"})
    finally:
        server.close()
    message = str(info.value)
    assert "\n" not in message
    assert f"last answer {server.address}: 503 " in message and "an election is in progress" in message
    assert message.endswith(f"newest warning, {logs[0]}: Raft connection to 127.0.0.1:10991 refused: another CA")
    assert server.requests  # (it was asked, again and again)
