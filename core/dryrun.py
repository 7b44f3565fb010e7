"""``runink run --dry-run``: what can be checked about a compiled pipeline without running it.

* every configured driver name (executor, scheduler policy, Barn backend, secret backend,
  annotator) is an installed driver that loads;
* each source no scenario produces exists and can be read;
* each sink's folder exists or can be created (its nearest existing ancestor is a writable
  folder);
* step and contract modules import and name a function / a Contract subclass. Importing runs
  the module's code, which is the pipeline author's: it happens in a slice started through
  the configured executor (``runink.core.pipeline.probe``), never in the CLI process.

Each problem is one line naming where it comes from (``file:line:column`` of the annotation,
or the config key and where it was set).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runink.core.config import RuninkConfig
from runink.core.driverload import group_of
from runink.core.drivers import CONFIGURED_DRIVERS, driver_names, driver_record
from runink.core.errors import ExecutorError
from runink.core.fstree import remove_tree
from runink.core.interfaces.executor import Executor, TaskSpec, TaskState
from runink.core.model import Resources
from runink.core.pipeline.compile import CompiledPipeline
from runink.core.pipeline.model import StepRef
from runink.core.pipeline.probe import FILES_MARK, MARK, MAX_FILES
from runink.core.plugins import PluginManager
from runink.core.report import printable
from runink.core.slicetask import slice_env
from runink.core.staging import whole_home

#: how long the import check may take (a module that hangs at import is a problem to report)
PROBE_TIMEOUT = 60.0
#: how much of the end of the probe's stdout is read for its answer
PROBE_OUTPUT_TAIL = 1024 * 1024


def check_drivers(config: RuninkConfig, plugins: Callable[[], PluginManager | None]) -> dict[str, str]:
    """Config section -> what is wrong with the driver it names (none, not loadable, disabled).

    ``plugins`` gives the loaded hook plugins. It is called only for a name no installed
    package registers (a hook plugin may register that driver at run time): loading every
    plugin costs a dry run ~40 ms it rarely needs."""
    problems: dict[str, str] = {}
    key = "driver"  # every driver section names its driver with it
    settings_only = PluginManager(config.plugins)  # (the allow and deny lists; no plugin loaded)
    for section, interface in CONFIGURED_DRIVERS.items():
        group = group_of(interface)
        name = getattr(config, section).driver
        if name is None or (section == "executor" and name == "auto"):
            continue
        record = driver_record(interface, name, settings_only)  # (only the named one is imported)
        if record is None:
            record = driver_record(interface, name, plugins())
        origin = config.source_of(f"{section}.{key}")
        if record is None:
            names = driver_names(interface, plugins()) + (["auto"] if section == "executor" else [])
            problems[section] = (
                f"{origin}: {section}.{key} = {name!r} names no installed {group} driver "
                f"(available: {', '.join(sorted(names)) or 'none'})"
            )
        elif record.status != "loaded":
            problems[section] = f"{origin}: {section}.{key} = {name!r}: the driver is {record.status}: {record.error}"
    return problems


ONE_FILE_FORMATS = frozenset({"csv", "jsonl", "parquet"})  # the built-in drivers: one file each


#: why a file root may read (or a folder root may write in) is refused to an isolated slice
ROOT_ONLY = "its owner has no right to it, and an isolated slice has only its owner's (not root's override)"


def _root_only(mode: int, needed: int) -> bool:
    """Whether only root's override of file modes gives the caller ``needed`` (owner bits): a
    slice acts as the file's owner (id-mapped), without that override. (A dry run as root
    passed a source of mode 000 that the run then could not read: a review.)"""
    return os.geteuid() == 0 and mode & needed != needed


def check_sources(compiled: CompiledPipeline, isolated: bool = False) -> list[str]:
    """Sources that no scenario of the pipeline writes must exist and be readable (``isolated``:
    by a slice, which has no override of file modes)."""
    problems = []
    for item in compiled.scenarios:
        if item.upstream or item.scenario.source is None or item.source.remote:
            continue  # (a remote source is not looked up: the dry run opens no connection)
        at, uri, path = item.scenario.source.at, item.scenario.source.uri, item.source.path
        try:
            # O_NONBLOCK: a FIFO planted as a source must not hang the check
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            problems.append(f"{at}: @source {uri!r}: {path} does not exist")
            continue
        except OSError as exc:
            problems.append(f"{at}: @source {uri!r}: cannot read {path}: {exc.strerror}")
            continue
        try:
            mode = os.fstat(fd).st_mode
        finally:
            os.close(fd)
        # (a folder only for a driver that reads folders: the built-in ones read one file each)
        if isolated and _root_only(mode, stat.S_IRUSR):
            problems.append(f"{at}: @source {uri!r}: cannot read {path}: {ROOT_ONLY}")
        elif stat.S_ISDIR(mode) and item.source.format in ONE_FILE_FORMATS:
            why = f"{path} is a folder: the {item.source.format} driver reads one file"
            problems.append(f"{at}: @source {uri!r}: {why}")
        elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            problems.append(f"{at}: @source {uri!r}: {path} is not a regular file")
    return problems


def check_sinks(compiled: CompiledPipeline, isolated: bool = False) -> list[str]:
    """Each sink's folder exists or can be made: its nearest existing ancestor is a writable folder
    (``isolated``: by a slice, as check_sources)."""
    problems = []
    for item in compiled.scenarios:
        for sink, written in zip(item.sinks, item.scenario.sinks, strict=True):
            if sink.ref.remote:
                continue
            folder = sink.ref.path.parent
            ancestor = folder
            while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            prefix = f"{written.at}: @sink {written.uri!r}: "
            if not ancestor.is_dir():
                problems.append(f"{prefix}cannot make folder {folder}: {ancestor} is not a folder")
            elif not os.access(ancestor, os.W_OK | os.X_OK):
                problems.append(f"{prefix}cannot write in {ancestor}: not writable")
            elif isolated and _root_only(ancestor.stat().st_mode, stat.S_IWUSR | stat.S_IXUSR):
                problems.append(f"{prefix}cannot write in {ancestor}: {ROOT_ONLY}")
    return problems


def code_refs(compiled: CompiledPipeline) -> dict[tuple[str, str], str]:
    """The step and contract references the code check imports: (ref, kind) -> where it is
    first named."""
    refs: dict[tuple[str, str], str] = {}
    for item in compiled.scenarios:
        scenario = item.scenario
        if scenario.source is not None and scenario.source.contract:
            refs.setdefault((scenario.source.contract, "contract"), str(scenario.source.at))
        for step in scenario.steps:
            if isinstance(step, StepRef):  # a command step's program runs only in a real run
                refs.setdefault((step.ref, "step"), str(step.at))
    return refs


@dataclass
class CodeCheck:
    """What ``check_code`` found: its problems, and the source files of the modules the check
    imported outside the standard library and site-packages (None when it could not tell)."""

    problems: list[str]
    files: list[str] | None = None


def check_code(compiled: CompiledPipeline, executor: Executor, config: RuninkConfig) -> CodeCheck:
    """Import the step and contract modules in a slice and check what each reference names."""
    refs = code_refs(compiled)
    if not refs:
        return CodeCheck([], [])
    pipeline = compiled.pipeline
    base = pipeline.base_dir.resolve()  # a real path (the launcher refuses links), vetted as a run does
    if whole_home(base):
        return CodeCheck(
            [
                f"{pipeline.file or pipeline.name}: the pipeline's folder {base} is / or a home folder: "
                "a slice is granted the whole folder, put the pipeline in a folder of its own"
            ]
        )
    task_id = f"dry-run-{uuid.uuid4().hex[:12]}"
    data_dir = Path(config.data_dir).resolve()
    task_dir = data_dir / "dry-run" / task_id
    # removed again after a good check, with the folders above it that this check made
    made = [p for p in (data_dir, data_dir / "dry-run") if not p.exists()]
    work_dir = task_dir / "work"
    task_dir.parent.mkdir(parents=True, exist_ok=True)
    task_dir.mkdir(mode=0o700)  # private: the slice may change its work dir, not this (see runner)
    work_dir.mkdir()
    spec_path = work_dir / "probe.json"
    spec_path.write_text(
        json.dumps({"base_dir": str(pipeline.base_dir), "refs": [{"ref": r, "kind": k} for r, k in refs]})
    )
    # the probe writes nothing there (no bytecode either): the folder stays the runner's
    limits = config.limits
    task = TaskSpec(
        id=task_id,
        command=(sys.executable, "-m", "runink.core.pipeline.probe", str(spec_path)),
        task_dir=task_dir,
        env=slice_env(work_dir),
        cwd=work_dir,
        readable=(base,),
        writable=(work_dir,),
        limits=Resources(cpu=1.0, memory=limits.memory_bytes, pids=limits.pids),
        timeout=PROBE_TIMEOUT,
        herd=pipeline.herd,
        labels={"purpose": "dry-run"},
    )
    where = pipeline.file or pipeline.name
    try:
        executor.start(task)
    except ExecutorError as exc:
        return CodeCheck([f"{where}: cannot check the step modules: {exc}"])
    try:
        ended = executor.wait(task_id)
    finally:
        executor.destroy(task_id)
    tail = _output_tail(task_dir / "stdout.log")
    answer = _marked(tail, MARK)
    if answer is None:
        state = ended.state.value.lower() if ended is not None else "unknown"
        detail = f": {ended.message}" if ended is not None and ended.message else ""
        if ended is not None and ended.state is TaskState.DEADLINE_EXCEEDED:
            detail = f": the imports took more than {PROBE_TIMEOUT:g}s"
        return CodeCheck(
            [f"{where}: cannot check the step modules: the check ended {state}{detail} (logs: {task_dir})"]
        )
    problems = []
    for result in answer:
        if result.get("error"):
            key = (str(result.get("ref")), str(result.get("kind")))
            if key in refs:
                problems.append(f"{refs[key]}: {key[1]} {key[0]!r}: {printable(str(result['error']), 1000)}")
    with contextlib.suppress(OSError):  # (what the check's slice wrote: any depth, fstree)
        remove_tree(task_dir)  # kept only when the check itself failed
    for folder in reversed(made):
        with contextlib.suppress(OSError):
            folder.rmdir()
    files = _marked(tail, FILES_MARK)
    return CodeCheck(problems, files if files is not None and len(files) <= MAX_FILES else None)


def _output_tail(stdout: Path) -> str:
    """The end of the probe's output (read without following links; "" if it cannot be)."""
    try:
        fd = os.open(stdout, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return ""
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - PROBE_OUTPUT_TAIL))
        return fh.read(PROBE_OUTPUT_TAIL).decode("utf-8", errors="replace")


def _marked(tail: str, mark: str) -> Any:
    """The JSON of the last line carrying ``mark``, if it is the shape the probe writes after
    that mark (MARK: a list of objects; FILES_MARK: a list of absolute paths); else None. The
    slice wrote it (step modules run there): nothing else is taken."""
    for line in reversed(tail.splitlines()):
        # the linux executor's log may prefix lines; the mark is found wherever it starts
        index = line.find(mark)
        if index < 0:
            continue
        try:
            answer = json.loads(line[index + len(mark) :])
        except json.JSONDecodeError:
            return None
        if not isinstance(answer, list):
            return None
        if mark == MARK and all(isinstance(item, dict) for item in answer):
            return answer
        if mark == FILES_MARK and all(isinstance(f, str) and f.startswith("/") and len(f) < 4096 for f in answer):
            return answer
        return None
    return None
