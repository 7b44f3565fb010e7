"""Waiting for a cluster job and writing its output: what ``runink exec``, ``submit --wait``
and ``logs --follow`` share. Plain Python and the cluster client only (no typer, no rich, no
config models): ``runink exec`` runs this from its short path too (``exec_fast``)."""

from __future__ import annotations

import base64
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from runink.core.cli.cluster_client import part
from runink.core.cli.output import print_json

if TYPE_CHECKING:
    from runink.core.cli.cluster_client import ClusterClient
    from runink.core.cli.local_runs import LocalRuns

# RunState.final, spelled out: importing the records would add ~10 ms to every CLI start
FINAL = {"SUCCEEDED", "FAILED", "OOMKILLED", "DEADLINE_EXCEEDED", "CANCELLED", "SKIPPED"}
# exit statuses of `runink exec` for a command that did not exit by itself (as shells and timeout(1) say)
EXIT_OF_STATE = {"OOMKILLED": 137, "DEADLINE_EXCEEDED": 124, "CANCELLED": 130}
OUTPUT_POLL = 0.2  # seconds between reads of a running job's output
JOB_WAIT = 5.0  # seconds one read of a job waits on the server for its next change
MAX_READS = 256  # reads of one stream per poll: what a slice writes faster than it is read waits


def run_exec(client: ClusterClient, body: dict[str, Any], *, detach: bool, json_output: bool) -> int:
    """Submit the job ``body`` (``POST /v1/jobs``) and, unless ``detach``, write its output as
    it comes and say how it ended: ``runink exec``. Returns the exit status: the command's own,
    or a shell's for a command stopped from outside (137, 124, 130)."""
    job = client.call("POST", "/v1/jobs", body)
    job_id = job["job"]["id"] if "job" in job else job["id"]
    if detach:
        if json_output:
            print_json({"job": job_id})
        else:
            print(job_id)
        return 0
    streams = {"stdout": binary(sys.stdout), "stderr": binary(sys.stderr)}
    output = None if json_output else Output(client, job_id, streams)
    try:
        with _stopped_by_signals():
            final = wait_for_job(client, job_id, output, after=int(job.get("revision") or 0))
    except (KeyboardInterrupt, Stopped) as exc:
        # as srun: a command stopped here stops its job (it ran on, unseen, its id never shown)
        try:
            client.call("POST", f"/v1/jobs/{part(job_id)}/cancel")
            say(f"{job_id}: cancelled: {'interrupted' if isinstance(exc, KeyboardInterrupt) else exc}")
        except Exception:  # (the cluster did not answer: say what is left running)
            say(f"{job_id}: may be running still: runink cancel {job_id}")
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + exc.signum
    task = (final.get("tasks") or [{}])[0]
    if json_output:
        print_json(final)
    else:
        line = f"{job_id}: {final['job']['state']}"
        if task.get("message"):
            line += f": {task['message']}"
        if final["job"].get("estimate") is not None:
            line += f" (worst-case cost {final['job']['estimate']:.4g})"
        say(line)
    state = final["job"]["state"]
    if state == "SUCCEEDED":
        return 0
    if state in EXIT_OF_STATE:  # stopped from outside: say how, as shells and timeout(1) do
        return EXIT_OF_STATE[state]
    code = task.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else 1


class Stopped(Exception):
    """The process was asked to stop (SIGTERM, SIGHUP) while it waited for its job."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Stopped in the block (timeout(1), a closed terminal), as Ctrl-C
    raises KeyboardInterrupt: the waiting command can then stop its job, not just vanish."""

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():  # (only the main thread may set them)
        yield
        return
    kept = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)


def wait_for_job(client: ClusterClient, job_id: str, output: Output | None = None, *, after: int = 0) -> dict[str, Any]:
    """The job once it ended; says on stderr where it is while it waits (state changes only)
    and writes its output as it comes (every OUTPUT_POLL seconds, and all of it at the end: the
    agent sends a task's last output before it reports the task ended; a job that ended before
    any was read brings it in its final answer). Each read waits on the server for the job's
    next change (``wait``/``after``): no polling. ``after``: the revision the submission's
    answer gave (its first read waits for a change past it)."""
    tell = sys.stderr.isatty()
    last: tuple[str, str] | None = None
    revision = after
    while True:
        wait = OUTPUT_POLL if output is not None else JOB_WAIT
        asked = time.monotonic()
        answer: dict[str, Any] = client.call(
            "GET", f"/v1/jobs/{part(job_id)}", wait=wait, after=revision, output="true" if output is not None else None
        )
        known, revision = revision, int(answer.get("revision") or 0)
        if revision == known and time.monotonic() - asked < wait / 2:
            time.sleep(0.05)  # a server that does not wait (an older one): no busy loop
        state = answer["job"]["state"]
        if output is not None and not (state in FINAL and output.take(answer.pop("output", None))):
            output.poll()
        if state in FINAL:
            answer.pop("output", None)
            return answer
        why = str((answer.get("tasks") or [{}])[0].get("message") or "")
        if (state, why) != last and (tell or (state == "PENDING" and why)):
            # (a job that cannot be placed says why, terminal or not: it waited unseen, its id unknown)
            say(f"{job_id}: {state}" + (f": {why}" if why else ""))
        last = (state, why)


def say(line: str) -> None:
    """A line about the job on stderr, as it is (plain: rich's imports cost ~30 ms a start)."""
    print(line, file=sys.stderr, flush=True)


def binary(stream: Any) -> BinaryIO:
    buffer: BinaryIO = getattr(stream, "buffer", stream)
    return buffer


class Output:
    """A job's output read through the API and written as it is (bytes from the command: never
    through rich, which would read markup in it), from where the last read ended. When the task
    runs again (a retry), its new attempt's output follows from its start."""

    def __init__(self, client: ClusterClient | LocalRuns, job_id: str, streams: dict[str, BinaryIO]) -> None:
        self.client = client
        self.job_id = job_id
        self.streams = streams
        self.offsets = dict.fromkeys(streams, 0)
        self.attempts: dict[str, int | None] = dict.fromkeys(streams)

    def _read(self, stream: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.client.call(
            "GET", f"/v1/jobs/{part(self.job_id)}/logs", stream=stream, offset=self.offsets[stream]
        )
        return answer

    def poll(self) -> str:
        """Write what each stream has new; returns the job's state as read with it (when it is
        final, what was written is all of the output that is kept)."""
        state = ""
        for stream, out in self.streams.items():
            read = self._poll_stream(stream, out)  # (every stream is read, whatever the first said)
            state = state or read
        return state

    def _poll_stream(self, stream: str, out: BinaryIO) -> str:
        """Write what ``stream`` has new; the job's state as its first read said."""
        state = ""
        for _ in range(MAX_READS):
            answer = self._read(stream)
            if answer["attempt"] != self.attempts[stream]:
                if self.attempts[stream] is not None and self.offsets[stream]:
                    self.offsets[stream] = 0  # a new attempt: its output from the start
                    answer = self._read(stream)
                self.attempts[stream] = answer["attempt"]
            state = state or answer["state"]
            self._write(stream, out, answer)
            if not answer.get("more"):  # (a kept run's log answers in pieces; a server keeps one tail)
                break
        return state

    def take(self, tails: Any) -> bool:
        """Write the ended job's output as its final answer carried it (``output=true``: each
        stream from its start), if nothing of it was read yet; False (nothing written) if it
        was, or the answer carries none (an older server, a caller without logs.read)."""
        if (
            not isinstance(tails, dict)
            or any(self.offsets.values())
            or any(a is not None for a in self.attempts.values())
        ):
            return False
        if not all(isinstance(tails.get(stream), dict) for stream in self.streams):
            return False
        for stream, out in self.streams.items():
            self.attempts[stream] = tails[stream]["attempt"]
            self._write(stream, out, tails[stream])
        return True

    def _write(self, stream: str, out: BinaryIO, answer: dict[str, Any]) -> None:
        """Write one read's bytes of ``stream`` (saying first what was not kept of it)."""
        if answer["dropped"]:
            say(
                f"[{answer['dropped']} bytes of {stream} not kept: the server keeps the last "
                f"{answer['kept_bytes']} bytes of each stream]"
            )
        data = base64.b64decode(answer["data"])
        if data:
            out.write(data)
            out.flush()
        self.offsets[stream] = answer["next_offset"]
