"""The local runner: ``runink run``, the embedded deployment of the cluster's lifecycle.

A run is a pipeline job in an in-process control plane on the memory Barn (the same
Lifecycle, Scheduler and Agent as ``runink server`` and ``runink agent``, as ``nomad agent
-dev`` is): one task per scenario, each ``after`` the scenarios producing its source, placed
on the one local node within its cpus (each scenario counts its ``@requires(cpu=...)``) and
run by the in-process agent through the executor driver (core/agent/scenarios.py: staging,
the slice, its report, publishing, lineage). A scenario whose upstream failed is SKIPPED.
Retries follow ``@retries(n, backoff)`` with exponential backoff. Behaviour cannot diverge
between the two deployments because there is one copy of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runink.core import logs
from runink.core.agent.agent import Agent
from runink.core.agent.disk_limits import disk_limited
from runink.core.agent.gpus import GpuInventory, find_gpus
from runink.core.agent.metered import MeteredExecutor
from runink.core.agent.scenarios import PipelineRun, ScenarioAttempts, ScenarioRun
from runink.core.agent.slice_lines import slice_lines
from runink.core.config import RuninkConfig
from runink.core.control.lifecycle import Lifecycle, done_before_cancel, pipeline_tasks
from runink.core.control.records import Amount, Herd, JobRecord, RunState, TaskRecord
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.control.transitions import TransitionLog
from runink.core.control.views import job_answer
from runink.core.drivers import configured_driver, load_driver, pipeline_executor
from runink.core.errors import RuninkError
from runink.core.events import export_log
from runink.core.history import RunHistory, RunRecorder
from runink.core.interfaces.barn import BarnBackend
from runink.core.interfaces.executor import Executor
from runink.core.interfaces.secrets import SecretBackend
from runink.core.model import LogEntry, ScenarioState
from runink.core.pipeline.compile import CompiledPipeline
from runink.core.plugins import PluginManager
from runink.core.units import MAX_MEMORY, check_name

log = logging.getLogger(__name__)
PRUNE_EVERY = 60.0  # seconds: past runs are pruned after a run at most this often
STOP_GRACE = 5.0  # seconds between a stopped slice's SIGTERM and SIGKILL


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


class LocalRunner:
    """Runs a compiled pipeline on this machine through the cluster's own lifecycle: an
    in-process control plane on the memory Barn and one in-process agent (see the module's
    docstring)."""

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
        self._cancel = threading.Event()
        self._plane: _EmbeddedPlane | None = None  # while a run goes on

    def cancel(self) -> None:
        """Stop every running slice (SIGTERM, 5 s grace) and start no more."""
        self._cancel.set()
        if (plane := self._plane) is not None:
            plane.agent.wake.set()  # the run's loop cancels its job at once

    def run(self, compiled: CompiledPipeline, *, also_writable: tuple[Path, ...] = ()) -> RunResult:
        """Run the pipeline; ``also_writable``: folders its sinks may be in besides the pipeline's
        own and those [paths] allow (``runink test`` redirects outputs to a temporary one)."""
        pipeline = compiled.pipeline
        try:  # (a .dsl's @herd is checked where it is written; a pipeline built in Python here)
            check_name(pipeline.herd, "herd")
        except ValueError as exc:
            raise RuninkError(f"pipeline {pipeline.name!r}: {exc}") from None
        allowed = (pipeline.base_dir, *(Path(p) for p in self.config.paths.allow), *also_writable)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        result = RunResult(
            run_id, pipeline.name, pipeline.herd, [ScenarioRun(s.name) for s in compiled.scenarios], time.time()
        )
        runs = {r.name: r for r in result.scenarios}
        this_run = PipelineRun(
            compiled,
            run_id,
            pipeline.herd,
            work=Path(self.config.data_dir).resolve() / "runs" / run_id,
            roots=tuple(p.resolve() for p in allowed),  # once a run, not per sink and attempt
            scenarios=runs,
        )
        plane = self._plane = _EmbeddedPlane(self, this_run)
        recorder = RunRecorder(this_run.work, run_id, pipeline.name, str(pipeline.file or pipeline.base_dir))
        job: JobRecord | None = None
        try:
            with logs.correlation(run=run_id):
                job = plane.submit()
                with logs.correlation(job=job.id):
                    self._follow(plane, job, result, recorder)
        finally:
            self._plane = None
            if job is not None:  # kept for `runink jobs list`, `status` and `logs` (core/history.py)
                _record(recorder, plane, job, result, final=True)
            plane.close()
        result.finished = time.time()
        self.on_update(result)
        self._prune(run_id)
        return result

    def _prune(self, run_id: str) -> None:
        """Past runs beyond ``[run] keep_for`` and ``keep_size`` go (this one stays), once a
        minute at most."""
        kept = self.config.run
        history = RunHistory(self.config.data_dir)
        try:
            if history.due(PRUNE_EVERY):
                history.prune(older_than=kept.keep_for_seconds, max_bytes=kept.keep_size_bytes, keep=(run_id,))
        except Exception as exc:  # the run itself went well: say so and go on (whatever a past run holds)
            log.warning("could not prune past runs in %s: %s", self.config.data_dir, exc)

    def _follow(self, plane: _EmbeddedPlane, job: JobRecord, result: RunResult, recorder: RunRecorder) -> None:
        """Drive the plane until every task of the job ended: a scheduler pass, an agent round,
        the scenarios' states from their tasks'; again at once when something changed, else
        when a slice ends (the agent's ``wake``) or after a short while (retries' backoff)."""
        names = {task_id: name for name, task_id in plane.task_ids.items()}
        cancelled = False
        seen: dict[str, tuple[RunState, int]] = {}
        while True:
            if self._cancel.is_set() and not cancelled:
                cancelled = True
                plane.lifecycle.cancel(job.id)
            plane.agent.wake.clear()
            plane.scheduler.run_pass(time.time())
            plane.agent.sync()
            tasks = [v.record for v in plane.store.job_tasks(job)]
            now = {t.id: (t.state, t.attempt) for t in tasks}
            if now != seen:
                for task in tasks:  # (to the log exporters: Fluentd ships them as runink.control)
                    if seen.get(task.id) != now[task.id]:
                        plane.transitions.task_changed(task.herd, task.id, task.model_dump(mode="json"))
            for task in tasks:
                self._apply(task, result, names)
            if now != seen:
                _record(recorder, plane, job, result)
            self.on_update(result)
            if all(t.state.final for t in tasks) and not plane.agent.running:
                return
            if now == seen:  # (a slice's end and a cancel set the agent's wake)
                plane.agent.wake.wait(0.05)
            seen = now

    def _apply(self, task: TaskRecord, result: RunResult, names: dict[str, str]) -> None:
        """A scenario's state as its task's (SCHEDULED is still PENDING to a run's reader)."""
        run = next(r for r in result.scenarios if r.name == names[task.id])
        run.attempts = max(run.attempts, task.attempt)
        if not task.state.final:
            if task.state is RunState.RUNNING:
                run.state = ScenarioState.RUNNING
            return
        if run.state.final:
            if done_before_cancel(task):  # (its agent said so after the cancel was seen)
                run.error = task.message
            return
        run.state = ScenarioState(task.state.value)
        run.finished = run.finished or time.time()
        if run.started is None:
            run.started = run.finished
        if run.state is ScenarioState.SKIPPED:
            failed = [names.get(u, u) for u in task.after]
            upstream = next((n for n in failed if _state_of(result, n) is not ScenarioState.SUCCEEDED), failed[0])
            run.error = f"upstream scenario {upstream!r} did not succeed"
        elif run.state is ScenarioState.CANCELLED:
            run.error = task.message if done_before_cancel(task) else run.error or "cancelled"
        elif run.state is not ScenarioState.SUCCEEDED:
            run.error = run.error or task.message or f"scenario {run.name!r}: {task.state}"
            if task.attempt == 0 or not run.log_dir:
                self._log("error", run.error, result.herd, run.name)

    def _log(self, level: str, message: str, herd: str, scenario: str) -> None:
        export_log(self.manager, LogEntry(message, level, "runner", {"herd": herd, "scenario": scenario}))  # type: ignore[arg-type]


def _record(
    recorder: RunRecorder, plane: _EmbeddedPlane, job: JobRecord, result: RunResult, *, final: bool = False
) -> None:
    """Write the run's record: its job as the API answers it, where each attempt's output is,
    what each scenario read and wrote. A disk that refuses it costs the record, not the run."""
    names = {task_id: name for name, task_id in plane.task_ids.items()}
    runs = {r.name: r for r in result.scenarios}
    logs: dict[str, dict[str, str]] = {}
    for task_id, name in names.items():
        run = runs[name]
        if run.log_dir and run.attempts:  # (each attempt's folder is named as core/agent/scenarios.py does)
            folder = Path(run.log_dir).parent.name
            logs[task_id] = {str(n): f"{folder}/attempt-{n}" for n in range(1, run.attempts + 1)}
    try:
        recorder.write(job_answer(plane.store, job.id, explain=True), logs, _datasets(plane.run, result), final=final)
    except OSError as exc:
        log.warning("run %s: could not write its record in %s: %s", result.run_id, recorder.work, exc)


def _datasets(run: PipelineRun, result: RunResult) -> list[dict[str, Any]]:
    """What each scenario that started read and, once its outputs were published, wrote, with
    row counts: the shape of the catalog's ``GET /v1/catalog/jobs/{id}``."""
    found = []
    for item in run.compiled.scenarios:
        scenario = next(r for r in result.scenarios if r.name == item.name)
        if scenario.started is None:
            continue
        wrote = []
        if scenario.published:  # (SUCCEEDED, or cancelled while they went into place)
            invalid = {s.ref.key for s in item.sinks if s.when != "valid"}
            wrote = [
                {"uri": ref.canonical(), "rows": scenario.rows_invalid if ref.key in invalid else scenario.rows_out}
                for ref in item.outputs
            ]
        found.append(
            {
                "scenario": item.name,
                "run": scenario.task_id,
                "state": scenario.state.value,
                "read": [{"uri": item.source.canonical(), "rows": scenario.rows_in}],
                "wrote": wrote,
            }
        )
    return found


def _state_of(result: RunResult, name: str) -> ScenarioState:
    return next((r.state for r in result.scenarios if r.name == name), ScenarioState.FAILED)


def _host_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError):
        return MAX_MEMORY


def _secret_backend(runner: LocalRunner, run: PipelineRun) -> SecretBackend | None:
    """Where this run's @secrets come from: the ``[secrets]`` driver configured, else ``env``
    (``RUNINK_SECRET_<HERD>__<NAME>``); loaded only for a pipeline that asks for a secret."""
    if not any(item.scenario.secrets for item in run.compiled.scenarios):
        return None
    configured: SecretBackend | None = configured_driver(runner.config, "secrets", runner.manager)
    if configured is not None:
        return configured
    return load_driver(SecretBackend, "env", {}, manager=runner.manager, origin="runink run's default")


class _EmbeddedPlane:
    """The control plane and agent of one ``runink run``: the same Lifecycle, Scheduler and
    Agent as ``runink server`` / ``runink agent``, on the memory Barn, in this process."""

    NODE = "local"

    def __init__(self, runner: LocalRunner, run: PipelineRun) -> None:
        self.run = run
        self.barn: BarnBackend = load_driver(BarnBackend, "memory", {}, manager=runner.manager)
        self.store = ClusterStore(self.barn)
        # no jitter: one node has no herd of retries to spread, and the logs say the exact delay
        self.lifecycle = Lifecycle(
            self.store, jitter=lambda: 1.0, secrets=_secret_backend(runner, run), rates=runner.config.cost
        )
        self.store.create_herd(Herd(name=run.herd))
        policy = configured_driver(runner.config, "scheduler", runner.manager)
        self.scheduler = Scheduler(self.store, runner.manager, policy)
        # nvidia-smi asked only for a pipeline that wants GPUs (none found: @requires(gpu) is clamped to 0)
        wants_gpus = any(item.scenario.requires.gpu for item in run.compiled.scenarios)
        gpus = find_gpus() if wants_gpus else GpuInventory()
        self.node = Amount(cpu=runner.cpus, memory=min(_host_memory(), MAX_MEMORY), gpu=len(gpus.gpus))
        # (the runner's executor is closed by the runner: the meter only stops reporting)
        self.metered = MeteredExecutor(runner.executor, runner.manager, self.NODE)
        limited = disk_limited(self.metered, runner.config.limits.disk_bytes, grace=STOP_GRACE)
        attempts = ScenarioAttempts(limited, runner.config, runner.manager, self._pipeline)
        self.agent = Agent(
            self.lifecycle,
            attempts,
            self.NODE,
            self.node,
            work_dir=run.work,
            stop_grace=STOP_GRACE,
            max_running=runner.max_parallel,
            slice_lines=slice_lines(runner.config, runner.manager, self.NODE),
            gpus=gpus,
        )
        self.labels = dict(self.agent.register().labels)
        self.task_ids: dict[str, str] = {}
        self.transitions = TransitionLog(runner.manager, whole_history=True, failure_level="info")

    def _pipeline(self, task: TaskRecord) -> PipelineRun:
        if task.scenario is None or task.scenario.run != self.run.run_id:
            raise RuninkError(f"task {task.id}: not a scenario of this process's run")
        return self.run

    def submit(self) -> JobRecord:
        pipeline = self.run.compiled.pipeline
        where = str(pipeline.file or pipeline.base_dir)
        tasks = pipeline_tasks(self.run.compiled, clamp=self.node)
        for asking in tasks:  # (it would wait forever: this machine is the one node there is)
            missing = {k: v for k, v in asking.node_labels.items() if self.labels.get(k) != v}
            if missing:
                asked = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
                have = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "none"
                at = self.run.compiled.get(asking.scenario).scenario.at
                raise RuninkError(
                    f"{at}: scenario {asking.scenario!r} asks for a node labelled {asked}; this machine's labels: "
                    f"{have} (submit it to a cluster: runink submit)"
                )
        job = self.lifecycle.submit_pipeline(self.run.herd, where, tasks, run=self.run.run_id)
        for versioned in self.store.job_tasks(job):
            task = versioned.record
            if task.scenario is not None:
                self.task_ids[task.scenario.scenario] = task.id
        return job

    def close(self) -> None:
        self.metered.unregister()
        self.barn.close()


def run_pipeline(
    pipeline: Any,
    *,
    config: RuninkConfig | None = None,
    config_path: str | Path | None = None,
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run a pipeline on this machine as `runink run` does and return its ``--json`` summary
    (``ok`` false when a scenario failed). ``pipeline``: a ``.dsl`` path, a ``Pipeline`` from
    ``PipelineBuilder(...).build()``, or a compiled one. The config is ``config``, else read as
    the CLI reads it (``config_path``, ``$RUNINK_CONFIG``, ./runink.toml...) with ``overrides``
    (``{"executor.driver": "process"}``, as ``--set``). Raises RuninkError (a ConfigError, a
    PipelineError...) naming what was wrong."""
    from runink.core.config import load_config
    from runink.core.pipeline.compile import compile_pipeline
    from runink.core.pipeline.dsl import parse_file
    from runink.core.pipeline.model import Pipeline
    from runink.core.plugins import create_plugin_manager

    if config is None:
        config = load_config(config_path, overrides=overrides)
    if isinstance(pipeline, CompiledPipeline):
        compiled = pipeline
    elif isinstance(pipeline, Pipeline):
        compiled = compile_pipeline(pipeline, config=config)
    elif isinstance(pipeline, (str, Path)):
        compiled = compile_pipeline(parse_file(Path(pipeline)), config=config)
    else:
        raise TypeError(f"runink.run: expected a .dsl path or a Pipeline, got {type(pipeline).__name__}")
    manager = create_plugin_manager(config)
    try:
        executor = pipeline_executor(config, compiled.limits_asked(), manager, quiet=True)
        try:
            return LocalRunner(config, manager, executor).run(compiled).to_json()
        finally:
            executor.close()
    finally:
        manager.unconfigure()
