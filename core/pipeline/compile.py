"""Compilation: check a parsed Pipeline against the file system and order its scenarios.

Checks, each reported at the annotation's file:line:column: every scenario has a source and
a valid-row sink; dataset URIs resolve to an installed storage format with known options;
``module:function`` steps and ``module:Class`` contracts exist (found on disk and checked in
the module's syntax tree, never imported: user code runs only inside the slice); ``@run``
commands split into arguments and use only the ``{input}`` and ``{output}`` placeholders; one
scenario produces each dataset; scenarios connected through datasets form no cycle.

Paths: every source and sink stays inside the pipeline's folder (symbolic links resolved), or
inside a folder the configuration allows (``[paths] allow``); a relative path never leaves the
folder through ``..``. No sink replaces a source under another name, the .dsl file, the
configuration file or a module a step or contract names, and no sink writes a file Python
would import (``.py``, ``.so``, ``.pth``...), so a pipeline's output never becomes its code.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from runink.core.command_step import CommandError
from runink.core.command_step import check as check_command_line
from runink.core.datasets import REMOTE_SCHEMES, DatasetError, DatasetRef, resolve_dataset, split_uri
from runink.core.drivers import driver_names
from runink.core.errors import RuninkError
from runink.core.interfaces import Storage
from runink.core.interfaces.storage import parquet_compression

if TYPE_CHECKING:
    from runink.core.config import RuninkConfig
from runink.core.pipeline.dsl import MAX_SINKS, MAX_STEPS, DslError
from runink.core.pipeline.model import (
    AnnotateStep,
    CommandStep,
    Location,
    Pipeline,
    Scenario,
    Sink,
    StepRef,
    slug,
)
from runink.core.project_files import read_below, read_regular
from runink.core.report import printable

# The built-in formats' options and their kinds (a third-party format checks its own): a
# wrong kind is a .dsl error at its line, not a TypeError in the slice
READ_OPTIONS: dict[str, dict[str, type]] = {
    "csv": {"delimiter": str, "block_size": int},
    "jsonl": {"chunk_lines": int},
    "parquet": {"batch_rows": int},
    "s3": {"batch_rows": int},
}
WRITE_OPTIONS: dict[str, dict[str, type]] = {
    "csv": {},
    "jsonl": {},
    "parquet": {"compression": str},
    "s3": {"compression": str},
}
MAX_PROMPT_BYTES = 64 * 1024  # an @annotate prompt file


@dataclass(frozen=True)
class CompiledSink:
    ref: DatasetRef
    when: str
    options: dict[str, Any]


@dataclass(frozen=True)
class CompiledScenario:
    scenario: Scenario
    source: DatasetRef
    sinks: tuple[CompiledSink, ...]
    upstream: tuple[str, ...] = ()  # names of scenarios producing this one's source

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def valid_sinks(self) -> tuple[DatasetRef, ...]:
        return tuple(s.ref for s in self.sinks if s.when == "valid")

    @property
    def outputs(self) -> tuple[DatasetRef, ...]:
        return tuple(s.ref for s in self.sinks)


@dataclass(frozen=True)
class CompiledPipeline:
    pipeline: Pipeline
    scenarios: tuple[CompiledScenario, ...]  # in dependency order
    levels: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    def get(self, name: str) -> CompiledScenario:
        return next(s for s in self.scenarios if s.name == name)

    def limits_asked(self) -> list[str]:
        """The limits its scenarios' ``@requires`` ask for ("cpu", "memory", "gpu"), sorted."""
        asked = {
            name
            for item in self.scenarios
            for name, value in (
                ("cpu", item.scenario.requires.cpu),
                ("memory", item.scenario.requires.memory),
                ("gpu", item.scenario.requires.gpu),
            )
            if value
        }
        return sorted(asked)


def compile_pipeline(
    pipeline: Pipeline, *, check_code: bool = True, config: RuninkConfig | None = None
) -> CompiledPipeline:
    """Check ``pipeline`` and order its scenarios. ``config`` gives the folders datasets may
    use besides the pipeline's own (``[paths] allow``) and the config file to protect; without
    it, only the pipeline's folder."""
    _check_scenarios(pipeline)
    formats = set(driver_names(Storage))
    places = _Places(pipeline, config)
    compiled: dict[str, CompiledScenario] = {}
    producers: dict[str, str] = {}  # a sink's real path -> the scenario writing it
    written_as: dict[str, tuple[DatasetRef, Sink]] = {}  # ... and as what that sink names it
    source_real: dict[str, str] = {}  # scenario -> its source's real path (links resolved)
    for scenario in pipeline.scenarios:
        if scenario.source is None:
            raise DslError(scenario.at, f"scenario {scenario.name!r} has no @source")
        source = _dataset(scenario.source.uri, pipeline.base_dir, scenario.source.at, formats)
        source_real[scenario.name] = places.check(source, scenario.source.at, "@source")
        _check_options(source, scenario.source.options, READ_OPTIONS, scenario.source.at, "@source")
        _check_network(scenario, source, scenario.source.at, "@source")
        if check_code and scenario.source.contract:
            _check_reference(scenario.source.contract, pipeline.base_dir, scenario.source.at, "contract", ast.ClassDef)
        for step in scenario.steps:
            if isinstance(step, CommandStep):
                _check_command(step, formats)
            elif isinstance(step, AnnotateStep):
                _check_annotate(scenario, step, pipeline.base_dir)
            elif check_code:
                _check_reference(step.ref, pipeline.base_dir, step.at, "step", (ast.FunctionDef,))
        sinks: list[CompiledSink] = []
        if not any(s.when == "valid" for s in scenario.sinks):
            raise DslError(scenario.at, f"scenario {scenario.name!r} has no @sink for its output")
        for sink in scenario.sinks:
            ref = _dataset(sink.uri, pipeline.base_dir, sink.at, formats)
            if not ref.remote and sink.uri.strip().endswith("/"):
                raise DslError(sink.at, f"@sink {sink.uri!r}: names a folder; a sink writes one file (name it)")
            real = places.check(ref, sink.at, "@sink")
            places.check_sink(ref, real, sink.at)
            _check_options(ref, sink.options, WRITE_OPTIONS, sink.at, "@sink")
            _check_network(scenario, ref, sink.at, "@sink")
            if real == source_real[scenario.name]:
                raise DslError(sink.at, f"scenario {scenario.name!r} writes the dataset it reads ({ref.path})")
            if real in producers:
                raise DslError(sink.at, f"dataset {ref.path} is also written by scenario {producers[real]!r}")
            producers[real] = scenario.name
            written_as[real] = (ref, sink)
            sinks.append(CompiledSink(ref, sink.when, dict(sink.options)))
        compiled[scenario.name] = CompiledScenario(scenario, source, tuple(sinks))

    # A sink whose file is the folder of another's could not be published beside it: refused
    # (each file's folders looked up: comparing every pair took 42 s for 16,000 sinks)
    folder_of = {folder: real for real in written_as for folder in map(str, Path(real).parents)}
    for real, (_, sink) in written_as.items():
        inner = folder_of.get(real)
        if inner is not None:
            raise DslError(sink.at, f"@sink {sink.uri!r}: {real} is the folder of another sink's file ({inner})")

    # A sink that is some scenario's source connects the two (the reader runs after). Written
    # under another name (a symbolic link), that would be a dependency nobody can see: refused.
    for reader in compiled.values():
        written = written_as.get(source_real[reader.name])
        if written is not None and written[0].key != reader.source.key:
            raise DslError(
                written[1].at,
                f"@sink {written[0].uri!r} is the source of scenario {reader.name!r} "
                f"({reader.source.uri!r}) under another name",
            )

    for name, item in list(compiled.items()):
        identity = source_real[name]
        upstream = (producers[identity],) if identity in producers else ()
        compiled[name] = replace(item, upstream=upstream)
        colocate = item.scenario.colocate_with
        if colocate is not None and colocate not in compiled:
            raise DslError(item.scenario.at, f"@affinity: colocate_with names unknown scenario {colocate!r}")

    levels = _levels(compiled)
    ordered = tuple(compiled[name] for level in levels for name in level)
    return CompiledPipeline(pipeline, ordered, levels)


#: a pipeline's scenarios, at most (a pipeline job's tasks: control.records.MAX_PIPELINE_TASKS)
MAX_SCENARIOS = 1000
MAX_SCENARIO_NAME = 200  # characters (control.records.ScenarioName)
MAX_RETRIES = 100  # (control.records.PipelineTask.retries)


def _check_scenarios(pipeline: Pipeline) -> None:
    """What a run would refuse only once submitted, said here (the dry run said OK before):
    the names (one each, printable, bounded, and not one folder's name for two), their count,
    the retries, and what the Python builder takes unchecked (a sink's ``when``)."""
    where = str(pipeline.file or pipeline.base_dir)
    if not where.isprintable():
        why = "the pipeline's path holds a control character (a new line?): rename its folder"
        raise DslError(Location(printable(where, 400)), why)
    if not pipeline.name.isprintable() or len(pipeline.name) > MAX_SCENARIO_NAME:
        # (printed as it is: an escape sequence in it retitled the terminal, cleared the screen)
        why = f"the Feature's name: printable text of at most {MAX_SCENARIO_NAME} characters"
        raise DslError(Location(printable(where, 400), 1, 1) if pipeline.file else Location(), why)
    if len(pipeline.scenarios) > MAX_SCENARIOS:
        extra = pipeline.scenarios[MAX_SCENARIOS]
        raise DslError(extra.at, f"more than {MAX_SCENARIOS} scenarios in one pipeline: split it")
    named: dict[str, Scenario] = {}
    folders: dict[str, Scenario] = {}
    for scenario in pipeline.scenarios:
        name = scenario.name
        if not isinstance(name, str) or not name.strip():
            raise DslError(scenario.at, "a scenario needs a name")
        if len(name) > MAX_SCENARIO_NAME:
            raise DslError(scenario.at, f"scenario name of {len(name)} characters: at most {MAX_SCENARIO_NAME}")
        if not name.isprintable():
            raise DslError(scenario.at, f"scenario {name!r}: its name holds a control character")
        if name in named:
            raise DslError(scenario.at, f"scenario {name!r} is defined twice (first at {named[name].at})")
        named[name] = scenario
        other = folders.setdefault(slug(name), scenario)
        if other is not scenario:
            why = f"its runs' folder would be {slug(name)!r}, as scenario {other.name!r}'s ({other.at}): rename one"
            raise DslError(scenario.at, f"scenario {name!r}: {why}")
        golden = PurePosixPath(scenario.golden) if scenario.golden else None
        if golden is not None and (golden.is_absolute() or ".." in golden.parts):
            # (`runink test` reads and writes there, often as root: only inside the project)
            raise DslError(scenario.at, f"@golden({scenario.golden!r}): a folder inside the pipeline's folder")
        if len(scenario.steps) > MAX_STEPS or len(scenario.sinks) > MAX_SINKS:
            raise DslError(scenario.at, f"scenario {name!r}: at most {MAX_STEPS} steps and {MAX_SINKS} sinks")
        if not 0 <= scenario.retries <= MAX_RETRIES:
            raise DslError(scenario.at, f"scenario {name!r}: retries {scenario.retries}: 0 to {MAX_RETRIES}")
        for sink in scenario.sinks:
            if sink.when not in ("valid", "invalid"):
                raise DslError(sink.at, f"@sink: when={sink.when!r}: expected 'valid' or 'invalid'")


def _dataset(uri: str, base_dir: Path, at: Location, formats: set[str]) -> DatasetRef:
    try:
        ref = resolve_dataset(uri, base_dir)
    except DatasetError as exc:
        raise DslError(at, str(exc)) from None
    if ref.format not in formats:
        raise DslError(at, f"no storage driver for format {ref.format!r} (installed: {', '.join(sorted(formats))})")
    return ref


def _check_annotate(scenario: Scenario, step: AnnotateStep, base_dir: Path) -> None:
    """The prompt file is there (read by the node that runs the scenario); the records go to
    a model over the network, which the scenario must be granted."""
    try:  # (in the pipeline's folder, through no link: the node reads it as root)
        read_below(base_dir, step.prompt, "prompt file", limit=MAX_PROMPT_BYTES)
    except RuninkError as exc:
        raise DslError(step.at, f"@annotate: {exc}") from None
    if not scenario.network:
        raise DslError(step.at, f"@annotate sends records to a model: scenario {scenario.name!r} needs @network")


def _check_command(step: CommandStep, formats: set[str]) -> None:
    """A command step's command line splits, uses only {input} and {output}, and its rows are
    exchanged in a file format a storage driver reads and writes locally."""
    try:
        check_command_line(step.command, step.shell)
    except CommandError as exc:
        raise DslError(step.at, f"@run {step.command!r}: {exc}") from None
    local = sorted(formats - REMOTE_SCHEMES)
    if step.format not in local:
        raise DslError(
            step.at, f"@run: format {step.format!r} is not a local file format of a storage driver ({', '.join(local)})"
        )


def _check_network(scenario: Scenario, ref: DatasetRef, at: Location, what: str) -> None:
    """A remote dataset is reached over the network, which a slice has only when granted."""
    if ref.remote and not scenario.network:
        raise DslError(
            at,
            f"{what} {ref.uri!r} is reached over the network: scenario {scenario.name!r} needs @network "
            "(a slice has no network otherwise)",
        )


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


#: file names a sink may not have: Python would import or run them (a sink on sys.path, or in
#: the pipeline's folder, which the slice imports steps from), or runink reads them (a .dsl,
#: a runink.toml that the next run from that folder would take as its configuration).
_CODE_SUFFIXES = (*importlib.machinery.all_suffixes(), ".pth", ".dsl", ".toml")


class _Places:
    """Where a pipeline's datasets may be, and the files its sinks must leave alone."""

    def __init__(self, pipeline: Pipeline, config: RuninkConfig | None) -> None:
        self.base_dir = pipeline.base_dir
        self.base_real = os.path.realpath(pipeline.base_dir)
        allowed = config.paths.allow if config is not None else []
        self.allowed = [(str(path), os.path.realpath(path)) for path in allowed]
        self.protected: dict[str, str] = {}
        if pipeline.file is not None:
            self.protected[os.path.realpath(pipeline.file)] = "the pipeline's .dsl file"
        if config is not None and config.file is not None:
            self.protected[os.path.realpath(config.file)] = "the configuration file"
        for scenario in pipeline.scenarios:
            refs = [(step.ref, "step") for step in scenario.steps if isinstance(step, StepRef)]
            if scenario.source is not None and scenario.source.contract:
                refs.append((scenario.source.contract, "contract"))
            for ref, what in refs:
                module = ref.partition(":")[0]
                try:
                    file = _find_module_file(module, pipeline.base_dir) if module else None
                except (ImportError, ValueError):
                    file = None  # reported by _check_reference
                if file is not None:
                    self.protected[os.path.realpath(file)] = f"the module of {what} {ref!r}"

    def check(self, ref: DatasetRef, at: Location, what: str) -> str:
        """``ref`` is in the pipeline's folder or an allowed one, links resolved; returns the
        file it really is (its real path), which tells two names of one file apart. A remote
        dataset is no local file: its identity is its canonical URI."""
        if ref.remote:
            return ref.key
        written = Path(split_uri(ref.uri)[1]).expanduser()
        if not written.is_absolute() and not _inside(str(ref.path), str(self.base_dir)):
            raise DslError(at, f"{what} {ref.uri!r}: '..' leads out of the pipeline's folder {self.base_dir}")
        real = os.path.realpath(ref.path)
        if _inside(real, self.base_real) or any(_inside(real, folder) for _, folder in self.allowed):
            return real
        via = f" (through a symbolic link: {real})" if real != str(ref.path) else ""
        allowed = ", ".join(name for name, _ in self.allowed) or "none"
        raise DslError(
            at,
            f"{what} {ref.uri!r}: {ref.path}{via} is outside the pipeline's folder {self.base_dir} "
            f"and the folders [paths] allow lists ({allowed})",
        )

    def check_sink(self, ref: DatasetRef, real: str, at: Location) -> None:
        """A sink (whose file really is ``real``) replaces none of the pipeline's own files and
        writes no code."""
        if ref.remote:
            return  # an object in a store: no local file to replace, nothing Python imports from there
        if real in self.protected:
            raise DslError(at, f"@sink {ref.uri!r} would replace {self.protected[real]} ({real})")
        name = os.path.basename(real)
        if name.endswith(_CODE_SUFFIXES) or "__pycache__" in Path(real).parts:
            raise DslError(at, f"@sink {ref.uri!r}: a sink may not write a file Python imports, a .dsl or a .toml file")
        if os.path.isdir(real):
            raise DslError(at, f"@sink {ref.uri!r}: {real} is a folder")


#: a storage option's number (block_size, chunk_lines, batch_rows), at most: 10**40 passed and
#: failed in the slice (OverflowError)
MAX_OPTION_NUMBER = 1 << 30


def _check_options(
    ref: DatasetRef, options: dict[str, object], known: dict[str, dict[str, type]], at: Location, what: str
) -> None:
    allowed = known.get(ref.format)
    if allowed is None:
        return  # a third-party format validates its own options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        expected = ", ".join(sorted(allowed)) or "none"
        raise DslError(at, f"{what}: unknown option(s) {', '.join(unknown)} for {ref.format} (expected: {expected})")
    for name, value in options.items():
        kind = allowed[name]
        too_big = kind is int and isinstance(value, int) and value > MAX_OPTION_NUMBER
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value <= 0) or too_big:  # type: ignore[operator]
            wanted = f"a whole number from 1 to {MAX_OPTION_NUMBER:,}" if kind is int else "text"
            raise DslError(at, f"{what}: option {name}={value!r} for {ref.format} is not {wanted}")
    delimiter = options.get("delimiter")
    if isinstance(delimiter, str) and (len(delimiter) != 1 or delimiter in '"\r\n'):
        # (a quote or a line break cannot part values: the reader's quote and line logic needs both)
        raise DslError(
            at,
            f"{what}: option delimiter={delimiter!r} for csv is not one character other than a quote or a line break",
        )
    if "compression" in options:  # (pyarrow refused an unknown codec only once the run wrote its first batch)
        try:
            parquet_compression(options["compression"])
        except ValueError as exc:
            raise DslError(at, f"{what}: {ref.format} {exc}") from None


def _levels(compiled: dict[str, CompiledScenario]) -> tuple[tuple[str, ...], ...]:
    """Scenarios grouped so each group depends only on earlier ones; a cycle is an error."""
    remaining = {name: set(item.upstream) for name, item in compiled.items()}
    levels: list[tuple[str, ...]] = []
    done: set[str] = set()
    while remaining:
        ready = tuple(name for name in compiled if name in remaining and remaining[name] <= done)
        if not ready:
            cycle = _find_cycle(remaining)
            first = compiled[cycle[0]].scenario
            raise DslError(first.at, "cycle between scenarios: " + " -> ".join([*cycle, cycle[0]]))
        levels.append(ready)
        done.update(ready)
        for name in ready:
            del remaining[name]
    return tuple(levels)


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    start = next(iter(graph))
    path: list[str] = []
    node = start
    while node not in path:
        path.append(node)
        node = next(iter(graph[node] & graph.keys()))
    return path[path.index(node) :]


def _find_module_file(module: str, base_dir: Path) -> Path | None:
    """The source file of ``module``, looked up in the pipeline's folder then sys.path, without importing."""
    search: Sequence[str] | None = [str(base_dir), *sys.path]
    spec = None
    for part in module.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = spec.submodule_search_locations
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    return Path(spec.origin)


def _module_names_of(file: Path, what: str) -> tuple[set[str], bool] | str:
    """A module file's top-level names (``_module_names``), or why it cannot be read. Kept
    while the file is unchanged: a pipeline's steps name a few modules many times (10,000
    steps parsed one 10,000 times)."""
    try:
        info = file.stat()
    except OSError:
        return _module_names_read(file, what, 0, 0)
    return _module_names_read(file, what, info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=256)
def _module_names_read(file: Path, what: str, _mtime: int, _size: int) -> tuple[set[str], bool] | str:
    try:
        source = read_regular(file, f"{what} module")
    except RuninkError as exc:
        return str(exc)
    try:
        tree = ast.parse(source, str(file))  # (bytes: a PEP 263 coding line is honoured, as Python does)
    except SyntaxError as exc:
        return f"{file}:{exc.lineno}: syntax error: {exc.msg}"
    except (MemoryError, RecursionError, ValueError) as exc:  # nested too deep; a NUL byte
        return f"{file}: Python cannot parse it ({type(exc).__name__})"
    return _module_names(tree.body)


def _check_reference(ref: str, base_dir: Path, at: Location, what: str, kinds: object) -> None:
    module, sep, attribute = ref.partition(":")
    if not sep or not module or not attribute.isidentifier():
        raise DslError(at, f"{what} {ref!r}: expected 'module:{'Class' if what == 'contract' else 'function'}'")
    file = _find_module_file(module, base_dir)
    if file is None:
        raise DslError(at, f"{what} {ref!r}: module {module!r} not found in {base_dir} or on sys.path")
    if file.suffix != ".py":
        return  # compiled extension: cannot inspect without importing; the slice will tell
    found = _module_names_of(file, what)
    if isinstance(found, str):
        raise DslError(at, f"{what} {ref!r}: {found}")
    defined, starred = found
    if attribute not in defined and not starred:  # (a `from x import *` may bring it: the slice tells)
        raise DslError(at, f"{what} {ref!r}: {file.name} defines no {attribute!r}")


def _module_names(body: list[ast.stmt]) -> tuple[set[str], bool]:
    """The names a module's code binds at its top level, in blocks too (``if``, ``try``,
    ``with``, ``for``: a function defined under ``if sys.version_info...`` is the module's),
    and whether it star-imports (then any name may be its)."""
    defined: set[str] = set()
    starred = False
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For | ast.With):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For):
                targets = [node.target]
            elif isinstance(node, ast.With):
                targets = [item.optional_vars for item in node.items if item.optional_vars is not None]
            for target in targets:
                defined.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            starred = starred or any(alias.name == "*" for alias in node.names)
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue  # (its body's names are its own)
        for block in ("body", "orelse", "finalbody", "handlers"):  # (if, try, with, for, while)
            inner = getattr(node, block, None)
            if isinstance(inner, list) and inner:
                if block == "handlers":
                    inner = [statement for handler in inner for statement in handler.body]
                names, star = _module_names(inner)
                defined |= names
                starred = starred or star
    return defined, starred
