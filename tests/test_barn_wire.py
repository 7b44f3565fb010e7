"""The raft Barn's wire codec (wire.py): what the server writes, the client reads back the same."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runink.core.errors import BarnError, CompactedError, LeaseNotFoundError
from runink.core.interfaces.barn import KeyValue, WatchEvent
from runink.plugins.barn.raft import wire


@pytest.mark.parametrize(
    "kv",
    [
        KeyValue("/a", b"\x00\xffvalue", 3, 7, 2, 12),
        KeyValue("/b/\u00e9", b"", 1, 1, 1, None),
    ],
)
def test_a_key_value_and_its_event_survive_the_round_trip(kv: KeyValue) -> None:
    assert wire.kv_from_json(wire.kv_json(kv)) == kv
    event = WatchEvent("put", kv, kv.mod_revision)
    assert wire.event_from_json(wire.event_json(event)) == event
    assert wire.kv_from_json(wire.kv_json(None)) is None


@pytest.mark.parametrize(
    ("error", "status"),
    [(CompactedError("revision 3 compacted"), 400), (LeaseNotFoundError("no lease 9"), 404)],
)
def test_an_error_the_server_answers_is_the_same_error_at_the_client(error: BarnError, status: int) -> None:
    answer = wire.error_answer(error)
    assert answer.status == status
    again = wire.error_from_answer(answer.status, answer.payload)
    assert type(again) is type(error)
    assert str(again) == str(error)


def test_other_refusals_are_a_plain_barn_error_naming_the_status() -> None:
    answer = wire.error_answer(BarnError("/v1/put: lease: Input should be a valid integer"))
    assert answer.status == 400
    again = wire.error_from_answer(answer.status, answer.payload)
    assert type(again) is BarnError
    assert str(again) == "the Barn answered 400: /v1/put: lease: Input should be a valid integer"


def test_unavailable_says_when_to_retry() -> None:
    answer = wire.unavailable("no leader")
    assert (answer.status, answer.payload["error"]) == (503, "unavailable")
    assert answer.headers == {"Retry-After": str(wire.RETRY_AFTER)}


def test_the_client_and_its_codec_load_without_the_server_side() -> None:
    # a pipeline that only talks to a Barn must not import pysyncobj, uvloop or the HTTP server
    # (httptools it does: the client parses answers with it, ~6 ms of imports)
    code = (
        "import sys, runink.plugins.barn.raft.client\n"
        "heavy = [m for m in ('pysyncobj', 'uvloop', 'runink.plugins.barn.raft.replica',\n"
        "                      'runink.plugins.barn.raft.api') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
