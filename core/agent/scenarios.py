"""Pipeline scenarios as tasks on a node: what a scenario's attempt needs beyond its slice.

A task that names a scenario (``TaskRecord.scenario``) is started by the agent through
``ScenarioAttempts.start_scenario``: the attempt gets a private task dir, its sinks are staged
beside their targets, its slice is built by core/slicetask.py and started by the node's own
executor. ``ScenarioAttempts`` wraps that executor, so the agent follows a scenario attempt
with the same ``wait`` / ``stop`` / ``destroy`` calls as a command's; the difference is when it
ends: a scenario attempt has ended once its outputs were published (or its staging removed),
not when its slice exited, so a downstream scenario placed after it always finds them.

While the slice runs, its report (rows, steps, drift, its verdict) is read into the run's
``ScenarioRun``; the node exports lineage (START with the first attempt, COMPLETE or FAIL with
the last), metrics and logs through the plugin hooks, as only runners and agents do.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runink.core import metrics
from runink.core.agent.gpus import GpuInventory, grant_gpus
from runink.core.agent.pipeline_file import read_submitted
from runink.core.agent.secrets import masked, masked_text, masks_of, with_secrets
from runink.core.config import RuninkConfig
from runink.core.control.records import TaskRecord
from runink.core.errors import ExecutorError, RuninkError
from runink.core.events import emit_lineage, export_log
from runink.core.interfaces.executor import (
    Executor,
    ExecutorCapabilities,
    Fingerprint,
    TaskHandle,
    TaskResult,
    TaskSpec,
    TaskState,
    TaskStats,
)
from runink.core.model import LineageEvent, LogEntry, MetricSample, Resources, ScenarioState
from runink.core.pipeline.compile import CompiledPipeline, CompiledScenario
from runink.core.pipeline.dsl import DslError
from runink.core.pipeline.model import slug
from runink.core.plugins import PluginManager
from runink.core.report import ReportError, ReportReader, printable
from runink.core.slicetask import report_path, slice_task
from runink.core.staging import Stage, as_written, publish, stage_sinks, unstage, whole_home

log = logging.getLogger(__name__)

READ_EVERY = 0.1  # seconds between reads of a running slice's report (progress)
#: record annotations an attempt's slice may report (each goes to the catalog); more are dropped
MAX_RECORD_ANNOTATIONS = 1_000_000
MAX_CHUNK_RECORDS = 10_000  # (a 1 MiB report line holds fewer)


@dataclass
class ScenarioRun:
    """What a scenario's attempts did, as its slices reported it."""

    name: str
    state: ScenarioState = ScenarioState.PENDING
    attempts: int = 0
    rows_in: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    rows_malformed: int = 0
    rows_out: int = 0
    #: how much of its source the running attempt has read (0 to 1), if its storage driver knows
    read: float | None = None
    steps: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    dead_letters: list[str] = field(default_factory=list)  # those of outputs its invalid rows go to
    drift: list[str] = field(default_factory=list)
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    log_dir: str | None = None
    contract_hash: str | None = None
    contract: str | None = None
    #: the source's schema as read ("input") and the valid output's ("output"): [[name, type], ...]
    schemas: dict[str, list[list[str]]] = field(default_factory=dict)
    #: the source's columns its contract marks pii or mask (never sent to a model unmasked)
    pii: list[str] = field(default_factory=list)
    #: what its @annotate steps did (a summary each; the records' annotations went as they came)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    #: its outputs went into place (its last attempt's publish held): a scenario cancelled
    #: while it published may have them too
    published: bool = False
    job_id: str | None = None  # the cluster's job and task running it, and the node of its last attempt
    task_id: str | None = None
    node: str | None = None

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "state": self.state.value,
            "attempts": self.attempts,
            "rows_in": self.rows_in,
            "rows_valid": self.rows_valid,
            "rows_invalid": self.rows_invalid,
            "rows_malformed": self.rows_malformed,
            "rows_out": self.rows_out,
            "steps": self.steps,
            "outputs": self.outputs,
            "dead_letters": self.dead_letters,
            "drift": self.drift,
            "error": self.error,
            "published": self.published,
            "elapsed": round(self.elapsed, 3),
            "log_dir": self.log_dir,
            "contract_hash": self.contract_hash,
        }


MAX_COUNT = 2**63 - 1  # a count a slice reports (rows, tokens, requests): what SQLite and a metric hold


def _count(value: Any) -> int | None:
    """A count the slice reported, if it is one: an int in [0, MAX_COUNT] (not a bool)."""
    return value if type(value) is int and 0 <= value <= MAX_COUNT else None


def _annotation_summary(value: Any) -> dict[str, Any] | None:
    """An @annotate step's summary as the slice reported it: its known fields, of their types,
    bounded (the slice writes the report: it must not be able to bloat the node or the catalog)."""
    if not isinstance(value, dict):
        return None
    fields = value.get("fields")
    counts = {key: _count(value.get(key)) or 0 for key in ("records", "failed")}
    found = value.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    cost = usage.get("cost")
    spent = {
        "tokens": _count(usage.get("total_tokens")),
        "cost": float(cost)
        if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < 1e15  # (not NaN)
        else None,
        "requests": _count(usage.get("requests")),
    }
    return {
        **_made_by(value),
        "driver": printable(str(value.get("driver") or ""), 200),
        **spent,
        "fields": [printable(str(f), 63) for f in fields[:32]] if isinstance(fields, list) else [],
        **counts,
    }


def _made_by(value: dict[str, Any]) -> dict[str, str]:
    """The step, model and prompt a slice said made some annotations: printable, bounded."""
    text = {key: printable(str(value.get(key) or ""), 200) for key in ("step", "model", "prompt_path")}
    digest = value.get("prompt_hash")
    return {**text, "prompt_hash": printable(digest, 64) if isinstance(digest, str) else ""}


def _record_annotations(value: dict[str, Any], passed: int = 0) -> dict[str, Any] | None:
    """A chunk of record annotations as the slice reported it (an ``annotated`` line), bounded:
    ``records`` of ``{record, failed, fields | error and raw}``, no more than the attempt may
    still pass on after ``passed``; None if it holds none."""
    entries = value.get("records")
    room = min(MAX_CHUNK_RECORDS, MAX_RECORD_ANNOTATIONS - passed)
    notes = []
    for entry in entries[: max(0, room)] if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("record"), str):
            continue
        answer = entry.get("fields")
        notes.append(
            {
                "record": printable(entry["record"], 100),
                "failed": entry.get("failed") is True,
                "fields": {printable(str(k), 63): printable(str(v), 16_000) for k, v in list(answer.items())[:32]}
                if isinstance(answer, dict)
                else {},
                "error": printable(str(entry.get("error") or ""), 2000),
                "raw": printable(str(entry.get("raw") or ""), 16_000),
            }
        )
    return {**_made_by(value), "records": notes} if notes else None


def _scenario_samples(
    pipeline_run: PipelineRun, item: CompiledScenario, run: ScenarioRun, state: TaskState
) -> list[MetricSample]:
    """What a scenario run did, as metrics (labels: herd, pipeline, scenario; never the run)."""
    where = {"herd": pipeline_run.herd, "pipeline": pipeline_run.compiled.pipeline.name, "scenario": item.name}
    found = [
        metrics.sample("runink_rows_in_total", run.rows_in, **where),
        metrics.sample("runink_rows_valid_total", run.rows_valid, **where),
        metrics.sample("runink_rows_invalid_total", run.rows_invalid, **where),  # (malformed ones too)
        metrics.sample("runink_rows_out_total", run.rows_out, **where),
        metrics.sample("runink_schema_drift_total", len(run.drift), **where),
        metrics.sample("runink_scenario_runs_total", 1, state=state.value, **where),
        metrics.sample("runink_scenario_seconds", run.elapsed, **where),
    ]
    # the steps the scenario has: a slice writes its own report, and 1,000 made-up step names a
    # run once filled the node's series cap (other herds' step metrics were dropped)
    known = {step.ref for step in item.scenario.steps}
    steps: dict[str, int] = {}
    for step, rows in run.steps.items():
        label = step if step in known else "other"
        steps[label] = steps.get(label, 0) + rows
    found += [metrics.sample("runink_step_rows_total", rows, step=step, **where) for step, rows in steps.items()]
    for summary in run.annotations:  # the @annotate steps' model use
        model = {**where, "model": summary.get("model") or ""}
        for name, key in (("runink_llm_tokens_total", "tokens"), ("runink_llm_cost_total", "cost")):
            if summary.get(key) is not None:
                found.append(metrics.sample(name, summary[key], **model))
        if summary.get("requests") is not None:
            found.append(metrics.sample("runink_llm_requests_total", summary["requests"], **model))
    return found


def _schema_fields(value: Any) -> list[list[str]] | None:
    """A schema a slice reported (``[[name, type], ...]``), if it is one: bounded, printable."""
    if not isinstance(value, list) or len(value) > 1000:
        return None
    if not all(isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in value):
        return None
    return [[printable(name, 200), printable(kind, 200)] for name, kind in value]


@dataclass
class PipelineRun:
    """One run of a compiled pipeline on this node: where its attempts work, what they may
    read and write (``roots``: the pipeline's folder and what [paths] allow), and each
    scenario's ``ScenarioRun``."""

    compiled: CompiledPipeline
    run_id: str
    herd: str
    work: Path  # <data_dir>/runs/<run id>
    roots: tuple[Path, ...]
    scenarios: dict[str, ScenarioRun]

    def may_use(self, real: Path) -> bool:
        """A real path the pipeline may read or write: in its folder or one [paths] allow lists."""
        return any(real == root or root in real.parents for root in self.roots)


class NodePipelines:
    """The pipeline runs a cluster node's agent runs scenarios of, found by each task's
    ScenarioRef: the .dsl it names is read as ``read_submitted`` allows (in the herd's roots,
    no link, a regular file of bounded size: pipeline_file.py) and compiled here (so it must be
    on this node: a shared path) the first time one of its run's tasks starts, with this node's
    config ([paths], [limits]); the run works in ``<work>/runs/<run id>``. The last ``keep``
    runs are kept. ``compile_text(text, path)`` compiles without reading the steps' code (the
    submitter's runink did; the slice imports it, unprivileged), and what it refuses is said
    without the file's text (the agent read it as root)."""

    def __init__(
        self, compile_text: Callable[[str, Path], CompiledPipeline], config: RuninkConfig, work: Path, keep: int = 64
    ):
        self.compile_text = compile_text
        self.config = config
        self.work = work
        self.keep = keep
        self._runs: dict[tuple[str, str, str], PipelineRun] = {}
        self._lock = threading.Lock()

    def __call__(self, task: TaskRecord) -> PipelineRun:
        ref = task.scenario
        if ref is None:
            raise RuninkError(f"task {task.id}: names no scenario")
        key = (ref.run, ref.pipeline, task.herd)
        with self._lock:
            if (found := self._runs.pop(key, None)) is not None:
                self._runs[key] = found  # (most recently used last)
                return found
        path = Path(ref.pipeline)
        text = read_submitted(ref.pipeline, ref.roots)
        shown = printable(ref.pipeline, 400)
        try:
            compiled = self.compile_text(text, path)
        except DslError as exc:  # (its detail may quote the file: not shown, the submitter has it)
            raise RuninkError(
                f"pipeline {shown} on this node: {exc.at.line}:{exc.at.column}: it does not compile here "
                "(`runink check` it where it was submitted from)"
            ) from None
        except RuninkError as exc:
            raise RuninkError(f"pipeline {shown} on this node: {exc}") from None
        except OSError as exc:
            raise RuninkError(f"pipeline {shown} on this node: {exc.strerror}") from None
        except (RecursionError, MemoryError, ValueError) as exc:  # (what a hostile file makes a parser raise)
            why = type(exc).__name__
            raise RuninkError(f"pipeline {shown} on this node: it does not compile here ({why})") from None
        allowed = (compiled.pipeline.base_dir, *(Path(p) for p in self.config.paths.allow))
        run = PipelineRun(
            compiled,
            ref.run,
            task.herd,
            work=self.work / "runs" / ref.run,
            roots=tuple(p.resolve() for p in allowed),
            scenarios={s.name: ScenarioRun(s.name) for s in compiled.scenarios},
        )
        with self._lock:
            run = self._runs.setdefault(key, run)
            while len(self._runs) > self.keep:
                del self._runs[next(iter(self._runs))]
        return run


@dataclass
class _Attempt:
    run: PipelineRun
    item: CompiledScenario
    task: TaskRecord
    staged: dict[Path, Stage]
    reader: ReportReader
    task_dir: Path
    report: dict[str, Any] = field(default_factory=dict)  # the slice's verdict: ok, error
    annotated: int = 0  # record annotations its slice reported (passed on, up to a bound)
    masks: tuple[bytes, ...] = ()  # its secrets' values, masked in what it says (masks_of)
    result: TaskResult | None = None  # once ended: outputs published or staging removed
    lock: threading.Lock = field(default_factory=threading.Lock)


def _result(attempt: _Attempt) -> TaskResult | None:
    return attempt.result  # (read anew: another thread may have set it)


class ScenarioAttempts(Executor):
    """The node's executor, with pipeline scenarios on top (see the module's docstring).
    ``pipelines`` finds the run a scenario task belongs to (RuninkError, saying why, if this
    node cannot have it: ``NodePipelines`` for a cluster's agent)."""

    def __init__(
        self,
        inner: Executor,
        config: RuninkConfig,
        manager: PluginManager,
        pipelines: Callable[[TaskRecord], PipelineRun],
        private: Sequence[Path] = (),
    ) -> None:
        self.inner = inner
        self.config = config
        self.manager = manager
        self.pipelines = pipelines
        # the node's own files (its work dir: every run's; its token and keys): no pipeline
        # folder, source or sink that holds one or is among them is granted (_not_private)
        self.private = tuple(p.resolve() for p in private)
        self.degrade = inner.degrade
        self.gpus = GpuInventory()  # the node's, set by its Agent: a slice is given its own
        self._attempts: dict[str, _Attempt] = {}
        self._lock = threading.Lock()

    # --- starting --------------------------------------------------------------------

    def start_scenario(
        self, task: TaskRecord, executor_id: str, secrets: Mapping[str, bytes] | None = None
    ) -> TaskHandle:
        """Prepare and start one attempt of the scenario ``task`` names, its slice given
        ``secrets`` (the values of those the task names). Raises RuninkError, saying why, for
        one that cannot start (nothing is left staged then)."""
        ref = task.scenario
        if ref is None:
            raise RuninkError(f"task {task.id}: names no scenario")
        run = self.pipelines(task)
        item = next((s for s in run.compiled.scenarios if s.name == ref.scenario), None)
        if item is None:
            raise RuninkError(f"pipeline {ref.pipeline}: no scenario {printable(ref.scenario, 200)!r}")
        scenario = run.scenarios[item.name]
        scenario.attempts = task.attempt
        scenario.read = None  # (an attempt reads its source from the start)
        scenario.job_id, scenario.task_id, scenario.node = task.job_id, task.id, task.node
        if scenario.started is None:
            scenario.started = time.time()
        scenario.state = ScenarioState.RUNNING
        scenario.outputs, scenario.published = [r.key for r in item.outputs], False
        scenario.dead_letters = [s.ref.key for s in item.sinks if s.when != "valid"]
        if task.attempt == 1:
            emit_lineage(self.manager, self._lineage("START", run, item))
        task_dir = run.work / slug(item.name) / f"attempt-{task.attempt}"
        task_dir.parent.mkdir(parents=True, exist_ok=True)
        # The task dir is private (0700): the slice's work dir inside it is the slice's to
        # change, and nothing it leaves there must be reachable by other users.
        task_dir.mkdir(mode=0o700)
        scenario.log_dir = str(task_dir)
        (task_dir / "work").mkdir()
        try:
            readable = self._readable(run, item)
            for sink in item.sinks:  # (a sink's folder in the node's work dir: its runs, their handles)
                if not sink.ref.remote:
                    self._not_private(sink.ref.path.parent.resolve(), f"the sink {sink.ref.path}'s folder")
            staged = stage_sinks(item, run.may_use)
        except OSError as exc:
            raise RuninkError(f"scenario {item.name!r}: cannot prepare its inputs and outputs: {exc}") from None
        try:
            spec = slice_task(
                item,
                self.config,
                herd=run.herd,
                task_id=executor_id,
                task_dir=task_dir,
                base_dir=run.compiled.pipeline.base_dir,
                readable=readable,
                staged=staged,
            )
            # The limits and timeout the scheduler counted and admission priced (the task's),
            # not the .dsl's @requires: the node reads the file from a path the submitter chose,
            # and a task booked at 0.1 core once ran with the 2 cores its file said. This node's
            # [limits] where it asked none.
            booked, defaults = task.resources, self.config.limits
            memory, pids = booked.memory or defaults.memory_bytes, booked.pids or defaults.pids
            limits = Resources(booked.cpu, memory, booked.gpu, pids)
            spec = dataclasses.replace(spec, limits=limits, timeout=task.timeout)
            if task.herd_quota is not None:  # under the herd's capped cgroup parent, as a command's slice
                spec = dataclasses.replace(spec, herd_limits=task.herd_quota.node_caps())
            spec = with_secrets(spec, run.herd, secrets or {}, task.secrets_env)
            spec = grant_gpus(spec, task.gpus, self.gpus)
            # made by the node, read through its own fd (see core/report.py)
            reader = ReportReader.create(report_path(task_dir))
        except (ReportError, RuninkError) as exc:
            unstage(staged)
            raise RuninkError(f"scenario {item.name!r}: {exc}") from None
        try:
            handle = self.inner.start(spec)
        except ExecutorError as exc:
            reader.close()
            unstage(staged)
            # a third-party driver's message may not say who refused
            executor_name = getattr(self.inner, "name", "") or type(self.inner).__name__
            raise RuninkError(f"scenario {item.name!r}: executor {executor_name!r} refused it: {exc}") from None
        with self._lock:
            self._attempts[executor_id] = _Attempt(
                run, item, task, staged, reader, task_dir, masks=masks_of(secrets or {})
            )
        return handle

    def _readable(self, run: PipelineRun, item: CompiledScenario) -> tuple[Path, ...]:
        """The pipeline's folder and the source, links resolved now and vetted again (a link
        planted since compiling must not grant the slice a file of someone else's)."""
        base = run.compiled.pipeline.base_dir.resolve()
        if whole_home(base):
            raise OSError(
                f"the pipeline's folder {base} is a home folder or /: a slice is granted the whole folder, "
                "put the pipeline in a folder of its own"
            )
        self._not_private(base, "the pipeline's folder")
        if item.source.remote:
            return (base,)  # read from the store over the network, no local file to grant
        try:
            source = item.source.path.resolve()
        except RuntimeError:  # (3.11's word for a loop of links)
            raise OSError(f"the source {item.source.path}: a loop of symbolic links") from None
        if item.source.path.exists() and not run.may_use(source):
            raise OSError(f"the source {item.source.path} leads to {source}, outside what the pipeline may read")
        try:
            mode = source.stat().st_mode
        except OSError:
            mode = stat.S_IFREG  # (missing or unreadable: the slice says so)
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # (a slice would wait on a FIFO for ever)
            raise OSError(f"the source {item.source.path} is not a regular file")
        self._not_private(source, "the source")
        # a missing source is not granted: the slice reports it, naming the file
        return tuple(p for p in (base, source) if p.exists())

    def _not_private(self, granted: Path, what: str) -> None:
        """Raise OSError if ``granted`` (resolved) is, holds or is inside one of the node's own
        files: read-only and id-mapped, a grant shows a slice every file of its owner's in it,
        whatever its mode (a review's slice read the cluster's CA, token and secrets keys so;
        the next one, other herds' runs in the work dir, through [paths] allow)."""
        for private in self.private:
            if private == granted or granted in private.parents or private in granted.parents:
                raise OSError(
                    f"{what} {granted} holds or is among this node's own files ({private}): a slice is granted "
                    "all of it, put the pipeline and its data in folders of their own"
                )

    # --- following and ending ------------------------------------------------------------

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        attempt = self._attempts.get(task_id)
        if attempt is None:
            return self.inner.wait(task_id, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if (ended_before := _result(attempt)) is not None:
                return ended_before
            step = READ_EVERY if deadline is None else max(0.0, min(READ_EVERY, deadline - time.monotonic()))
            ended = self.inner.wait(task_id, step)
            with attempt.lock:  # one thread reads the report and ends the attempt
                if (ended_before := _result(attempt)) is not None:
                    return ended_before  # (by another thread meanwhile)
                self._read_report(attempt, final=ended is not None)
                if ended is not None:
                    attempt.result = self._ended(attempt, ended)
                    return attempt.result
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _read_report(self, attempt: _Attempt, final: bool) -> None:
        """Apply the slice's new report lines to its ScenarioRun; only the known fields, of their
        types (the slice writes the file: it must not be able to break the node's accounting)."""
        run = attempt.run.scenarios[attempt.item.name]
        report = attempt.report
        for event in attempt.reader.events(final=final):
            if event.get("event") == "annotated":
                self._pass_annotations(attempt, event)
                continue
            for key in ("rows_in", "rows_valid", "rows_invalid", "rows_malformed", "rows_out"):
                if (count := _count(event.get(key))) is not None:
                    setattr(run, key, count)
            read = event.get("read")
            if isinstance(read, int | float) and not isinstance(read, bool) and 0 <= read <= 1:  # (not NaN)
                run.read = float(read)
            steps = event.get("steps")
            if isinstance(steps, dict) and all(_count(v) is not None for v in steps.values()):
                run.steps = {printable(str(k), 200): v for k, v in list(steps.items())[:1000]}
            drift = event.get("drift")
            if isinstance(drift, list):
                run.drift = [printable(str(d), 1000) for d in drift[:100]]
            if isinstance(event.get("contract_hash"), str):
                run.contract_hash = printable(event["contract_hash"], 200)
            if isinstance(event.get("contract"), str):
                run.contract = printable(event["contract"], 200)
            pii = event.get("pii")
            if isinstance(pii, list):
                run.pii = [printable(str(name), 200) for name in pii[:1000]]
            annotations = event.get("annotations")
            if isinstance(annotations, list):
                run.annotations = [a for a in (_annotation_summary(x) for x in annotations[:16]) if a is not None]
            schemas = event.get("schemas")
            if isinstance(schemas, dict):
                run.schemas = {
                    kind: fields
                    for kind in ("input", "output")
                    if (fields := _schema_fields(schemas.get(kind))) is not None
                }
            if isinstance(event.get("ok"), bool):
                report["ok"] = event["ok"]
            if isinstance(event.get("error"), str):
                report["error"] = printable(event["error"], 4000)

    def _pass_annotations(self, attempt: _Attempt, event: dict[str, Any]) -> None:
        """A chunk of record annotations the slice made, to the lineage sinks at once (an
        OTHER event of the scenario's run: the catalog keeps them), up to a bound a run."""
        chunk = _record_annotations(event, attempt.annotated)
        if chunk is None:
            return
        attempt.annotated += len(chunk["records"])
        if attempt.annotated >= MAX_RECORD_ANNOTATIONS:
            why = "scenario %s: %d record annotations; the catalog keeps these, the output all"
            log.warning(why, attempt.item.name, MAX_RECORD_ANNOTATIONS)
        facets = {"record_annotations": chunk}
        emit_lineage(self.manager, self._lineage("OTHER", attempt.run, attempt.item, facets))

    def _ended(self, attempt: _Attempt, ended: TaskResult) -> TaskResult:
        """The attempt's result once its slice exited: its verdict read, its outputs published
        (or its staging removed), what it did exported when it was the scenario's last attempt."""
        item, pipeline_run, task = attempt.item, attempt.run, attempt.task
        run = pipeline_run.scenarios[item.name]
        herd = pipeline_run.herd
        attempt.reader.close()
        for note in attempt.reader.notes():
            self._log("warning", f"scenario {item.name!r}: {note}", herd, item.name)
        state = ended.state
        if state is TaskState.SUCCEEDED and not attempt.report.get("ok", False):
            state = TaskState.FAILED
        error: str | None = None
        if state is TaskState.SUCCEEDED and (too_many := self._too_many_invalid(item, run)) is not None:
            state, error = TaskState.FAILED, too_many
        try:
            if state is not TaskState.SUCCEEDED:
                error = error or attempt.report.get("error") or self._describe_exit(ended, item)
                error = masked_text(as_written(error, attempt.staged), attempt.masks)
                self._log_failure(attempt, error)
            else:
                try:
                    publish(attempt.staged, (task.id, task.attempt), Path(self.config.data_dir))
                    run.published = True
                except OSError as exc:
                    state, error = TaskState.FAILED, f"scenario {item.name!r}: cannot publish its outputs: {exc}"
        finally:
            unstage(attempt.staged)
        run.error = error
        if state is not TaskState.SUCCEEDED:  # (not published: --json listed them all the same)
            run.outputs, run.dead_letters = [], []
        last = state in (TaskState.SUCCEEDED, TaskState.CANCELLED) or task.attempt > task.retries
        if last:
            run.finished = time.time()
            try:
                self._export_end(pipeline_run, item, run, state)
            except Exception:  # (what it did is told, not decided: the attempt's result stands)
                log.exception("scenario %r: exporting its end failed", item.name)
        else:
            delay = task.backoff * 2 ** (task.attempt - 1)
            self._log(
                "warning",
                f"scenario {item.name!r} attempt {task.attempt} failed ({error}); retrying in {delay:g}s",
                herd,
                item.name,
            )
        return TaskResult(
            task_id=ended.task_id,
            state=state,
            exit_code=ended.exit_code,
            signal=ended.signal,
            # what the cluster's status shows of it: the failure, or what the slice did
            message=error or f"rows in {run.rows_in}, invalid {run.rows_invalid}, out {run.rows_out}",
            started_at=ended.started_at,
            finished_at=ended.finished_at,
            cpu_seconds=ended.cpu_seconds,
            peak_memory_bytes=ended.peak_memory_bytes,
        )

    def _too_many_invalid(self, item: CompiledScenario, run: ScenarioRun) -> str | None:
        """Why the scenario fails for its invalid rows ([run] fail_on_invalid), or None."""
        limit = self.config.run.fail_on_invalid
        if limit is None or not run.rows_in:
            return None
        share = 100 * run.rows_invalid / run.rows_in
        if share <= limit:
            return None
        return (
            f"scenario {item.name!r}: {run.rows_invalid:,} of {run.rows_in:,} rows invalid ({share:.1f}%), "
            f"over --fail-on-invalid {limit:g}%: its outputs were not published"
        )

    def _describe_exit(self, ended: TaskResult, item: CompiledScenario) -> str:
        if ended.state is TaskState.DEADLINE_EXCEEDED:
            return f"scenario {item.name!r}: timed out after {item.scenario.requires.timeout:g}s"
        if ended.state is TaskState.SUCCEEDED:  # (it said "slice ended succeeded: ", a review)
            return (
                f"scenario {item.name!r}: its slice exited 0 before it reported its end "
                "(a step that ends the process, as sys.exit() or os._exit() do?)"
            )
        return f"scenario {item.name!r}: slice ended {ended.state.value.lower()}: {ended.message}"

    def _log_failure(self, attempt: _Attempt, error: str) -> None:
        """One line for the failure; the slice's traceback stays in its log (shown at debug level)."""
        name, herd = attempt.item.name, attempt.run.herd
        log_path = attempt.task_dir / "stderr.log"
        self._log("error", f"scenario {name!r} failed: {error} (log: {log_path})", herd, name)
        try:
            with open(log_path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4000))
                tail = masked(fh.read(4000), attempt.masks).decode(errors="replace")
        except OSError:
            tail = ""
        if tail.strip():
            shown = "\n".join(printable(line, 1000) for line in tail.splitlines())  # the slice wrote it
            self._log("debug", f"scenario {name!r}: the end of {log_path}:\n{shown}", herd, name)

    def _lineage(
        self,
        kind: Literal["START", "COMPLETE", "FAIL", "OTHER"],
        run: PipelineRun,
        item: CompiledScenario,
        facets: dict[str, Any] | None = None,
    ) -> LineageEvent:
        inputs = (item.source.canonical(),)
        outputs = tuple(ref.canonical() for ref in item.outputs)
        job = f"{run.run_id}/{slug(item.name)}"
        scenario = run.scenarios[item.name]
        where = {
            "pipeline": run.compiled.pipeline.name,
            "pipeline_run": run.run_id,
            "job_id": scenario.job_id,
            "task_id": scenario.task_id,
            "node": scenario.node,
            "attempt": scenario.attempts,
            "invalid_outputs": [s.ref.canonical() for s in item.sinks if s.when != "valid"],
        }
        return LineageEvent(kind, job, item.name, run.herd, inputs, outputs, facets={**where, **(facets or {})})

    def _export_end(
        self, pipeline_run: PipelineRun, item: CompiledScenario, run: ScenarioRun, state: TaskState
    ) -> None:
        facets = {
            "rows_in": run.rows_in,
            "rows_valid": run.rows_valid,
            "rows_invalid": run.rows_invalid,
            "rows_out": run.rows_out,
            "attempts": run.attempts,
            "contract_hash": run.contract_hash,
            "contract": run.contract,
            "schemas": run.schemas,
            "annotations": run.annotations,
            "pii_columns": run.pii,
            "drift": run.drift,
            "error": run.error,
            "state": state.value,
            "started": run.started,
            "finished": run.finished or time.time(),
        }
        kind: Literal["COMPLETE", "FAIL"] = "COMPLETE" if state is TaskState.SUCCEEDED else "FAIL"
        emit_lineage(self.manager, self._lineage(kind, pipeline_run, item, facets))
        metrics.report(self.manager, _scenario_samples(pipeline_run, item, run, state))
        for message in run.drift:
            self._log("warning", f"schema drift in scenario {item.name!r}: {message}", pipeline_run.herd, item.name)

    def _log(self, level: str, message: str, herd: str, scenario: str) -> None:
        export_log(self.manager, LogEntry(message, level, "runner", {"herd": herd, "scenario": scenario}))  # type: ignore[arg-type]

    # --- the rest is the node's executor's --------------------------------------------------

    def task_dir(self, task_id: str) -> Path | None:
        """A scenario attempt's task dir (None for a command's: the agent chose that one)."""
        attempt = self._attempts.get(task_id)
        return attempt.task_dir if attempt is not None else None

    def stop(self, task_id: str, grace: float = 10.0) -> None:
        self.inner.stop(task_id, grace)

    def destroy(self, task_id: str) -> None:
        with self._lock:
            attempt = self._attempts.pop(task_id, None)
        if attempt is not None and attempt.result is None:
            # forgotten before it was followed to its end: nothing is published
            attempt.reader.close()
            unstage(attempt.staged)
        self.inner.destroy(task_id)

    def recover(self, handle: TaskHandle) -> None:
        # (a scenario attempt's staging lives in this process: after a restart it is retried)
        self.inner.recover(handle)

    def start(self, spec: TaskSpec) -> TaskHandle:
        return self.inner.start(spec)

    def capabilities(self) -> ExecutorCapabilities:
        return self.inner.capabilities()

    def fingerprint(self) -> Fingerprint:
        return self.inner.fingerprint()

    def inspect(self, task_id: str) -> TaskState:
        return self.inner.inspect(task_id)

    def stats(self, task_id: str) -> TaskStats:
        return self.inner.stats(task_id)

    def handle(self, task_id: str) -> TaskHandle:
        return self.inner.handle(task_id)

    def prepare(self, starts: int | None = None) -> None:
        self.inner.prepare(starts)

    def close(self) -> None:
        self.inner.close()
