"""The launcher's messages (plugins/executors/linux/messages.py): typed, versioned JSON lines."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runink.plugins.executors.linux.messages import (
    VERSION,
    Bind,
    Exited,
    Failed,
    LaunchRequest,
    Limits,
    MessageError,
    PythonCode,
    Started,
    parse_event,
)


def test_a_request_round_trips_through_its_line() -> None:
    request = LaunchRequest(
        id="s-1",
        command=("python",),
        cwd="/work/s-1",
        binds=(Bind("/work/s-1", writable=True), Bind("/data")),
        hostname="s-1",
        network=True,
        userns=True,
        limits=Limits(cpu=1.5, memory=256 * 1024**2, pids=64),
        stdout="/proc/1/fd/5",
        status_file="/t/exit_status",
        secrets="/proc/1/fd/7",
        python=PythonCode(module="runink.core.dataplane.slice", args=("a",)),
        devices=("/dev/nvidia1", "/dev/nvidiactl"),
        hidden=("/p/runink.toml",),
    )
    line = request.to_line()
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert json.loads(line)["v"] == VERSION
    assert LaunchRequest.from_line(line) == request
    assert LaunchRequest.from_line(line.encode()) == request  # the payload reads bytes
    forwarded = dataclasses.replace(request, uid=100001, gid=100002)
    assert LaunchRequest.from_line(forwarded.to_line()) == forwarded


def test_a_hand_written_request_keeps_the_defaults() -> None:
    """Tests and benches write plain dicts without "v" or optional fields: still version 1."""
    line = json.dumps({"op": "launch", "id": "s-2", "command": ["sh", "-c", "true"], "env": {"PATH": "/bin"}})
    request = LaunchRequest.from_line(line)
    assert request == LaunchRequest(id="s-2", command=("sh", "-c", "true"), env={"PATH": "/bin"})
    assert (request.cwd, request.uid, request.limits, request.python) == ("/", None, Limits(), None)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"binds": [{"writable": True}]}, "binds[0].path: missing"),
        ({"binds": [{"path": "/a"}, {"path": 3}]}, "binds[1].path: expected a string, got int"),
        ({"binds": [{"path": "relative"}]}, "binds[0].path: 'relative' is not an absolute path"),
        ({"binds": [{"path": "/a", "writeable": True}]}, "binds[0].writeable: unknown field"),
        ({"limits": {"memory": "1G"}}, "limits.memory: expected an integer, got str"),
        ({"limits": {"cpu": -1}}, "limits.cpu"),
        ({"uid": True}, "uid: expected an integer, got bool"),
        ({"uid": -5}, "uid: -5 is below 0"),
        ({"network": "yes"}, "network: expected true or false, got str"),
        ({"command": "sh -c true"}, "command: expected a list of strings, got str"),
        ({"command": []}, "command: empty"),
        ({"python": {"module": "m", "code": "x"}}, "python: expected one of module or code"),
        ({"env": {"A": 1}}, "env.A: expected a string, got int"),
        ({"op": "kill"}, "op: unknown operation 'kill'"),
        ({"colour": "red"}, "colour: unknown field"),
        ({"v": 2}, "v: version 2 not understood"),
        ({"devices": "/dev/nvidia0"}, "devices: expected a list of strings"),
        ({"devices": ["nvidia0"]}, "devices[0]: 'nvidia0' is not an absolute path to a device"),
        ({"devices": ["/dev/nvidia0", "/x/null"]}, "devices[1]: '/x/null' is not an absolute path to a device"),
        ({"devices": ["/dev/nvidia0", "/other/nvidia0"]}, "devices[1]: a second device named 'nvidia0'"),
        ({"hidden": ["runink.toml"]}, "hidden[0]: 'runink.toml' is not an absolute, normal path"),
        ({"hidden": ["/p/../etc/shadow"]}, "hidden[0]: '/p/../etc/shadow' is not an absolute, normal path"),
        ({"hidden": ["/p"] * 17}, "hidden: 17 paths (at most 16)"),
        ({"devices": ["/dev/.."]}, "devices[0]"),
        ({"devices": [f"/dev/n{i}" for i in range(65)]}, "devices: 65 devices (at most 64)"),
    ],
)
def test_a_bad_request_names_its_field(change: dict[str, object], named: str) -> None:
    line = json.dumps({"op": "launch", "id": "s-3", "command": ["true"], **change})
    with pytest.raises(MessageError) as caught:
        LaunchRequest.from_line(line)
    assert str(caught.value).startswith(named)
    assert caught.value.message_id == "s-3"  # so the "failed" event can name the slice


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("not json", "request: not JSON"),
        ("[1, 2]", "request: expected a JSON object, got list"),
        ('{"op": "launch", "command": ["true"]}', "id: missing"),
        ('{"op": "launch", "id": "", "command": ["true"]}', "id: expected a non-empty string"),
    ],
)
def test_a_request_without_an_id_is_refused_too(line: str, named: str) -> None:
    with pytest.raises(MessageError) as caught:
        LaunchRequest.from_line(line)
    assert str(caught.value).startswith(named) and caught.value.message_id == ""


def test_events_round_trip_and_are_checked() -> None:
    for event in (
        Started("s-1", 123, "sandbox-7-1", 100001),
        Started("s-2", 9),
        Failed("s-1", "no"),
        Exited("s-1", 137),
    ):
        assert parse_event(event.to_line()) == event
    # as the launcher before messages.py wrote them (no "v"): still read
    assert parse_event('{"event": "exited", "id": "s-1", "code": 0}') == Exited("s-1", 0)
    with pytest.raises(MessageError, match=r"^code: expected an integer, got str"):
        parse_event('{"event": "exited", "id": "s-1", "code": "0"}')
    with pytest.raises(MessageError, match=r"^event: unknown event 'paused'"):
        parse_event('{"event": "paused", "id": "s-1"}')
