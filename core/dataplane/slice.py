"""A slice's main program: stream one scenario from its source through its steps to its sinks.

Run as ``python -m runink.core.dataplane.slice SPEC.json`` by an executor. One batch is in
flight at a time (pull-based: the source is read only as fast as the sinks write), so
memory stays flat whatever the input size; a command step (``@run``) takes the rows before
it into a file, runs its program once and streams the file it wrote on. Progress, the final
counts and any error go to the report file named in the spec as JSON lines; the runner (later
the agent) reads it. The slice never talks to the control plane.

User code (contracts, steps) is imported here, inside the slice, never by the launcher.
Sinks write to temporary names and are renamed into place only when the whole scenario
succeeded; on any error every sink is discarded and the previous outputs stay intact.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import decimal
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from runink.core.command_step import argv as command_argv
from runink.core.command_step import placeholders, step_name
from runink.core.contracts import Contract, ContractError, detect_drift, validate
from runink.core.dataplane.annotate import AnnotateStage, annotated
from runink.core.dataplane.held_rows import HeldRows
from runink.core.dataplane.log_tags import TaggedStream, step_context
from runink.core.dataplane.spec import AnnotateSpec, CommandSpec, SliceSpec, SpecError
from runink.core.driverload import load_installed
from runink.core.errors import RuninkError
from runink.core.interfaces.storage import DatasetWriter, Malformed, Storage
from runink.core.lossless import cast_losing_nothing, untyped
from runink.core.readahead import ahead
from runink.core.report import printable
from runink.core.steps import StepFunction, adapt, import_reference

META_COLUMNS = [
    pa.field("_runink_reason", pa.string()),
    pa.field("_runink_source", pa.string()),
    pa.field("_runink_position", pa.int64()),
    pa.field("_runink_text", pa.string()),
]
META_NAMES = frozenset(f.name for f in META_COLUMNS)
REPORT_INTERVAL = 0.25
T = TypeVar("T")
MAX_LOG_LINE = 64 * 1024  # a command's longer output line reaches the log in pieces


class SliceError(Exception):
    """A failure with a message naming the scenario's step, sink or source position;
    ``exit_status``: the slice's (1 unless said)."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class Counters:
    rows_in: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    rows_malformed: int = 0
    rows_out: int = 0
    steps: dict[str, int] = field(default_factory=dict)
    sinks: dict[str, int] = field(default_factory=dict)
    read: float | None = None  # how much of the source is read (0 to 1), when its driver knows


class Reporter:
    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the slice
        self._last = 0.0
        self.started = time.monotonic()

    def send(self, event: str, force: bool = False, **data: Any) -> None:
        now = time.monotonic()
        if not force and now - self._last < REPORT_INTERVAL:
            return
        self._last = now
        self._fh.write(
            json.dumps({"event": event, "elapsed": round(now - self.started, 3), **data}, default=str) + "\n"
        )
        self._fh.flush()


@dataclass
class SinkSlot:
    format: str
    path: Path
    when: str
    options: dict[str, Any]
    driver: Storage
    writer: DatasetWriter | None = None
    rows: int = 0
    held: HeldRows = field(default_factory=HeldRows)  # its first rows, until their columns have types


def run(spec: SliceSpec) -> int:
    reporter = Reporter(Path(spec.report))
    counters = Counters()
    sinks: list[SinkSlot] = []
    output: SinkWriters | None = None
    reads: Iterator[Any] | None = None  # the source's batches (a generator the driver returns)
    stream: Iterator[Flow] | None = None  # those batches through the steps
    checking: Iterator[Flow] | None = None  # those batches through the contract's checks
    scenario = spec.scenario
    try:
        base_dir = spec.base_dir
        if base_dir not in sys.path:
            sys.path.insert(0, base_dir)
        source = spec.source
        contract = _load_contract(source.contract)
        # the report is in the slice's own work dir (slicetask.report_path): command steps'
        # files go there too, the one place the slice may write besides its sinks
        # the contract's pii fields not masked by it already, hidden before a record reaches a
        # model: a pii-only column went to it in clear
        fields = contract.fields() if contract else []
        pii = tuple(f.name for f in fields if f.constraints.pii and not f.constraints.mask)
        steps = _load_steps(
            list(spec.steps), work_dir=Path(spec.report).parent, base_dir=Path(base_dir), spec=spec, pii=pii
        )
        source_driver: Storage = _storage(source.format, spec.storage_options, spec.storage_drivers)
        sinks = [
            SinkSlot(
                s.format,
                Path(s.path),
                s.when,
                s.options,
                _storage(s.format, spec.storage_options, spec.storage_drivers),
            )
            for s in spec.sinks
        ]
        output = SinkWriters(sinks, counters)
        sink_output = output
        drift_reported: set[str] = set()
        drift_messages: list[str] = []
        dlq_schema: pa.Schema | None = None
        source_uri = source.uri
        unit = source_driver.position_unit

        def progress() -> None:
            reporter.send("progress", **_counts(counters))

        schemas: dict[str, pa.Schema] = {}  # what lineage records: the source's, as read, and the output's

        def validated() -> Iterator[Flow]:
            """The source's rows that meet the contract; the others go to the invalid sinks."""
            nonlocal dlq_schema
            assert reads is not None
            for read in reads:
                batch = read.batch
                schemas.setdefault("input", contract.schema() if contract is not None else batch.schema)
                counters.rows_in += batch.num_rows + len(read.malformed)
                if read.fraction is not None:
                    counters.read = read.fraction
                counters.rows_malformed += len(read.malformed)
                if contract is not None:
                    try:
                        drifted = detect_drift(contract, batch.schema)
                    except ContractError as exc:  # (a column named twice)
                        raise SliceError(f"{source_uri}: {exc}") from None
                    new_drift = [d for d in drifted if d not in drift_reported]
                    if new_drift and batch.num_rows:
                        drift_reported.update(new_drift)
                        drift_messages.extend(new_drift)
                        if spec.drift_policy == "block":
                            raise SliceError(
                                f"schema drift in {source_uri} against contract {source.contract} "
                                f"(herd policy: block): {'; '.join(new_drift)}"
                            )
                if dlq_schema is None and batch.schema.names:
                    # the first batch's columns and the contract's: a JSON Lines chunk has only
                    # the keys its lines have, and a later row's bad value, in a column the first
                    # lacked, was left out of its own dead letter (a review)
                    names = batch.schema.names
                    if contract is not None:
                        names = [*names, *(f.name for f in contract.fields() if f.name not in names)]
                    own = [pa.field(n, pa.string()) for n in _dead_letter_names(names).values()]
                    dlq_schema = pa.schema(own + META_COLUMNS)
                invalid_parts = []
                if contract is not None:
                    result = validate(contract, batch) if batch.num_rows else None
                    if result is not None and result.invalid.num_rows:
                        positions = read.positions.take(result.invalid_index)
                        invalid_parts.append(
                            _dlq_rows(result.invalid, result.reasons, positions, source_uri, dlq_schema)
                        )
                    if result is not None:
                        batch = result.valid
                    else:
                        batch = pa.RecordBatch.from_pylist([], schema=contract.schema())
                if read.malformed:  # dead letters whether or not the source has a contract
                    masks = contract is not None and any(f.constraints.mask for f in contract.fields())
                    invalid_parts.append(_malformed_rows(read.malformed, source_uri, unit, dlq_schema, masked=masks))
                if len(invalid_parts) > 1:  # (in file order: the contract's rejects and malformed lines interleave)
                    merged = pa.Table.from_batches(invalid_parts).sort_by("_runink_position").combine_chunks()
                    invalid_parts = merged.to_batches()
                for part in invalid_parts:
                    counters.rows_invalid += part.num_rows
                    sink_output.submit("invalid", part)
                counters.rows_valid += batch.num_rows
                yield Flow(batch, read.positions, source_uri, unit)

        # Each step wraps the stream before it: a Python step maps batches as they come, a
        # command step takes all of them (into its input file) before it yields its output.
        options = dict(source.options)
        if contract is not None and (exact := [f.name for f in contract.fields() if f.type is decimal.Decimal]):
            options["exact"] = exact  # (a JSON number read as a float kept 17 of its digits)
        if contract is not None and (written := [f.name for f in contract.fields() if f.type in (str, int)]):
            options["written"] = written  # (a JSON number read as a float, made text, lost its digits)
        reads = source_driver.read(Path(source.path), raw=contract is not None, options=options)
        # checked on a thread of its own: the next batch is checked while this one goes through
        # the steps (both mostly pyarrow and polars work, which releases the GIL)
        checking = stream = ahead(validated(), "runink-validate") if contract is not None else validated()
        for step in steps:
            if isinstance(step, CommandStage):
                stream = step.stream(stream, counters, progress)
            elif isinstance(step, AnnotateStage):
                stream = annotated(stream, step, counters, lambda c: reporter.send("annotated", force=True, **c))
            else:
                stream = _python_step(stream, step[0], step[1], counters)
        for flow in stream:
            if flow.batch.num_rows and not flow.batch.num_columns:  # (counted, and no writer writes them)
                came = "its last step" if steps else f"the source {source_uri}"
                raise SliceError(f"{flow.batch.num_rows} rows with no column came from {came}: no sink can write them")
            if flow.batch.num_rows:
                schemas["output"] = _typed_later(schemas.get("output"), flow.batch.schema)
                counters.rows_out += flow.batch.num_rows
                output.submit("valid", flow.batch)
            progress()
        output.finish()
        _open_empty(sinks, contract, steps, dlq_schema, schemas.get("input"))
        for slot in sinks:
            assert slot.writer is not None
            slot.writer.commit()
        reporter.send(
            "done",
            force=True,
            ok=True,
            drift=drift_messages,
            contract_hash=contract.contract_hash() if contract else None,
            contract=contract.__name__ if contract else None,
            pii=[f.name for f in contract.fields() if f.constraints.pii or f.constraints.mask] if contract else [],
            schemas={kind: _schema_fields(schema) for kind, schema in schemas.items()},
            annotations=[step.summary() for step in steps if isinstance(step, AnnotateStage)],
            **_counts(counters),
        )
        return 0
    except BaseException as exc:  # (polars' PanicException is no Exception: the slice ended saying nothing)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        # Closed here, not when the garbage collector finds the generators (held in a cycle by
        # the traceback): a reader's cleanup (joining its read-ahead thread) must not run inside
        # a collection, where it hung the slice for good on Python 3.13.
        for generator in (stream, checking, reads):  # the steps' first (a command step's reader too)
            if generator is not None and (close := getattr(generator, "close", None)) is not None:
                with contextlib.suppress(Exception):
                    close()
        if output is not None:
            output.close()
        for slot in sinks:
            if slot.writer is not None:
                with contextlib.suppress(Exception):  # the original error is the one to report
                    slot.writer.abort()
        message = str(exc) if isinstance(exc, SliceError) else f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        reporter.send("done", force=True, ok=False, error=f"scenario {scenario!r}: {message}", **_counts(counters))
        return exc.exit_status if isinstance(exc, SliceError) else 1


def _storage(fmt: str, options: dict[str, dict[str, Any]], drivers: dict[str, str]) -> Storage:
    """The storage driver for a format, through the one driver loader (runink.core.driverload,
    which imports no config or plugin machinery); the names were checked at compile time, and
    ``drivers`` (the spec's) names their targets, imported without a scan of entry points."""
    try:
        return load_installed(Storage, fmt, options.get(fmt), drivers.get(fmt))
    except RuninkError as exc:
        raise SliceError(f"storage driver {fmt!r}: {exc}") from None


def _schema_fields(schema: pa.Schema) -> list[list[str]]:
    """A schema as ``[[name, Arrow type], ...]`` (what lineage and the catalog keep)."""
    return [[field.name, str(field.type)] for field in schema]


def _counts(counters: Counters) -> dict[str, Any]:
    return {
        "rows_in": counters.rows_in,
        "rows_valid": counters.rows_valid,
        "rows_invalid": counters.rows_invalid,
        "rows_malformed": counters.rows_malformed,
        "rows_out": counters.rows_out,
        "steps": dict(counters.steps),
        "sinks": dict(counters.sinks),
        **({} if counters.read is None else {"read": round(counters.read, 4)}),
    }


def _load_contract(ref: str | None) -> type[Contract] | None:
    if not ref:
        return None
    try:
        contract = import_reference(ref)
    except Exception as exc:
        raise SliceError(f"contract {ref}: cannot import: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(contract, type) and issubclass(contract, Contract)):
        raise SliceError(f"contract {ref} is not a runink.core.contracts.Contract subclass")
    return contract


PythonStep = tuple[str, StepFunction]


@dataclass
class Flow:
    """A batch on its way to the sinks, and where its rows were read (for messages)."""

    batch: pa.RecordBatch
    positions: pa.Array  # of the rows as read (a step may have dropped or added some since)
    origin: str  # the source's URI, or "the output of run:sort"
    unit: str  # what a position counts: "line" or "row"


def _load_steps(
    steps: list[str | CommandSpec | AnnotateSpec],
    *,
    work_dir: Path,
    base_dir: Path,
    spec: SliceSpec,
    pii: tuple[str, ...] = (),
) -> list[PythonStep | CommandStage | AnnotateStage]:
    loaded: list[PythonStep | CommandStage | AnnotateStage] = []
    for index, step in enumerate(steps, start=1):
        if isinstance(step, AnnotateSpec):
            loaded.append(AnnotateStage(step, mask=pii))
            continue
        if isinstance(step, CommandSpec):
            driver = _storage(step.format, spec.storage_options, spec.storage_drivers)
            loaded.append(CommandStage(step, driver, folder=work_dir / f"run-{index}", cwd=base_dir))
            continue
        try:
            function = import_reference(step)
        except Exception as exc:
            raise SliceError(f"step {step}: cannot import: {type(exc).__name__}: {exc}") from exc
        if not callable(function):
            raise SliceError(f"step {step} is not callable")
        loaded.append((step, adapt(step, function)))
    return loaded


def _python_step(stream: Iterator[Flow], ref: str, step: StepFunction, counters: Counters) -> Iterator[Flow]:
    for flow in stream:
        if not flow.batch.num_rows:  # an empty batch skips the steps (and is not written)
            yield flow
            continue
        batch = _run_step(ref, step, flow.batch, flow.positions, unit=flow.unit, source_uri=flow.origin)
        counters.steps[ref] = counters.steps.get(ref, 0) + batch.num_rows
        yield Flow(batch, flow.positions, flow.origin, flow.unit)


class CommandStage:
    """A command step in the slice: the rows that reach it are written to its input file, the
    program runs once (in this slice: same cgroup, namespaces and grants as the Python steps),
    and the file it wrote is streamed back in batches as the step's output.

    Its files are in a folder of its own in the slice's work dir, removed when the step is
    done (or failed). The program reads the input file as its stdin unless the command names
    ``{input}``, and its stdout is the output file unless it names ``{output}`` (then stdout
    goes to the slice's log); its stderr goes to the slice's log, tagged with the step.
    """

    #: stderr lines kept for the failure message (the rest is in the slice's log)
    STDERR_TAIL = 20
    LEFTOVER_GRACE = 5.0  # seconds a process the program left may hold its pipes once it exited

    def __init__(self, spec: CommandSpec, driver: Storage, *, folder: Path, cwd: Path) -> None:
        self.command = spec.command
        self.shell = spec.shell
        self.format = spec.format
        self.driver = driver
        self.folder = folder
        self.cwd = cwd
        self.ref = step_name(spec.command, spec.shell)
        self.output_schema: pa.Schema | None = None  # of the last batch read from its output
        suffix = driver.extensions[0] if driver.extensions else f".{spec.format}"
        self.input = folder / f"input{suffix}"
        self.output = folder / f"output{suffix}"

    def stream(self, upstream: Iterator[Flow], counters: Counters, progress: Callable[[], None]) -> Iterator[Flow]:
        shutil.rmtree(self.folder, ignore_errors=True)  # nothing stale is read as this run's output
        self.folder.mkdir(mode=0o700)
        try:
            self._write_input(upstream, progress)
            with step_context(self.ref):
                self._execute()
            yield from self._read_output(counters)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)  # the rows are in the sinks, not left here

    def _write_input(self, upstream: Iterator[Flow], progress: Callable[[], None]) -> None:
        writer: DatasetWriter | None = None
        held = HeldRows()  # (before the file opens, until its columns have types: as a sink does)
        try:
            for flow in upstream:
                batch = flow.batch
                if not batch.num_rows:  # empty batches carry a schema from before the steps: not written
                    pass
                elif writer is not None:
                    writer = self._write(writer, batch)
                elif held.add(batch):
                    for each in held.release():
                        writer = self._write(writer, each)
                progress()
            for each in held.release():
                writer = self._write(writer, each)
            if writer is None:
                self.input.touch()  # no rows reached the step: an empty file
            else:
                self._guarded(writer.commit)
        except BaseException:
            if writer is not None:
                with contextlib.suppress(Exception):  # the original error is the one to report
                    writer.abort()
            raise

    def _write(self, writer: DatasetWriter | None, batch: pa.RecordBatch) -> DatasetWriter:
        if writer is None and self.format == "csv":
            writer = self._guarded(lambda: PlainCsvWriter(self.input, batch.schema))
        elif writer is None:
            writer = self._guarded(lambda: self.driver.writer(self.input, batch.schema))
        expected = getattr(writer, "schema", batch.schema)
        self._guarded(lambda: writer.write(batch if batch.schema == expected else cast_losing_nothing(batch, expected)))
        return writer

    def _guarded(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except Exception as exc:
            raise SliceError(
                f"step {self.ref}: cannot write its input as {self.format}: {type(exc).__name__}: {exc}"
            ) from exc

    def _execute(self) -> None:
        names = placeholders(self.command)
        argv = command_argv(self.command, self.shell, input_path=str(self.input), output_path=str(self.output))
        what = f"step {self.ref} ({self.command!r})"
        with contextlib.ExitStack() as files:
            stdin = files.enter_context(open(self.input, "rb")) if "input" not in names else subprocess.DEVNULL
            stdout = files.enter_context(open(self.output, "wb")) if "output" not in names else subprocess.PIPE
            try:
                # its own process group: what it leaves running goes with it (see below)
                process = subprocess.Popen(
                    argv,
                    stdin=stdin,
                    stdout=stdout,
                    stderr=subprocess.PIPE,
                    cwd=self.cwd,
                    close_fds=True,
                    process_group=0,
                )
            except FileNotFoundError:
                path = os.environ.get("PATH", "")
                raise SliceError(f"{what}: program {argv[0]!r} not found (PATH={path})") from None
            except OSError as exc:
                raise SliceError(f"{what}: cannot start {argv[0]!r}: {exc.strerror}") from None
        tail: collections.deque[str] = collections.deque(maxlen=self.STDERR_TAIL)
        pumps = [threading.Thread(target=self._pump, args=(process.stderr, sys.stderr, tail), daemon=True)]
        if process.stdout is not None:
            pumps.append(threading.Thread(target=self._pump, args=(process.stdout, sys.stdout, None), daemon=True))
        for pump in pumps:
            pump.start()
        try:
            status = process.wait()
        finally:
            if process.poll() is None:  # the slice is failing for another reason: the program goes too
                process.kill()
                process.wait()
            # What the program left running (`tool &`) ends with it, as a Slurm step's processes
            # do: it held the pipes open (the step waited for ever) and could still write the
            # output being read. One that left the group (setsid) and holds a pipe fails the step.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            deadline = time.monotonic() + self.LEFTOVER_GRACE
            for pump in pumps:
                pump.join(max(0.0, deadline - time.monotonic()))
        if any(pump.is_alive() for pump in pumps):
            raise SliceError(
                f"{what} ended, but a process it started in a session of its own still holds its "
                f"output or stderr open after {self.LEFTOVER_GRACE:g} s (a step's processes must end with it)"
            )
        if status != 0:
            if status < 0:
                ended = f"was killed by signal {status_signal_name(-status)}"
            else:
                ended = f"exited with status {status}"
            last = next((line for line in reversed(tail) if line.strip()), "")
            detail = f" (stderr: {printable(last.strip(), 300)})" if last else ""
            # a program killed by SIGKILL (the cgroup's OOM killer, most often): the slice ends
            # 137 as if it had been, so its executor can tell an OOM kill (OOMKILLED)
            raise SliceError(f"{what} {ended}{detail}", 128 + signal.SIGKILL if status == -signal.SIGKILL else 1)
        try:
            found = os.lstat(self.output)
        except FileNotFoundError:
            raise SliceError(
                f"{what} exited with status 0 but wrote no output file {{output}} ({self.output})"
            ) from None
        if not stat.S_ISREG(found.st_mode):  # (a FIFO or a link to /dev/zero read as "no rows")
            raise SliceError(f"{what}: its output {{output}} is not a regular file ({self.output})")

    def _pump(self, pipe: IO[bytes], into: TextIO, tail: collections.deque[str] | None) -> None:
        """Copy the program's lines into the slice's log, tagged with this step (bounded lines)."""
        with step_context(self.ref), pipe:
            for raw in iter(lambda: pipe.readline(MAX_LOG_LINE), b""):
                line = raw.decode("utf-8", errors="replace")
                if tail is not None:
                    tail.append(line.rstrip("\n"))
                into.write(line if line.endswith("\n") else line + "\n")
            into.flush()

    def _read_output(self, counters: Counters) -> Iterator[Flow]:
        origin = f"the output of {self.ref}"
        unit = self.driver.position_unit
        if self.output.stat().st_size == 0:  # nothing written: no rows (a CSV reader wants a header)
            self.output_schema = pa.schema([])
            return
        reader = self.driver.read(self.output)
        while True:
            try:
                read = next(reader)
            except StopIteration:
                break
            except Exception as exc:
                raise SliceError(
                    f"step {self.ref}: cannot read its output as {self.format}: {type(exc).__name__}: {exc}"
                ) from exc
            if read.malformed:
                bad = read.malformed[0]
                raise SliceError(f"step {self.ref}: its output {unit} {bad.position} is malformed: {bad.reason}")
            self.output_schema = read.batch.schema
            counters.steps[self.ref] = counters.steps.get(self.ref, 0) + read.batch.num_rows
            yield Flow(read.batch, read.positions, origin, unit)
        if self.output_schema is None and self.format == "csv":  # a header and no rows: its columns
            with open(self.output, encoding="utf-8", errors="replace", newline="") as fh:
                names = next(csv.reader([fh.readline(16 << 20)]), [])  # as long as a CSV source header may be
            self.output_schema = pa.schema([pa.field(name, pa.string()) for name in names])


class PlainCsvWriter(DatasetWriter):
    """CSV for Unix tools: a header line, then a line per row, a value quoted only when it holds
    a comma, a double quote or a line break (pyarrow's writer quotes every text value, which
    ``awk -F,`` or ``cut -d,`` would see); a null is an empty value. Written in place: the file
    is the step's own."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema = schema
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by commit or abort
        self._fh.write(_csv_lines([pa.array([name], pa.string()) for name in schema.names]))

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._fh.write(_csv_lines(batch.columns))

    def commit(self) -> None:
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()


def _csv_lines(columns: list[pa.Array]) -> bytes:
    """The rows of ``columns`` as CSV lines, each ending with a line break (vectorized)."""
    if not columns:
        return b""
    texts = []
    for column in columns:
        text = pc.fill_null(pc.cast(column, pa.string()), "")
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
        texts.append(pc.if_else(pc.match_substring_regex(text, '[,"\r\n]'), quoted, text))
    lines = pc.binary_join_element_wise(*texts, ",")
    whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(lines)], pa.int32()), lines), "\n")
    return (str(whole[0].as_py()) + "\n").encode("utf-8")


def status_signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _run_step(
    ref: str, step: StepFunction, batch: pa.RecordBatch, positions: pa.Array, *, unit: str, source_uri: str
) -> pa.RecordBatch:
    try:
        with step_context(ref):
            return step(batch)
    except Exception as exc:
        first = positions[0].as_py() if len(positions) else "?"
        last = positions[-1].as_py() if len(positions) else "?"
        raise SliceError(
            f"step {ref} raised {type(exc).__name__}: {exc} (batch of {source_uri} {unit}s {first}-{last})"
        ) from exc


def _dlq_rows(
    invalid: pa.RecordBatch, reasons: pa.Array, positions: pa.Array, source_uri: str, schema: pa.Schema | None
) -> pa.RecordBatch:
    assert schema is not None
    n = invalid.num_rows
    columns = {}
    for index, name in _dead_letter_names(invalid.schema.names).items():
        if name in schema.names:
            columns[name] = _as_text(invalid.column(index))
    columns["_runink_reason"] = reasons
    columns["_runink_source"] = pa.array([source_uri] * n, pa.string())
    columns["_runink_position"] = positions
    columns["_runink_text"] = pa.nulls(n, pa.string())
    return _conform(columns, n, schema)


def _as_text(column: pa.Array) -> pa.Array:
    """A source column as the text a dead-letter record keeps: a nested one (a struct, a list:
    no cast to text, it failed the scenario) as JSON."""
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        texts = [None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in column.to_pylist()]
        return pa.array(texts, pa.string())


def _dead_letter_names(columns: list[str]) -> dict[int, str]:
    """Each source column's name in a dead-letter record, by its index: its own, unless it is
    one of the record's (``source.NAME`` then, prefixed again while that is taken too: a source
    with a ``_runink_reason`` column made every dead-letter sink fail), and a name the source
    repeats only its first time."""
    taken = set(columns) | META_NAMES
    names: dict[int, str] = {}
    seen: set[str] = set()
    for index, column in enumerate(columns):
        if column in seen:
            continue
        seen.add(column)
        name = column
        if column in META_NAMES:
            name = f"source.{column}"
            while name in taken:
                name = f"source.{name}"
            taken.add(name)
        names[index] = name
    return names


def _malformed_rows(
    malformed: list[Malformed], source_uri: str, unit: str, schema: pa.Schema | None, *, masked: bool = False
) -> pa.RecordBatch:
    """Dead letters of records that could not be read. ``masked``: the source's contract masks a
    field, and a record that could not be split into fields may hold it anywhere: its text is
    not written, only how long it was (a malformed line's text held an unmasked e-mail)."""
    if schema is None:
        schema = pa.schema(META_COLUMNS)
    n = len(malformed)
    columns = {
        "_runink_reason": pa.array([f"malformed {unit}: {m.reason}" for m in malformed], pa.string()),
        "_runink_source": pa.array([source_uri] * n, pa.string()),
        "_runink_position": pa.array([m.position for m in malformed], pa.int64()),
        "_runink_text": pa.array(
            [f"**** (masked: {len(m.text):,} characters)" if masked else m.text for m in malformed], pa.string()
        ),
    }
    return _conform(columns, n, schema)


def _conform(columns: dict[str, pa.Array], n: int, schema: pa.Schema) -> pa.RecordBatch:
    arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class SinkWriterThread:
    """Writes batches to sinks on one background thread, so encoding and compressing output
    (which releases the GIL) overlaps with reading and validating the next batch.

    The queue holds at most ``QUEUE_BATCHES`` batches: memory stays bounded, and a slow sink
    slows the source down (backpressure). A sink error is raised on the next ``submit`` or
    on ``finish``.
    """

    QUEUE_BATCHES = 4

    def __init__(self, sinks: list[SinkSlot], counters: Counters, name: str = "runink-sink-writer") -> None:
        self.sinks = sinks
        self.counters = counters
        self.error: BaseException | None = None
        self.finishing = False  # (set by finish: what the sinks hold is written once the queue ends)
        self.queue: queue.Queue[tuple[str, pa.RecordBatch] | None] = queue.Queue(self.QUEUE_BATCHES)
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    _write(self.sinks, item[0], item[1], self.counters)
                except BaseException as exc:
                    self.error = exc
        if self.error is None and self.finishing:
            try:
                flush_held(self.sinks, self.counters)
            except BaseException as exc:
                self.error = exc

    def submit(self, when: str, batch: pa.RecordBatch) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((when, batch))

    def finish(self) -> None:
        """Wait until everything submitted is written; raise the first sink error."""
        self.finishing = True
        self.close()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


class SinkWriters:
    """A ``SinkWriterThread`` for each kind of rows the sinks take (valid, invalid): the
    dead letters are encoded on the second core while the valid rows' Parquet is, instead of
    after it on the same thread (one writer thread was a slice's slowest stage)."""

    def __init__(self, sinks: list[SinkSlot], counters: Counters) -> None:
        kinds = sorted({slot.when for slot in sinks})
        self.threads = {
            when: SinkWriterThread([s for s in sinks if s.when == when], counters, f"runink-sink-{when}")
            for when in kinds
        }

    def _raise_first_error(self) -> None:
        for thread in self.threads.values():
            if thread.error is not None:
                raise thread.error

    def submit(self, when: str, batch: pa.RecordBatch) -> None:
        """Write ``batch`` to the sinks of ``when`` (none: dropped); an earlier error of any
        sink is raised here."""
        self._raise_first_error()
        thread = self.threads.get(when)
        if thread is not None:
            thread.submit(when, batch)

    def finish(self) -> None:
        """Wait until everything submitted is written; raise the first sink error."""
        for thread in self.threads.values():
            thread.finishing = True
        self.close()
        self._raise_first_error()

    def close(self) -> None:
        for thread in self.threads.values():
            thread.close()


def _write(sinks: list[SinkSlot], when: str, batch: pa.RecordBatch, counters: Counters) -> None:
    for slot in sinks:
        if slot.when != when:
            continue
        if slot.writer is None and when == "valid":
            if slot.held.add(batch):
                for each in slot.held.release():
                    _write_one(slot, each, counters)
        else:
            _write_one(slot, batch, counters)


def _typed_later(first: pa.Schema | None, later: pa.Schema) -> pa.Schema:
    """``first`` (the first rows' schema; None: ``later`` is) with its untyped columns typed as
    ``later`` types them, as the sinks do (HeldRows): lineage names the type written."""
    if first is None:
        return later
    if first.names != later.names or not any(untyped(f.type) for f in first):
        return first
    return pa.schema(
        [
            f.with_type(n.type) if untyped(f.type) and not untyped(n.type) else f
            for f, n in zip(first, later, strict=True)
        ],
        metadata=first.metadata,
    )


def flush_held(sinks: list[SinkSlot], counters: Counters) -> None:
    """Write what sinks still hold (their rows ended with a column untyped throughout)."""
    for slot in sinks:
        for batch in slot.held.release():
            _write_one(slot, batch, counters)


def _write_one(slot: SinkSlot, batch: pa.RecordBatch, counters: Counters) -> None:
    try:
        if slot.writer is None:
            slot.writer = slot.driver.writer(slot.path, batch.schema, options=slot.options)
        expected = getattr(slot.writer, "schema", batch.schema)
        if batch.schema != expected:
            if slot.when == "invalid":  # DLQ rows: columns as first seen, missing ones null, extras dropped
                present = {name: batch.column(name) for name in batch.schema.names}
                batch = _conform(present, batch.num_rows, expected)
            try:
                batch = cast_losing_nothing(batch, expected)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as exc:
                why = _schema_change(batch, expected)
                raise SliceError(f"sink {slot.format}://{slot.path}: {why} ({exc})") from exc
        slot.writer.write(batch)
    except SliceError:
        raise
    except Exception as exc:
        raise SliceError(f"sink {slot.format}://{slot.path}: {type(exc).__name__}: {exc}") from exc
    slot.rows += batch.num_rows
    counters.sinks[str(slot.path)] = slot.rows


def _schema_change(batch: pa.RecordBatch, expected: pa.Schema) -> str:
    """How ``batch`` differs from the rows a sink was opened with, in words: the first column
    whose values do not convert (Arrow's own words named none)."""
    hint = (
        "a sink takes the types of its first rows: a source's contract types its columns, a step's "
        "new or changed columns have the types of the values it returns"
    )
    got = batch.schema
    if got.names != expected.names:
        missing = [n for n in expected.names if n not in got.names]
        new = [n for n in got.names if n not in expected.names]
        return f"these rows' columns differ from those written before (missing: {missing}, new: {new}; {hint})"
    for index, before in enumerate(expected):
        kind = got.field(index).type
        if kind == before.type:
            continue
        try:
            batch.column(index).cast(before.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError):
            return f"column {before.name!r} is {kind} in these rows, {before.type} in those written before ({hint})"
    return f"these rows do not convert to the types of those written before ({hint})"


def _open_empty(
    sinks: list[SinkSlot],
    contract: type[Contract] | None,
    steps: list[PythonStep | CommandStage | AnnotateStage],
    dlq_schema: pa.Schema | None,
    read: pa.Schema | None = None,
) -> None:
    """Sinks that got no rows still get a (empty) dataset with the right columns (``read``:
    the source's, when it has no contract)."""
    for slot in sinks:
        if slot.writer is not None:
            continue
        if slot.when == "invalid":
            schema = dlq_schema or pa.schema(
                [pa.field(f.name, pa.string()) for f in (contract.fields() if contract else [])] + META_COLUMNS
            )
        else:
            schema = _output_schema(contract, steps, read)
        try:
            slot.writer = slot.driver.writer(slot.path, schema, options=slot.options)
        except Exception as exc:
            raise SliceError(f"sink {slot.format}://{slot.path}: {type(exc).__name__}: {exc}") from exc


def _output_schema(
    contract: type[Contract] | None,
    steps: list[PythonStep | CommandStage | AnnotateStage],
    read: pa.Schema | None = None,
) -> pa.Schema:
    """The steps' output schema, found by running them on an empty batch of the input schema
    (the contract's, else the one ``read`` from the source: a run whose steps kept no row wrote
    outputs without columns; from the last command step's output on: a program's output
    columns are known once it ran)."""
    start = contract.schema() if contract else (read or pa.schema([]))
    batch = pa.RecordBatch.from_pylist([], schema=start)
    for step in steps:
        if isinstance(step, CommandStage):
            batch = pa.RecordBatch.from_pylist([], schema=step.output_schema or pa.schema([]))
            continue
        if isinstance(step, AnnotateStage):
            batch = step.annotate(batch)  # (no rows: its columns only, no model asked)
            continue
        ref, function = step
        try:
            with step_context(ref):
                batch = function(batch)
        except Exception:
            break
    return batch.schema


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m runink.core.dataplane.slice SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = SliceSpec.from_json(Path(args[0]).read_text())
    except (OSError, SpecError) as exc:
        print(f"runink slice: {args[0]}: {exc}", file=sys.stderr)
        return 2
    if spec.task_id:
        sys.stdout = TaggedStream(sys.stdout, spec.task_id)
        sys.stderr = TaggedStream(sys.stderr, spec.task_id)
    return run(spec)


if __name__ == "__main__":
    sys.exit(main())
