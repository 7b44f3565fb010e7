"""The launcher's messages: typed, versioned, one JSON object a line.

The executor writes a ``LaunchRequest`` a line to the launcher's stdin; the launcher answers
``Started`` then ``Exited``, or ``Failed``, on its stdout, and forwards the request (its uid
and gid filled in) to the sandbox's payload over the control socket. Every message carries
``"v": VERSION``; a message without it is version 1 (a hand-written request), and a reader
refuses a version it does not know. Optional fields may be left out (or null): they keep
their defaults. A field that is missing, of the wrong type or unknown is refused by
``MessageError``, whose text names it (``binds[0].path: expected a string, got int``).

Plain dataclasses with hand-written checks, no validation library: the payload parses its
request on the slice's start path (and parses a sample in its warm-up, see payload._warm_up).
Only the standard library is imported here: the sandbox side (payload.py) uses this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

VERSION = 1


class MessageError(ValueError):
    """A message that is not what the protocol says; ``str()`` is ``FIELD: PROBLEM``."""

    def __init__(self, where: str, problem: str, message_id: str = "") -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.message_id = message_id  # the message's id if it could be read ("" if not)


# --- reading fields -------------------------------------------------------------------


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _object(line: str | bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:  # (JSONDecodeError is a ValueError)
        raise MessageError(what, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MessageError(what, f"expected a JSON object, got {_kind(data)}")
    version = data.get("v", VERSION)
    if version != VERSION or isinstance(version, bool):
        message_id = data.get("id")
        raise MessageError(
            "v",
            f"version {version!r} not understood (this side speaks {VERSION})",
            message_id if isinstance(message_id, str) else "",
        )
    return data


def _unknown(data: dict[str, Any], known: frozenset[str], where: str, message_id: str) -> None:
    extra = data.keys() - known
    if extra:
        name = sorted(extra)[0]
        raise MessageError(f"{where}{name}", "unknown field", message_id)


def _str(value: object, where: str, message_id: str) -> str:
    if not isinstance(value, str):
        raise MessageError(where, f"expected a string, got {_kind(value)}", message_id)
    return value


def _opt_str(value: object, where: str, message_id: str) -> str | None:
    return None if value is None else _str(value, where, message_id)


def _bool(value: object, where: str, message_id: str) -> bool:
    if not isinstance(value, bool):
        raise MessageError(where, f"expected true or false, got {_kind(value)}", message_id)
    return value


def _int(value: object, where: str, message_id: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError(where, f"expected an integer, got {_kind(value)}", message_id)
    if value < minimum:
        raise MessageError(where, f"{value} is below {minimum}", message_id)
    return value


def _opt_int(value: object, where: str, message_id: str) -> int | None:
    return None if value is None else _int(value, where, message_id)


def _strings(value: object, where: str, message_id: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise MessageError(where, f"expected a list of strings, got {_kind(value)}", message_id)
    for i, item in enumerate(value):
        _str(item, f"{where}[{i}]", message_id)
    return tuple(value)


def _mapping(value: object, where: str, message_id: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise MessageError(where, f"expected an object of strings, got {_kind(value)}", message_id)
    for key, item in value.items():
        _str(item, f"{where}.{key}", message_id)
    return value


def _fields(data: object, where: str, message_id: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MessageError(where, f"expected an object, got {_kind(data)}", message_id)
    return data


# --- the request ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bind:
    """A host path granted to the slice at the same path (read-only unless ``writable``)."""

    path: str
    writable: bool = False

    def depth(self) -> int:
        """How deep the path is: binds are mounted parents first."""
        return self.path.rstrip("/").count("/")

    @classmethod
    def from_dict(cls, data: object, where: str, message_id: str) -> Bind:
        fields = _fields(data, where, message_id)
        _unknown(fields, _BIND_FIELDS, f"{where}.", message_id)
        if "path" not in fields:
            raise MessageError(f"{where}.path", "missing", message_id)
        path = _str(fields["path"], f"{where}.path", message_id)
        if not path.startswith("/"):
            raise MessageError(f"{where}.path", f"{path!r} is not an absolute path", message_id)
        return cls(path, _bool(fields.get("writable", False), f"{where}.writable", message_id))


_BIND_FIELDS = frozenset({"path", "writable"})


@dataclass(frozen=True, slots=True)
class Limits:
    """The slice's cgroup limits (0: unlimited), as cgroups.CgroupLimits takes them."""

    cpu: float = 0.0  # cores
    memory: int = 0  # bytes
    pids: int = 0  # processes
    cpuset: str | None = None  # e.g. "0-1"

    @classmethod
    def from_dict(cls, data: object, message_id: str, name: str = "limits") -> Limits:
        fields = _fields(data, name, message_id)
        _unknown(fields, _LIMITS_FIELDS, f"{name}.", message_id)
        cpu = fields.get("cpu") or 0.0
        if not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or cpu < 0:
            raise MessageError(f"{name}.cpu", f"expected a number of cores >= 0, got {cpu!r}", message_id)
        return cls(
            float(cpu),
            _int(fields.get("memory") or 0, f"{name}.memory", message_id),
            _int(fields.get("pids") or 0, f"{name}.pids", message_id),
            _opt_str(fields.get("cpuset"), f"{name}.cpuset", message_id),
        )


_LIMITS_FIELDS = frozenset({"cpu", "memory", "pids", "cpuset"})


@dataclass(frozen=True, slots=True)
class PythonCode:
    """``python -m MODULE ARGS`` or ``python -c CODE ARGS``, run in a fork of the preloaded launcher."""

    module: str | None = None
    code: str | None = None
    args: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: object, message_id: str) -> PythonCode:
        fields = _fields(data, "python", message_id)
        _unknown(fields, _PYTHON_FIELDS, "python.", message_id)
        module = _opt_str(fields.get("module"), "python.module", message_id)
        code = _opt_str(fields.get("code"), "python.code", message_id)
        if (module is None) == (code is None):
            raise MessageError("python", "expected one of module or code", message_id)
        return cls(module, code, _strings(fields.get("args") or [], "python.args", message_id))

    def to_dict(self) -> dict[str, Any]:
        named = {"module": self.module} if self.module is not None else {"code": self.code}
        return {**named, "args": list(self.args)}


_PYTHON_FIELDS = frozenset({"module", "code", "args"})


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    """Start a slice: its command (or Python code), grants, limits and log/status paths.

    ``env`` and ``files`` travel through the launcher only when a client puts them here (the
    tests); the executor passes them in the ``secrets`` memfd instead, which the launcher
    never reads (see payload._read_secrets). ``uid``/``gid``: None lets the launcher pick the
    sandbox's own (the request it forwards to the payload always has them).
    """

    id: str
    command: tuple[str, ...] = ()
    cwd: str = "/"
    binds: tuple[Bind, ...] = ()
    hostname: str | None = None  # None: the id
    uid: int | None = None
    gid: int | None = None
    network: bool = False
    userns: bool = False
    limits: Limits = field(default_factory=Limits)
    stdout: str | None = None  # paths the launcher opens (None: /dev/null)
    stderr: str | None = None
    status_file: str | None = None
    secrets: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    python: PythonCode | None = None
    # the herd whose parent cgroup the slice goes under, capped at ``herd_limits`` (cpuset
    # unused); None: no herd parent (the slice's cgroup is directly under the runink parent)
    herd: str | None = None
    herd_limits: Limits | None = None
    # host paths of character devices the slice gets at /dev/<name> (its GPUs): see _devices
    devices: tuple[str, ...] = ()
    # files inside its read-only grants the slice must not read (a config holding credentials):
    # shown empty (/dev/null mounted over each); see _hidden
    hidden: tuple[str, ...] = ()
    # the command (or Python code) is in the ``secrets`` memfd, with the env: the launcher never
    # holds it (sandboxes are its forks: a later slice, of any herd, read earlier slices'
    # command lines in its memory, a review); ``command`` and ``python`` are then empty
    sealed: bool = False

    def to_line(self) -> str:
        """The request as one JSON line (with its newline)."""
        data: dict[str, Any] = {
            "v": VERSION,
            "op": "launch",
            "id": self.id,
            "command": list(self.command),
            "cwd": self.cwd,
            "binds": [{"path": b.path, "writable": b.writable} for b in self.binds],
            "network": self.network,
            "userns": self.userns,
            "limits": {"cpu": self.limits.cpu, "memory": self.limits.memory, "pids": self.limits.pids},
        }
        if self.limits.cpuset is not None:
            data["limits"]["cpuset"] = self.limits.cpuset
        for name in ("hostname", "uid", "gid", "stdout", "stderr", "status_file", "secrets"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.env:
            data["env"] = self.env
        if self.files:
            data["files"] = self.files
        if self.python is not None:
            data["python"] = self.python.to_dict()
        if self.herd is not None:
            data["herd"] = self.herd
        if self.devices:
            data["devices"] = list(self.devices)
        if self.hidden:
            data["hidden"] = list(self.hidden)
        if self.sealed:
            data["sealed"] = True
        if self.herd_limits is not None:
            caps = self.herd_limits
            data["herd_limits"] = {"cpu": caps.cpu, "memory": caps.memory, "pids": caps.pids}
        return json.dumps(data) + "\n"

    @classmethod
    def from_line(cls, line: str | bytes) -> LaunchRequest:
        """Parse and check one request; raises MessageError naming the first bad field."""
        data = _object(line, "request")
        raw_id = data.get("id")
        message_id = raw_id if isinstance(raw_id, str) else ""
        if data.get("op") != "launch":
            problem = "missing" if "op" not in data else f"unknown operation {data['op']!r} (expected 'launch')"
            raise MessageError("op", problem, message_id)
        _unknown(data, _REQUEST_FIELDS, "", message_id)
        if not message_id:
            raise MessageError("id", "missing" if raw_id is None else f"expected a non-empty string, got {raw_id!r}")
        get = data.get
        command = _strings(get("command") or [], "command", message_id)
        python = None if get("python") is None else PythonCode.from_dict(data["python"], message_id)
        sealed = _bool(get("sealed", False), "sealed", message_id)
        if sealed and (python is not None or command):
            raise MessageError("command", "given, though sealed (it is in the secrets fd)", message_id)
        if not sealed and python is None and not command:
            raise MessageError("command", "empty (and no python code)", message_id)
        raw_binds = get("binds") or []
        if not isinstance(raw_binds, list):
            raise MessageError("binds", f"expected a list, got {_kind(raw_binds)}", message_id)
        return cls(
            id=message_id,
            command=command,
            cwd=_opt_str(get("cwd"), "cwd", message_id) or "/",
            binds=tuple(Bind.from_dict(b, f"binds[{i}]", message_id) for i, b in enumerate(raw_binds)),
            hostname=_opt_str(get("hostname"), "hostname", message_id),
            uid=_opt_int(get("uid"), "uid", message_id),
            gid=_opt_int(get("gid"), "gid", message_id),
            network=_bool(get("network", False), "network", message_id),
            userns=_bool(get("userns", False), "userns", message_id),
            limits=Limits() if get("limits") is None else Limits.from_dict(data["limits"], message_id),
            stdout=_opt_str(get("stdout"), "stdout", message_id),
            stderr=_opt_str(get("stderr"), "stderr", message_id),
            status_file=_opt_str(get("status_file"), "status_file", message_id),
            secrets=_opt_str(get("secrets"), "secrets", message_id),
            env=_mapping(get("env") or {}, "env", message_id),
            files=_mapping(get("files") or {}, "files", message_id),
            python=python,
            herd=_opt_str(get("herd"), "herd", message_id),
            herd_limits=None
            if get("herd_limits") is None
            else Limits.from_dict(data["herd_limits"], message_id, "herd_limits"),
            devices=_devices(get("devices") or [], message_id),
            hidden=_hidden(get("hidden") or [], message_id),
            sealed=sealed,
        )


_REQUEST_FIELDS = frozenset(
    {"v", "op", "id", "command", "cwd", "binds", "hostname", "uid", "gid", "network", "userns", "limits"}
    | {"stdout", "stderr", "status_file", "secrets", "env", "files", "python", "herd", "herd_limits", "devices"}
    | {"hidden", "sealed"}
)
MAX_DEVICES = 64
# a device's name in the slice's /dev: a plain file name, none of the devices every slice has
_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESERVED_DEVICES = frozenset({"null", "zero", "full", "random", "urandom", "fd", "stdin", "stdout", "stderr", "shm"})


MAX_HIDDEN = 16


def _hidden(value: object, message_id: str) -> tuple[str, ...]:
    """Absolute, normal paths (no '.', '..' or '//' part), at most MAX_HIDDEN."""
    paths = _strings(value, "hidden", message_id)
    if len(paths) > MAX_HIDDEN:
        raise MessageError("hidden", f"{len(paths)} paths (at most {MAX_HIDDEN})", message_id)
    for i, path in enumerate(paths):
        parts = path.split("/")[1:]
        if not path.startswith("/") or not parts or any(p in ("", ".", "..") for p in parts):
            raise MessageError(f"hidden[{i}]", f"{path[:200]!r} is not an absolute, normal path", message_id)
    return paths


def _devices(value: object, message_id: str) -> tuple[str, ...]:
    """Absolute paths of distinct names (each becomes /dev/<name> in the slice), at most 64."""
    paths = _strings(value, "devices", message_id)
    if len(paths) > MAX_DEVICES:
        raise MessageError("devices", f"{len(paths)} devices (at most {MAX_DEVICES})", message_id)
    names: set[str] = set()
    for i, path in enumerate(paths):
        name = path.rsplit("/", 1)[-1]
        if not path.startswith("/") or not _DEVICE_NAME.fullmatch(name) or name in _RESERVED_DEVICES:
            raise MessageError(f"devices[{i}]", f"{path[:200]!r} is not an absolute path to a device", message_id)
        if name in names:
            raise MessageError(f"devices[{i}]", f"a second device named {name!r}", message_id)
        names.add(name)
    return paths


# --- the events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """The slice runs: its payload's host pid, its cgroup's name (None without cgroups), its uid."""

    id: str
    pid: int
    cgroup: str | None = None
    uid: int = 0

    def to_line(self) -> str:
        data = {"v": VERSION, "event": "started", "id": self.id, "pid": self.pid, "cgroup": self.cgroup}
        return json.dumps({**data, "uid": self.uid}) + "\n"


@dataclass(frozen=True, slots=True)
class Failed:
    """The slice could not be started (instead of Started and Exited)."""

    id: str
    message: str

    def to_line(self) -> str:
        return json.dumps({"v": VERSION, "event": "failed", "id": self.id, "message": self.message}) + "\n"


@dataclass(frozen=True, slots=True)
class Exited:
    """The slice ended: its exit code (128+N for signal N)."""

    id: str
    code: int

    def to_line(self) -> str:
        return json.dumps({"v": VERSION, "event": "exited", "id": self.id, "code": self.code}) + "\n"


Event = Started | Failed | Exited


def parse_event(line: str | bytes) -> Event:
    """Parse and check one event line; raises MessageError naming the first bad field."""
    data = _object(line, "event")
    kind = data.get("event")
    message_id = _str(data.get("id"), "id", "")
    if kind == "started":
        _unknown(data, _STARTED_FIELDS, "", message_id)
        return Started(
            message_id,
            _int(data.get("pid"), "pid", message_id, minimum=1),
            _opt_str(data.get("cgroup"), "cgroup", message_id),
            _int(data.get("uid", 0), "uid", message_id),
        )
    if kind == "failed":
        _unknown(data, _FAILED_FIELDS, "", message_id)
        return Failed(message_id, _str(data.get("message"), "message", message_id))
    if kind == "exited":
        _unknown(data, _EXITED_FIELDS, "", message_id)
        return Exited(message_id, _int(data.get("code"), "code", message_id))
    raise MessageError("event", f"unknown event {kind!r}", message_id)


_STARTED_FIELDS = frozenset({"v", "event", "id", "pid", "cgroup", "uid"})
_FAILED_FIELDS = frozenset({"v", "event", "id", "message"})
_EXITED_FIELDS = frozenset({"v", "event", "id", "code"})
