"""The local runner: runs a compiled pipeline's scenarios as slices through an executor driver.

Used by ``runink run`` (the embedded default: no server, one local node). Scenarios run in
dependency order, independent ones in parallel within the node's cpus (each scenario counts
its ``@requires(cpu=...)``). A scenario whose upstream failed is SKIPPED. Retries follow
``@retries(n, backoff)`` with exponential backoff. Each slice reports progress through a
file in its task dir; lineage events, metrics and logs go to the plugin hooks. The cluster
replaces this runner, not the executor or the data plane.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runink.core.config import RuninkConfig
from runink.core.errors import ExecutorError
from runink.core.events import emit_lineage, export_log, export_metrics
from runink.core.interfaces.executor import Executor, TaskState
from runink.core.model import LineageEvent, LogEntry, MetricSample, ScenarioState
from runink.core.pipeline.compile import CompiledPipeline, CompiledScenario
from runink.core.plugins import PluginManager
from runink.core.report import ReportError, ReportReader, printable
from runink.core.slicetask import report_path, slice_task
from runink.core.staging import Stage, publish, stage_sinks, unstage, whole_home


@dataclass
class ScenarioRun:
    name: str
    state: ScenarioState = ScenarioState.PENDING
    attempts: int = 0
    rows_in: int = 0
    rows_valid: int = 0
    rows_invalid: int = 0
    rows_malformed: int = 0
    rows_out: int = 0
    steps: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    log_dir: str | None = None
    contract_hash: str | None = None

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
            "drift": self.drift,
            "error": self.error,
            "elapsed": round(self.elapsed, 3),
            "log_dir": self.log_dir,
            "contract_hash": self.contract_hash,
        }


@dataclass
class RunResult:
    run_id: str
    pipeline: str
    herd: str
    scenarios: list[ScenarioRun]
    started: float
    finished: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.state is ScenarioState.SUCCEEDED for s in self.scenarios)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "herd": self.herd,
            "ok": self.ok,
            "elapsed": round(self.finished - self.started, 3),
            "scenarios": [s.to_json() for s in self.scenarios],
        }


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "scenario"


class LocalRunner:
    def __init__(
        self,
        config: RuninkConfig,
        manager: PluginManager,
        executor: Executor,
        *,
        on_update: Callable[[RunResult], None] | None = None,
        max_parallel: int | None = None,
    ) -> None:
        self.config = config
        self.manager = manager
        self.executor = executor
        self.on_update = on_update or (lambda _result: None)
        self.cpus = float(os.cpu_count() or 1)
        self.max_parallel = max_parallel or config.run.max_parallel or int(self.cpus)
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._running_tasks: set[str] = set()
        self._base_dir = Path.cwd()
        self._roots: tuple[Path, ...] = ()  # what the pipeline may read and write (see _may_use)
        self._pipeline_name = ""

    def cancel(self) -> None:
        """Stop every running slice (SIGTERM, 5 s grace) and start no more."""
        self._cancel.set()
        for task_id in list(self._running_tasks):
            with contextlib.suppress(ExecutorError):
                self.executor.stop(task_id, grace=5)

    def run(self, compiled: CompiledPipeline, *, also_writable: tuple[Path, ...] = ()) -> RunResult:
        """Run the pipeline; ``also_writable``: folders its sinks may be in besides the pipeline's
        own and those [paths] allow (``runink test`` redirects outputs to a temporary one)."""
        pipeline = compiled.pipeline
        self._base_dir = pipeline.base_dir
        allowed = (self._base_dir, *(Path(p) for p in self.config.paths.allow), *also_writable)
        self._roots = tuple(p.resolve() for p in allowed)  # once a run, not per sink and attempt
        self._pipeline_name = pipeline.name
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        work = Path(self.config.data_dir).resolve() / "runs" / run_id
        result = RunResult(
            run_id, pipeline.name, pipeline.herd, [ScenarioRun(s.name) for s in compiled.scenarios], time.time()
        )
        runs = {r.name: r for r in result.scenarios}
        threads: dict[str, threading.Thread] = {}
        used_cpu = 0.0
        while True:
            with self._lock:
                for item in compiled.scenarios:
                    run = runs[item.name]
                    if run.state is not ScenarioState.PENDING:
                        continue
                    failed_up = [
                        u for u in item.upstream if runs[u].state.final and runs[u].state is not ScenarioState.SUCCEEDED
                    ]
                    if failed_up or self._cancel.is_set():
                        run.state = ScenarioState.SKIPPED if failed_up else ScenarioState.CANCELLED
                        run.error = f"upstream scenario {failed_up[0]!r} did not succeed" if failed_up else "cancelled"
                        continue
                    if any(runs[u].state is not ScenarioState.SUCCEEDED for u in item.upstream):
                        continue
                    cpu = min(item.scenario.requires.cpu, self.cpus)
                    running = sum(1 for r in runs.values() if r.state is ScenarioState.RUNNING)
                    if running and (running >= self.max_parallel or used_cpu + cpu > self.cpus):
                        continue
                    run.state = ScenarioState.RUNNING
                    run.started = time.time()
                    used_cpu += cpu
                    thread = threading.Thread(
                        target=self._run_scenario_safely,
                        args=(item, run, work, pipeline.herd),
                        name=f"runink-scenario-{_slug(item.name)}",
                        daemon=True,
                    )
                    threads[item.name] = thread
                    thread.start()
            self.on_update(result)
            if all(r.state.final for r in runs.values()):
                break
            for name, thread in list(threads.items()):
                if not thread.is_alive():
                    thread.join()
                    del threads[name]
                    used_cpu -= min(compiled.get(name).scenario.requires.cpu, self.cpus)
            time.sleep(0.05)
        result.finished = time.time()
        self.on_update(result)
        return result

    # --- one scenario ---------------------------------------------------------------

    def _run_scenario_safely(self, item: CompiledScenario, run: ScenarioRun, work: Path, herd: str) -> None:
        """A scenario always ends in a final state, even if running it raised (else the run would hang)."""
        try:
            self._run_scenario(item, run, work, herd)
        except Exception as exc:
            run.error = f"scenario {item.name!r}: runner error: {type(exc).__name__}: {exc}"
            run.finished = time.time()
            run.state = ScenarioState.FAILED
            self._log("error", run.error, herd, item.name)

    def _run_scenario(self, item: CompiledScenario, run: ScenarioRun, work: Path, herd: str) -> None:
        scenario = item.scenario
        inputs = (item.source.canonical(),)
        outputs = tuple(ref.canonical() for ref in item.outputs)
        run.outputs = [ref.key for ref in item.outputs]
        emit_lineage(
            self.manager, LineageEvent("START", f"{work.name}/{_slug(item.name)}", item.name, herd, inputs, outputs)
        )
        attempt = 0
        while True:
            attempt += 1
            run.attempts = attempt
            state, _report = self._attempt(item, run, work, herd, attempt)
            if (
                state in (ScenarioState.SUCCEEDED, ScenarioState.CANCELLED)
                or attempt > scenario.retries
                or self._cancel.is_set()
            ):
                break
            delay = scenario.backoff * 2 ** (attempt - 1)
            self._log(
                "warning",
                f"scenario {item.name!r} attempt {attempt} failed ({run.error}); retrying in {delay:g}s",
                herd,
                item.name,
            )
            if self._cancel.wait(delay):
                state = ScenarioState.CANCELLED
                break
        run.finished = time.time()
        run.state = state
        facets = {
            "rows_in": run.rows_in,
            "rows_valid": run.rows_valid,
            "rows_invalid": run.rows_invalid,
            "rows_out": run.rows_out,
            "attempts": attempt,
            "contract_hash": run.contract_hash,
            "drift": run.drift,
            "error": run.error,
        }
        emit_lineage(
            self.manager,
            LineageEvent(
                "COMPLETE" if state is ScenarioState.SUCCEEDED else "FAIL",
                f"{work.name}/{_slug(item.name)}",
                item.name,
                herd,
                inputs,
                outputs,
                facets=facets,
            ),
        )
        labels = {"pipeline": self._pipeline_name, "run_id": work.name, "scenario": item.name, "herd": herd}
        export_metrics(
            self.manager,
            [
                MetricSample("runink_rows_in_total", run.rows_in, "counter", labels),
                MetricSample("runink_rows_invalid_total", run.rows_invalid, "counter", labels),
                MetricSample("runink_rows_out_total", run.rows_out, "counter", labels),
                MetricSample("runink_scenario_seconds", run.elapsed, "gauge", labels),
            ],
        )
        for message in run.drift:
            self._log("warning", f"schema drift in scenario {item.name!r}: {message}", herd, item.name)

    def _attempt(
        self, item: CompiledScenario, run: ScenarioRun, work: Path, herd: str, attempt: int
    ) -> tuple[ScenarioState, dict[str, Any]]:
        task_id = f"{work.name}-{_slug(item.name)}-{attempt}"
        task_dir = work / _slug(item.name) / f"attempt-{attempt}"
        task_dir.parent.mkdir(parents=True, exist_ok=True)
        # The task dir is private (0700): the slice's work dir inside it is the slice's to
        # change, and nothing it leaves there must be reachable by other users.
        task_dir.mkdir(mode=0o700)
        run.log_dir = str(task_dir)
        # The slice's own folder (spec, report, HOME) and one staging folder beside each sink:
        # all it may write (an isolating executor shows them to it as its own).
        work_dir = task_dir / "work"
        work_dir.mkdir()
        try:
            readable = self._readable(item)
            staged = stage_sinks(item, self._may_use)
        except OSError as exc:
            run.error = f"scenario {item.name!r}: cannot prepare its inputs and outputs: {exc}"
            return ScenarioState.FAILED, {}
        try:
            return self._run_slice(
                item, run, herd=herd, task_id=task_id, task_dir=task_dir, readable=readable, staged=staged
            )
        finally:
            unstage(staged)

    def _may_use(self, real: Path) -> bool:
        """A real path the pipeline may read or write: in its folder or one [paths] allow lists."""
        return any(real == root or root in real.parents for root in self._roots)

    def _readable(self, item: CompiledScenario) -> tuple[Path, ...]:
        """The pipeline's folder and the source, links resolved now and vetted again (a link
        planted since compiling must not grant the slice a file of someone else's)."""
        base = self._base_dir.resolve()
        if whole_home(base):
            raise OSError(
                f"the pipeline's folder {base} is a home folder or /: a slice is granted the whole folder, "
                "put the pipeline in a folder of its own"
            )
        if item.source.remote:
            return (base,)  # read from the store over the network, no local file to grant
        source = item.source.path.resolve()
        if item.source.path.exists() and not self._may_use(source):
            raise OSError(f"the source {item.source.path} leads to {source}, outside what the pipeline may read")
        # a missing source is not granted: the slice reports it, naming the file
        return tuple(p for p in (base, source) if p.exists())

    def _run_slice(
        self,
        item: CompiledScenario,
        run: ScenarioRun,
        *,
        herd: str,
        task_id: str,
        task_dir: Path,
        readable: tuple[Path, ...],
        staged: dict[Path, Stage],
    ) -> tuple[ScenarioState, dict[str, Any]]:
        task = slice_task(
            item,
            self.config,
            herd=herd,
            task_id=task_id,
            task_dir=task_dir,
            base_dir=self._base_dir,
            readable=readable,
            staged=staged,
        )
        try:
            # made by the runner, read through its own fd (see core/report.py)
            reader = ReportReader.create(report_path(task_dir))
        except ReportError as exc:
            run.error = f"scenario {item.name!r}: {exc}"
            return ScenarioState.FAILED, {}
        try:
            self.executor.start(task)
        except ExecutorError as exc:
            reader.close()
            # a third-party driver's message may not say who refused
            executor_name = getattr(self.executor, "name", "") or type(self.executor).__name__
            run.error = f"scenario {item.name!r}: executor {executor_name!r} refused it: {exc}"
            return ScenarioState.FAILED, {}
        self._running_tasks.add(task.id)
        report: dict[str, Any] = {}
        try:
            while True:
                ended = self.executor.wait(task.id, 0.1)
                self._read_report(reader, run, report, final=ended is not None)
                if ended is not None:
                    break
        finally:
            self._running_tasks.discard(task.id)
            reader.close()
        for note in reader.notes():
            self._log("warning", f"scenario {item.name!r}: {note}", herd, item.name)
        state = ScenarioState(ended.state.value)  # (a task's final states are scenario states)
        if state is ScenarioState.SUCCEEDED and not report.get("ok", False):
            state = ScenarioState.FAILED
        if state is not ScenarioState.SUCCEEDED:
            run.error = report.get("error") or self._describe_exit(ended.state, ended.message, item)
            # One line for the failure; the slice's traceback stays in its log (shown at debug level).
            log_path = task_dir / "stderr.log"
            self._log("error", f"scenario {item.name!r} failed: {run.error} (log: {log_path})", herd, item.name)
            try:
                with open(log_path, "rb") as fh:
                    fh.seek(max(0, os.fstat(fh.fileno()).st_size - 4000))
                    tail = fh.read(4000).decode(errors="replace")
            except OSError:
                tail = ""
            if tail.strip():
                shown = "\n".join(printable(line, 1000) for line in tail.splitlines())  # the slice wrote it
                self._log("debug", f"scenario {item.name!r}: the end of {log_path}:\n{shown}", herd, item.name)
        else:
            try:
                publish(staged)
                run.error = None
            except OSError as exc:
                state, run.error = ScenarioState.FAILED, f"scenario {item.name!r}: cannot publish its outputs: {exc}"
        self.executor.destroy(task.id)
        return state, report

    def _describe_exit(self, state: TaskState, message: str, item: CompiledScenario) -> str:
        if state is TaskState.DEADLINE_EXCEEDED:
            return f"scenario {item.name!r}: timed out after {item.scenario.requires.timeout:g}s"
        return f"scenario {item.name!r}: slice ended {state.value.lower()}: {message}"

    def _read_report(self, reader: ReportReader, run: ScenarioRun, report: dict[str, Any], final: bool) -> None:
        """Apply the slice's new report lines to ``run``; only the known fields, of their types
        (the slice writes the file: it must not be able to break the runner's accounting)."""
        for event in reader.events(final=final):
            for key in ("rows_in", "rows_valid", "rows_invalid", "rows_malformed", "rows_out"):
                if type(event.get(key)) is int:
                    setattr(run, key, event[key])
            steps = event.get("steps")
            if isinstance(steps, dict) and all(type(v) is int for v in steps.values()):
                run.steps = {printable(str(k), 200): v for k, v in list(steps.items())[:1000]}
            drift = event.get("drift")
            if isinstance(drift, list):
                run.drift = [printable(str(d), 1000) for d in drift[:100]]
            if isinstance(event.get("contract_hash"), str):
                run.contract_hash = printable(event["contract_hash"], 200)
            if isinstance(event.get("ok"), bool):
                report["ok"] = event["ok"]
            if isinstance(event.get("error"), str):
                report["error"] = printable(event["error"], 4000)

    def _log(self, level: str, message: str, herd: str, scenario: str) -> None:
        export_log(self.manager, LogEntry(message, level, "runner", {"herd": herd, "scenario": scenario}))  # type: ignore[arg-type]
