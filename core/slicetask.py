"""What a scenario's slice is given: the spec it reads and the task the executor starts.

The runner decides when a scenario runs; this module decides what its slice gets: the
``SliceSpec`` (source, steps, sinks, policy: core/dataplane/spec.py), written to the slice's
own work dir, and the ``TaskSpec`` for the executor (the command that runs the data plane,
a clean environment, the paths granted, the limits). Used for runs and for the dry-run's
probe, so both give a slice the same environment.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from runink.core.config import RuninkConfig
from runink.core.dataplane.spec import AnnotateSpec, CommandSpec, SinkSpec, SliceSpec, SourceSpec
from runink.core.datasets import DatasetRef
from runink.core.driverload import import_driver, target_of
from runink.core.errors import RuninkError
from runink.core.interfaces.executor import TaskSpec
from runink.core.interfaces.storage import Storage
from runink.core.model import Resources
from runink.core.pipeline.compile import MAX_PROMPT_BYTES, CompiledScenario
from runink.core.pipeline.model import AnnotateStep, CommandStep, StepRef
from runink.core.project_files import read_below
from runink.core.staging import Stage

#: the data plane's entry point, run in the slice with the spec's path
SLICE_COMMAND = (sys.executable, "-m", "runink.core.dataplane.slice")


def slice_env(home: Path) -> dict[str, str]:
    """A clean environment: nothing from the agent but what a Python slice needs to start."""
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in the pipeline's folder
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def slice_limits(item: CompiledScenario, config: RuninkConfig) -> Resources:
    """The slice's limits: its @requires, and the configured [limits] where it sets none."""
    defaults = config.limits
    req = item.scenario.requires.with_defaults(memory=defaults.memory_bytes, pids=defaults.pids)
    return Resources(cpu=req.cpu, memory=req.memory, gpu=req.gpu, pids=req.pids)


def slice_task(
    item: CompiledScenario,
    config: RuninkConfig,
    *,
    herd: str,
    task_id: str,
    task_dir: Path,
    base_dir: Path,
    readable: tuple[Path, ...],
    staged: dict[Path, Stage],
) -> TaskSpec:
    """Write the slice's spec into ``task_dir/work`` (the slice's own folder: its HOME, its
    report) and return the task that runs it. The slice may write its work dir and the
    staging folders of its sinks, nothing else; it reads ``readable``."""
    scenario = item.scenario
    work_dir = task_dir / "work"
    storage_options, secrets = _storage_options(item, config)
    steps = tuple(_step_spec(step, base_dir, config) for step in scenario.steps)
    spec = SliceSpec(
        task_id=task_id,
        scenario=item.name,
        herd=herd,
        base_dir=str(base_dir),
        source=SourceSpec(
            uri=scenario.source.uri if scenario.source else "",
            format=item.source.format,
            path=str(item.source.path),
            options=dict(scenario.source.options) if scenario.source else {},
            contract=scenario.source.contract if scenario.source else None,
        ),
        steps=steps,
        sinks=tuple(SinkSpec(s.ref.format, _sink_path(s.ref, staged), s.when, dict(s.options)) for s in item.sinks),
        drift_policy=config.herd_policy(herd).drift,
        report=str(report_path(task_dir)),
        storage_options=storage_options,
        storage_drivers=_storage_drivers(
            {
                item.source.format,
                *(s.ref.format for s in item.sinks),
                *(s.format for s in steps if isinstance(s, CommandSpec)),
            }
        ),
    )
    spec_path = work_dir / "slice.json"
    spec_path.write_text(spec.to_json())
    return TaskSpec(
        id=task_id,
        command=(*SLICE_COMMAND, str(spec_path)),
        task_dir=task_dir,
        env=_with_secrets({**slice_env(work_dir), **_storage_env(item), **_annotator_env(spec, config)}, secrets),
        cwd=work_dir,
        readable=readable,
        hidden=_hidden_config(config, readable),
        writable=(work_dir, *sorted(stage.path for stage in staged.values())),
        limits=slice_limits(item, config),
        timeout=scenario.requires.timeout,
        network=scenario.network,
        herd=herd,
        labels={"scenario": item.name},
    )


def _hidden_config(config: RuninkConfig, readable: tuple[Path, ...]) -> tuple[Path, ...]:
    """The config file in use, when it lies inside a folder the slice reads (``runink run``
    from the project folder reads ./runink.toml): it may hold a plugin's credentials (an s3
    secret_key, an annotator's api_key) that reach only the slices meant to have them, as
    variables; the slice sees it empty."""
    if config.file is None:
        return ()
    try:
        file = Path(config.file).resolve(strict=True)
    except (OSError, RuntimeError):
        return ()
    inside = any(file.is_relative_to(folder) and file != folder for folder in readable)
    return (file,) if inside else ()


def _sink_path(ref: DatasetRef, staged: dict[Path, Stage]) -> str:
    """Where the slice writes a sink: a file in its staging folder, or a remote dataset's place
    in its store (written there by the driver, published by its commit)."""
    return str(ref.path if ref.remote else staged[ref.path].file)


def _remote_formats(item: CompiledScenario) -> set[str]:
    return {ref.format for ref in (item.source, *item.outputs) if ref.remote}


def _storage_drivers(formats: set[str]) -> dict[str, str]:
    """The targets of the storage drivers of ``formats`` (the slice imports them by target,
    without scanning every package's entry points); one that cannot be found is left out (the
    slice loads it by name, and says why it cannot)."""
    drivers = {}
    for fmt in sorted(f for f in formats if f):
        try:
            drivers[fmt] = target_of(Storage, fmt)
        except RuninkError:
            continue
    return drivers


def _storage_options(item: CompiledScenario, config: RuninkConfig) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """The ``[plugin.storage-FORMAT]`` options of the scenario's remote drivers for the spec,
    without their secrets (``Storage.secret_options``: option -> variable), and the secrets as
    variables for the task's env: the spec is a file kept with the run, the env reaches the
    slice only in memory. A driver that cannot be imported gets no options (the slice fails
    to load it anyway, and says so)."""
    options: dict[str, dict[str, Any]] = {}
    secrets: dict[str, str] = {}
    for fmt in sorted(_remote_formats(item)):
        try:
            driver = import_driver(Storage, fmt)
        except RuninkError:
            continue
        secret_options: dict[str, str] = dict(getattr(driver, "secret_options", {}))
        given = config.plugin_options(f"storage-{fmt}")
        options[fmt] = {k: v for k, v in given.items() if k not in secret_options}
        if any(k in given for k in secret_options):
            # the config's credentials replace the runner's whole set (no token of another key)
            secrets.update({variable: "" for variable in secret_options.values()})
            secrets.update({secret_options[k]: str(v) for k, v in given.items() if k in secret_options})
    return options, secrets


def _with_secrets(env: dict[str, str], secrets: dict[str, str]) -> dict[str, str]:
    """``env`` with the config's secrets set and the rest of their set ("" values) removed."""
    for name, value in secrets.items():
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    return env


def _storage_env(item: CompiledScenario) -> dict[str, str]:
    """The variables the remote storage drivers of the scenario read (``Storage.environment``:
    credentials, endpoint, region), passed from the runner's environment: the slice's is clean."""
    env: dict[str, str] = {}
    for fmt in _remote_formats(item):
        try:
            driver = import_driver(Storage, fmt)
        except RuninkError:
            continue  # the slice fails to load it too, and says so in one line
        for name in getattr(driver, "environment", ()):
            if name in os.environ:
                env[name] = os.environ[name]
    return env


def report_path(task_dir: Path) -> Path:
    """Where the slice writes its progress (the runner creates it first: core/report.py)."""
    return task_dir / "work" / "report.jsonl"


def _step_spec(
    step: StepRef | CommandStep | AnnotateStep, base_dir: Path, config: RuninkConfig
) -> str | CommandSpec | AnnotateSpec:
    """What the slice runs for ``step``: a Python step's reference, a command, or an annotate
    step with its prompt read here (the compile checked the file) and [annotator]'s driver."""
    if isinstance(step, CommandStep):
        return CommandSpec(step.command, step.shell, step.format)
    if isinstance(step, AnnotateStep):
        try:  # (in the pipeline's folder, through no link: a node reads it as root)
            text = read_below(base_dir, step.prompt, "prompt file", limit=MAX_PROMPT_BYTES).decode("utf-8")
        except RuninkError as exc:
            raise RuninkError(f"{step.at}: @annotate: {exc}") from None
        except UnicodeDecodeError as exc:
            why = f"prompt file {step.prompt}: not UTF-8 text ({exc.reason})"
            raise RuninkError(f"{step.at}: @annotate: {why}") from None
        # (its API key goes in the slice's environment, never in the spec file: _annotator_env)
        options = {k: v for k, v in config.annotator.options.items() if k != "api_key"}
        if step.model:
            options["model"] = step.model
        return AnnotateSpec(
            prompt_text=text,
            prompt_path=step.prompt,
            prompt_hash=hashlib.sha256(text.encode()).hexdigest(),
            fields=list(step.fields),
            columns=None if step.columns is None else list(step.columns),
            driver=str(config.annotator.driver or "openai"),
            options=options,
        )
    return step.ref


def _annotator_env(spec: SliceSpec, config: RuninkConfig) -> dict[str, str]:
    """An @annotate step's API key from [annotator] options (else the slice has only what its
    @secrets give it), as OPENAI_API_KEY: the slice's environment, not its spec file on disk."""
    key = config.annotator.options.get("api_key")
    if isinstance(key, str) and key and any(isinstance(step, AnnotateSpec) for step in spec.steps):
        return {"OPENAI_API_KEY": key}
    return {}
