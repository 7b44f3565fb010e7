"""The cluster commands' config values kept between runs (core/cli/cluster_settings.py): used
while the config is unchanged, so the config is not loaded; never stale; an invalid config
is never kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trusted import trust_project_config

# One CLI start: the cluster settings its state finds, and whether it loaded the config in full.
PROBE = """
import json, sys
from runink.core.cli.state import CliState
state = CliState.from_argv(sys.argv[1:])
settings = state.cluster_settings()
print(json.dumps({
    "server": settings and settings.server,
    "herd": settings and settings.herd,
    "data_dir": settings and settings.data_dir,
    "loaded": "runink.core.config" in sys.modules,
    "error": str(state._config_error) if state._config_error else None,
}))
"""


def probe(folder: Path, *args: str, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    environ |= {"XDG_CACHE_HOME": str(folder / "cache"), "XDG_CONFIG_HOME": str(folder / "cfg"), **env}
    ran = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        check=False,
        cwd=folder,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    found: dict[str, object] = json.loads(ran.stdout)
    return found


def write_config(folder: Path, text: str) -> None:
    path = folder / "runink.toml"
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:  # (a coarse clock: make the edit visible)
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))
    trust_project_config(folder, folder / "cfg")


def test_kept_values_are_used_until_the_config_changes(tmp_path: Path) -> None:
    write_config(tmp_path, 'herd = "alpha"\n[cluster]\nserver = "127.0.0.1:7001"\n')
    first = probe(tmp_path)
    assert first == {
        "server": "127.0.0.1:7001",
        "herd": "alpha",
        "data_dir": first["data_dir"],
        "loaded": True,
        "error": None,
    }
    again = probe(tmp_path)
    assert again == {**first, "loaded": False}  # from the kept values: the config was not loaded

    write_config(tmp_path, 'herd = "beta"\n[cluster]\nserver = "127.0.0.1:7002"\n')
    edited = probe(tmp_path)
    assert (edited["server"], edited["herd"], edited["loaded"]) == ("127.0.0.1:7002", "beta", True)
    # an environment variable or a --set changes them too, and each is kept on its own
    by_env = probe(tmp_path, RUNINK_HERD="gamma")
    assert (by_env["herd"], by_env["loaded"]) == ("gamma", True)
    by_set = probe(tmp_path, "--set", "cluster.server=127.0.0.1:7003")
    assert (by_set["server"], by_set["loaded"]) == ("127.0.0.1:7003", True)
    assert probe(tmp_path, RUNINK_HERD="gamma")["loaded"] is False
    assert probe(tmp_path)["herd"] == "beta"
    # another folder: another ./runink.toml (here none)
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert probe(other, XDG_CACHE_HOME=str(tmp_path / "cache"))["server"] is None


def test_an_invalid_config_is_never_kept(tmp_path: Path) -> None:
    write_config(tmp_path, '[cluster]\nserver = "127.0.0.1:7001"\nbogus = 1\n')
    for _ in range(2):
        found = probe(tmp_path)
        assert found["server"] is None and found["loaded"] is True
        assert "cluster.bogus" in str(found["error"]), found
    time.sleep(0.01)
    write_config(tmp_path, '[cluster]\nserver = "127.0.0.1:7001"\n')
    assert probe(tmp_path)["server"] == "127.0.0.1:7001"


def test_a_kept_file_edited_by_hand_or_linked_is_not_trusted(tmp_path: Path) -> None:
    write_config(tmp_path, '[cluster]\nserver = "127.0.0.1:7001"\n')
    probe(tmp_path)
    kept = tmp_path / "cache" / "runink" / "settings.json"
    data = json.loads(kept.read_text())
    for entry in data["fingerprints"].values():
        entry["entries"]["server"] = 7  # not a string
    kept.write_text(json.dumps(data))
    found = probe(tmp_path)
    assert (found["server"], found["loaded"]) == ("127.0.0.1:7001", True)
    # a link in its place is not read (nor written through)
    target = tmp_path / "elsewhere.json"
    target.write_text(kept.read_text())
    planted = target.read_text()
    kept.unlink()
    kept.symlink_to(target)
    assert probe(tmp_path)["loaded"] is True
    assert not kept.is_symlink() and target.read_text() == planted  # the link replaced, its target untouched
    assert probe(tmp_path)["loaded"] is False


def test_a_kept_file_another_user_owns_is_not_read(tmp_path: Path) -> None:
    """(A shared $XDG_CACHE_HOME: another user's file could name their server, and the CLI
    would send it this user's token.)"""
    write_config(tmp_path, '[cluster]\nserver = "127.0.0.1:7001"\n')
    probe(tmp_path)
    kept = tmp_path / "cache" / "runink" / "settings.json"
    data = json.loads(kept.read_text())
    for entry in data["fingerprints"].values():
        entry["entries"]["server"] = "203.0.113.9:443"
    kept.write_text(json.dumps(data))
    os.chown(kept, 65534, 65534)  # (the tests run as root)
    found = probe(tmp_path)
    assert (found["server"], found["loaded"]) == ("127.0.0.1:7001", True)
