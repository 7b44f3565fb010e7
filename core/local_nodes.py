"""The agents of a `runink up` cluster: launch files, pid files, started and stopped by name.

`runink up` writes, in the cluster's folder, one launch file per node that may run there
(``scaler/<node>.json``: the agent's argv and its log, with the node's own certificate and
token made by `up`); it starts the first ones through ``LocalNodes.start`` and its servers'
``local`` scaler (runink.plugins.scalers.local) starts and stops the others. Each started
agent is recorded in ``scaler/<node>.pid`` (its pid and start time, so a reused pid is never
taken for it): every server, whichever leads, and `runink down` see the same files. A lock
makes two processes never start the same node; ``scaler/.stopped`` (`runink down`) makes
them start nothing more.

Everything read is checked: the folder and its files must be this user's and not writable by
others, read without following links and bounded in size.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runink.core.interfaces.scaler import ScalerError
from runink.core.processes import process_start
from runink.core.units import check_name

FOLDER = "scaler"
STOPPED = ".stopped"
MAX_FILE = 64 * 1024
KILL_AFTER = 120.0  # seconds after SIGTERM a node still running is SIGKILLed (on the next remove)


class LocalNodes:
    """The launch and pid files of one `runink up` cluster's agents (``<dir>/scaler``)."""

    def __init__(self, cluster_dir: str | Path, *, create: bool = False) -> None:
        self.folder = Path(cluster_dir) / FOLDER
        if create:
            self.folder.mkdir(mode=0o700)
        _check_private(self.folder, directory=True)

    # --- what `runink up` writes --------------------------------------------------------

    def add_launch(self, name: str, argv: list[str], log: Path, order: int) -> None:
        """The launch file of node ``name``: how its agent is started (never started here)."""
        record = {"argv": argv, "log": str(log), "order": order}
        _write_private(self.folder / f"{check_name(name, 'node')}.json", record)

    # --- starting and stopping ----------------------------------------------------------

    def launchable(self) -> list[str]:
        """The nodes that may be started, in the order `up` wrote them (their ``order``)."""
        found: list[tuple[int, str]] = []
        for entry in os.scandir(self.folder):
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                name = entry.name[: -len(".json")]
                found.append((int(self._launch(name)["order"]), name))
        return [name for _, name in sorted(found)]

    def running(self) -> list[str]:
        """The nodes whose agent runs (started here or by another process over the same folder)."""
        return [name for name in self.launchable() if self.process(name) is not None]

    def start(self, count: int) -> list[str]:
        """Start the agents of up to ``count`` nodes that do not run, in order; their names."""
        started: list[str] = []
        with self._locked():
            if (self.folder / STOPPED).exists():
                raise ScalerError("the local cluster is going down (`runink down`): no node is started")
            for name in self.launchable():
                if len(started) >= count:
                    break
                if self.process(name) is None:
                    self._start(name)
                    started.append(name)
        return started

    def stop(self, name: str) -> None:
        """SIGTERM the node's agent (it drains: its running tasks are given back); SIGKILL it if
        asked again more than KILL_AFTER seconds later. Returns at once."""
        found = self._record(name)
        if found is None:
            return
        pid, record = found
        signalled = record.get("term")
        with contextlib.suppress(ProcessLookupError):
            if isinstance(signalled, (int, float)) and time.time() - signalled > KILL_AFTER:
                os.killpg(pid, signal.SIGKILL)
                return
            os.killpg(pid, signal.SIGTERM)
        if signalled is None:
            _write_private(self.folder / f"{name}.pid", {**record, "term": time.time()})

    def stop_starting(self) -> None:
        """No agent is started from now on (`runink down`, before it stops them)."""
        with self._locked():
            (self.folder / STOPPED).touch(mode=0o600)

    def process(self, name: str) -> tuple[int, int] | None:
        """(pid, start time) of the node's agent while that very process runs."""
        found = self._record(name)
        return None if found is None else (found[0], found[1]["start"])

    # --- the files ----------------------------------------------------------------------

    def _launch(self, name: str) -> dict[str, Any]:
        data = _read_json(self.folder / f"{check_name(name, 'node')}.json")
        argv, log, order = data.get("argv"), data.get("log"), data.get("order")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv) and isinstance(log, str)):
            raise ScalerError(f"{self.folder / name}.json: expected an argv (a list of strings) and a log path")
        if not isinstance(order, int):
            raise ScalerError(f"{self.folder / name}.json: order must be a whole number")
        return data

    def _record(self, name: str) -> tuple[int, dict[str, Any]] | None:
        try:
            record = _read_json(self.folder / f"{check_name(name, 'node')}.pid")
        except FileNotFoundError:
            return None
        pid, start = record.get("pid"), record.get("start")
        if not (isinstance(pid, int) and pid > 1 and isinstance(start, int)):
            return None
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # (one this process started: reaped, not left a zombie)
        return (pid, record) if process_start(pid) == start else None

    def _start(self, name: str) -> None:
        launch = self._launch(name)
        try:
            with open(launch["log"], "ab") as log:
                process = subprocess.Popen(
                    launch["argv"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # its own group: stop() signals the agent and its helpers
                )
        except OSError as exc:
            raise ScalerError(f"node {name}: cannot start its agent: {exc}") from None
        _write_private(self.folder / f"{name}.pid", {"pid": process.pid, "start": process_start(process.pid)})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _write_private(path: Path, record: dict[str, Any]) -> None:
    """``record`` as JSON at ``path``, whole or not at all (a temporary file renamed), mode 0600."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(record))
    os.replace(temporary, path)


def _check_private(path: Path, *, directory: bool, info: os.stat_result | None = None) -> None:
    """``path`` (or what ``info`` says of it, from its open fd) is this user's and only its to write."""
    try:
        info = info or os.lstat(path)
    except OSError as exc:
        raise ScalerError(f"local scaler: {path}: {exc.strerror}") from None
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not kind_ok or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise ScalerError(
            f"local scaler: {path} must be a {'folder' if directory else 'file'} of this user "
            f"that no one else may write (it is {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid})"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:  # (a link: ELOOP, said in one line, not as an internal error)
        raise ScalerError(f"{path}: {exc.strerror} (a file of the local scaler is read through no link)") from None
    with os.fdopen(fd, "rb") as file:
        _check_private(path, directory=False, info=os.fstat(fd))
        data = file.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ScalerError(f"{path}: larger than {MAX_FILE} bytes")
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise ScalerError(f"{path}: not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ScalerError(f"{path}: expected a JSON object")
    return parsed
