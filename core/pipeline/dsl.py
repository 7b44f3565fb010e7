"""The .dsl language: a Gherkin-style dialect with annotations (reference: docs/dsl.md).

    @herd("finance")
    Feature: Orders to silver

      @requires(cpu=1, memory="256Mi", timeout="10m")
      Scenario: Validate orders
        @source("csv://data/orders.csv", contract="contracts:Order")
        @step("steps:normalize")
        @sink("parquet://out/silver/orders.parquet")
        @sink("jsonl://out/dlq/orders.jsonl", when="invalid")
        Given orders arrive as CSV

Grammar (one construct per line; ``#`` starts a comment line):

    file        = { annotation } "Feature:" name { text } { scenario }
    scenario    = { annotation } "Scenario:" name { annotation | keyword-line }
    annotation  = "@" name [ "(" arguments ")" ]     arguments: Python literals, positional then key=value
    keyword-line= ("Given" | "When" | "Then" | "And" | "But") text

Annotations before ``Feature:`` apply to the pipeline; those right above a ``Scenario:`` line
(not indented deeper than it) or inside its body to that scenario. Errors name
``file:line:column`` and what was expected.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runink.core.errors import RuninkError
from runink.core.interfaces.secrets import MAX_TASK_SECRETS, SECRET_NAME
from runink.core.pipeline.model import (
    AnnotateStep,
    CommandStep,
    Location,
    Pipeline,
    Requirements,
    Scenario,
    Sink,
    Source,
    StepRef,
)
from runink.core.project_files import read_regular
from runink.core.units import check_name, parse_duration


class DslError(RuninkError):
    """A .dsl file is malformed or does not compile; the message starts with file:line:column."""

    exit_code = 2

    def __init__(self, at: Location, message: str) -> None:
        super().__init__(f"{at}: {message}")
        self.at = at
        self.detail = message


KEYWORDS = ("Given", "When", "Then", "And", "But")
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # an @annotate field: a column of the output
_ANNOTATION_RE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")


# Signatures of the annotations: binding the parsed arguments to these gives the checks
# (missing, unexpected or duplicated arguments) and their messages.
def _herd(name: str) -> None: ...
def _source(uri: str, contract: str | None = None, **options: Any) -> None: ...
def _step(ref: str) -> None: ...
def _run(command: str, shell: bool = False, format: str = "csv") -> None: ...
def _sink(uri: str, when: str = "valid", **options: Any) -> None: ...
def _requires(
    cpu: float = 1, memory: str | int = 0, gpu: int = 0, timeout: str | float | None = None, pids: int = 0
) -> None: ...
def _affinity(label: str | list[str] | None = None, colocate_with: str | None = None) -> None: ...
def _retries(n: int, backoff: str | float = "1s") -> None: ...
def _golden(directory: str) -> None: ...
def _network() -> None: ...
def _secrets(*names: str, env: bool = False) -> None: ...
def _annotate(prompt: str, fields: list[str], model: str | None = None, columns: list[str] | None = None) -> None: ...


SIGNATURES: dict[str, Callable[..., None]] = {
    "herd": _herd,
    "source": _source,
    "step": _step,
    "run": _run,
    "sink": _sink,
    "requires": _requires,
    "affinity": _affinity,
    "retries": _retries,
    "golden": _golden,
    "network": _network,
    "secrets": _secrets,
    "annotate": _annotate,
}
FEATURE_ANNOTATIONS = {"herd", "requires", "retries", "network"}
SCENARIO_ANNOTATIONS = set(SIGNATURES) - {"herd"}


@dataclass
class Annotation:
    name: str
    args: dict[str, Any]
    at: Location


MAX_DSL_BYTES = 16 << 20  # a .dsl file, at most (the parser holds a few times its size)


def parse_file(path: Path | str) -> Pipeline:
    path = Path(path)
    data = read_regular(path, "pipeline file", limit=MAX_DSL_BYTES)  # (no FIFO, no /dev/zero)
    try:
        text = data.decode("utf-8-sig")  # (a BOM, as some editors write, is no text of the pipeline)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DslError(Location(str(path), line, 1), f"not UTF-8 text ({exc.reason})") from None
    return parse(text, path)


#: characters Python's str.splitlines() breaks lines at, besides \n and \r\n: an editor may
#: show a new line where grep and a reviewer's diff show one line (a comment there hid an
#: @secrets annotation), so a .dsl may not hold them
_OTHER_BREAKS = re.compile("\r(?!\n)|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _check_line_breaks(text: str, name: str) -> None:
    found = _OTHER_BREAKS.search(text)
    if found is not None:
        line = text.count("\n", 0, found.start()) + 1
        column = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
        code = f"U+{ord(found.group()):04X}"
        raise DslError(Location(name, line, column), f"a line break other than \\n ({code}): write one \\n, or none")


def parse(text: str, path: Path | str = "<string>") -> Pipeline:
    """Parse .dsl text into a Pipeline (not yet compiled: paths and references are unchecked)."""
    file = Path(path)
    name = str(path)
    pending: list[Annotation] = []
    feature: Pipeline | None = None
    feature_requires = Requirements()
    feature_retries: tuple[int, float] = (0, 1.0)
    feature_network = False
    scenarios: list[Scenario] = []
    current: Scenario | None = None
    feature_text: list[str] = []

    def flush_scenario() -> None:
        nonlocal current
        if current is not None:
            scenarios.append(current)
            current = None

    _check_line_breaks(text, name)
    for number, line_read in enumerate(text.split("\n"), start=1):
        raw_line = line_read.removesuffix("\r")
        stripped = raw_line.strip()
        column = len(raw_line) - len(raw_line.lstrip()) + 1
        at = Location(name, number, column)
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("@"):
            # Held until the next line that is not an annotation says whose it is: a
            # 'Scenario:' line takes those above it (see _split_pending), anything else
            # leaves them in the current scenario's body.
            pending.append(_parse_annotation(stripped, at))
            continue
        keyword, sep, rest = stripped.partition(":")
        if sep and keyword == "Feature":
            if feature is not None:
                raise DslError(at, "a file holds one Feature; found a second one")
            if not rest.strip():
                raise DslError(at, "Feature needs a name: 'Feature: <name>'")
            feature = Pipeline(name=rest.strip(), base_dir=file.parent.resolve(), file=file, at=at)
            for annotation in pending:
                if annotation.name not in FEATURE_ANNOTATIONS:
                    raise DslError(annotation.at, f"@{annotation.name} belongs to a Scenario, not the Feature")
                if annotation.name == "herd":
                    try:
                        herd = check_name(str(annotation.args["name"]), "herd")
                    except ValueError as exc:
                        raise DslError(annotation.at, f"@herd: {exc}") from None
                    feature = replace(feature, herd=herd)
                elif annotation.name == "requires":
                    feature_requires = _requirements(annotation, feature_requires)
                elif annotation.name == "retries":
                    feature_retries = _retries_of(annotation)
                elif annotation.name == "network":
                    feature_network = True
            pending = []
            continue
        if sep and keyword == "Scenario":
            if feature is None:
                raise DslError(at, "Scenario before Feature: start the file with 'Feature: <name>'")
            if not rest.strip():
                raise DslError(at, "Scenario needs a name: 'Scenario: <name>'")
            if current is not None:
                body, pending = _split_pending(pending, column)
                for annotation in body:
                    current = _apply(current, annotation)
            flush_scenario()
            scenario_name = rest.strip()
            if any(s.name == scenario_name for s in scenarios):
                raise DslError(at, f"duplicate scenario name {scenario_name!r}")
            current = Scenario(
                scenario_name,
                requires=feature_requires,
                retries=feature_retries[0],
                backoff=feature_retries[1],
                network=feature_network,
                at=at,
            )
            for annotation in pending:
                current = _apply(current, annotation)
            pending = []
            continue
        if current is not None:
            for annotation in pending:
                current = _apply(current, annotation)
            pending = []
        first_word = stripped.split(None, 1)[0]
        if first_word in KEYWORDS:
            if current is None:
                raise DslError(at, f"'{first_word}' line outside a Scenario")
            current = replace(current, description=(*current.description, stripped))
            continue
        if feature is not None and current is None and not pending:
            if sep and difflib.get_close_matches(keyword, ["Scenario", "Feature"], n=1, cutoff=0.75):
                hint = _suggest(keyword, ["Scenario", "Feature"])
                raise DslError(at, f"unknown keyword {keyword + ':'!r}{hint}")
            feature_text.append(stripped)
            continue
        hint = _suggest(first_word.rstrip(":"), ["Feature", "Scenario", *KEYWORDS])
        raise DslError(
            at, f"unexpected text {stripped[:40]!r}: expected an @annotation, 'Scenario:' or Given/When/Then{hint}"
        )
    if current is not None:  # the last scenario's trailing annotations are its own
        for annotation in pending:
            current = _apply(current, annotation)
        pending = []
    flush_scenario()
    if feature is None:
        raise DslError(Location(name, 1, 1), "no Feature: a pipeline file starts with 'Feature: <name>'")
    if pending:
        raise DslError(pending[0].at, f"@{pending[0].name} is not followed by a Scenario")
    if not scenarios:
        raise DslError(feature.at, "the Feature has no Scenario")
    return replace(feature, scenarios=tuple(scenarios), description=tuple(feature_text))


def _split_pending(pending: list[Annotation], scenario_column: int) -> tuple[list[Annotation], list[Annotation]]:
    """Annotations between a scenario's body and the next 'Scenario:' line: (the body's, the next one's).

    The next scenario gets the run of annotations right above its 'Scenario:' line that are
    not indented deeper than it; an annotation indented deeper is in the body above.
    """
    split = len(pending)
    while split > 0 and pending[split - 1].at.column <= scenario_column:
        split -= 1
    return pending[:split], pending[split:]


def _suggest(word: str, options: list[str]) -> str:
    if len(word) > 64:  # (no keyword is that long; difflib on a whole megabyte line held gigabytes)
        return ""
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_annotation(text: str, at: Location) -> Annotation:
    match = _ANNOTATION_RE.match(text)
    if not match:
        raise DslError(at, f"invalid annotation {text[:40]!r}: expected @name(arguments)")
    name = match.group(1)
    if name not in SIGNATURES:
        hint = _suggest(name, list(SIGNATURES))
        raise DslError(at, f"unknown annotation @{name}{hint}; known: {', '.join('@' + n for n in SIGNATURES)}")
    rest = text[match.end() :].strip()
    if rest.startswith("#"):
        rest = ""
    call = f"f{rest}" if rest else "f()"
    try:
        tree = ast.parse(call, mode="eval")
    except (RecursionError, MemoryError):  # (nested past what the parser takes: not a SyntaxError)
        raise DslError(at, f"@{name}: its arguments are nested too deeply") from None
    except SyntaxError as exc:
        # a trailing comment after the closing parenthesis
        if "#" in rest:
            try:
                tree = ast.parse(f"f{rest[: rest.rindex('#')].strip()}", mode="eval")
            except (SyntaxError, RecursionError, MemoryError):
                raise _syntax_error(exc, at, match.end(), name) from None
        else:
            raise _syntax_error(exc, at, match.end(), name) from None
    node = tree.body
    if not isinstance(node, ast.Call):
        raise DslError(at, f"@{name}: expected @{name}(arguments)")
    try:
        args = [ast.literal_eval(arg) for arg in node.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
    except (ValueError, TypeError, MemoryError, RecursionError):  # ({[]: 1}: a literal that cannot be built)
        raise DslError(at, f"@{name}: arguments must be literals (strings, numbers, lists, True/False)") from None
    if any(kw.arg is None for kw in node.keywords):
        raise DslError(at, f"@{name}: **arguments are not allowed")
    if _has_surrogate([args, kwargs]):
        raise DslError(at, f"@{name}: a string holds half of a UTF-16 pair (a \\ud800-\\udfff escape): no character")
    try:
        bound = inspect.signature(SIGNATURES[name]).bind(*args, **kwargs)
    except TypeError as exc:
        raise DslError(at, f"@{name}: {exc}") from None
    values = dict(bound.arguments)
    _check_types(name, values, at)
    extra = values.pop("options", {})
    return Annotation(name, {**values, **extra, **({"options": extra} if extra else {})}, at)


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return _has_surrogate(list(value.keys())) or _has_surrogate(list(value.values()))
    if isinstance(value, list | tuple | set | frozenset):
        return any(_has_surrogate(v) for v in value)
    return False


# the annotations whose arguments are checked here by their signature's types; the others
# (@requires, @run, @retries, @secrets, @annotate) check their own, with messages of their own
TYPED_HERE = {"herd", "source", "step", "sink", "affinity", "golden"}


def _check_types(name: str, values: dict[str, Any], at: Location) -> None:
    """Each argument of the type its signature names (``contract=5`` or ``label=5`` broke the
    compiler with a TypeError), and no text holding a NUL byte (no file name can)."""
    hints = typing.get_type_hints(SIGNATURES[name]) if name in TYPED_HERE else {}
    parameters = inspect.signature(SIGNATURES[name]).parameters
    for key, value in values.items():
        kind = parameters[key].kind
        hint = hints.get(key, Any)
        if kind is inspect.Parameter.VAR_KEYWORD:
            hint = Any  # (a source's or sink's options: its driver checks them)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            hint = list[hint]  # type: ignore[valid-type]
        if not _of_type(value, hint):
            raise DslError(at, f"@{name}: {key}={value!r} is not {_type_name(hint)}")
        if _has_nul(value):
            raise DslError(at, f"@{name}: {key} contains a NUL byte")


def _of_type(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_of_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list | tuple) and all(_of_type(item, args[0] if args else Any) for item in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    names = {str: "text", int: "a whole number", float: "a number", bool: "True or False", type(None): "None"}
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return names.get(hint, str(hint))


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


def _syntax_error(exc: SyntaxError, at: Location, offset: int, name: str) -> DslError:
    column = at.column + offset + max(0, (exc.offset or 1) - 2)
    return DslError(replace(at, column=column), f"@{name}: invalid arguments: {exc.msg}")


def _requirements(annotation: Annotation, base: Requirements) -> Requirements:
    try:
        return Requirements.parse({k: v for k, v in annotation.args.items() if k != "options"}, base)
    except (ValueError, TypeError) as exc:
        raise DslError(annotation.at, f"@requires: {exc}") from None


def _retries_of(annotation: Annotation) -> tuple[int, float]:
    n = annotation.args["n"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DslError(annotation.at, f"@retries: n must be a whole number >= 0, got {n!r}")
    try:
        backoff = parse_duration(annotation.args.get("backoff", "1s"))
    except ValueError as exc:
        raise DslError(annotation.at, f"@retries: backoff: {exc}") from None
    return n, backoff


def _with_secrets(scenario: Scenario, a: Annotation) -> Scenario:
    """``@secrets("name", ..., env=False)``: the herd's secrets the scenario's slice receives,
    as files in ``$RUNINK_FILES`` (and, with ``env=True``, as environment variables too)."""
    names, env = a.args.get("names", ()), a.args.get("env", False)
    if not names:
        raise DslError(a.at, "@secrets: name at least one secret")
    for name in names:
        if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
            raise DslError(a.at, f"@secrets: {name!r} is not a secret name (1-128 letters, digits, '.', '_' or '-')")
    if not isinstance(env, bool):
        raise DslError(a.at, f"@secrets: env must be True or False, got {env!r}")
    if scenario.secrets and env != scenario.secrets_env:
        # (one flag for the slice: env=True on one @secrets put every secret in its environment)
        raise DslError(
            a.at,
            f"@secrets: env={env} here, env={scenario.secrets_env} on this scenario's other @secrets: "
            "its secrets are all files, or all variables too (give them the same env)",
        )
    merged = (*scenario.secrets, *(n for n in names if n not in scenario.secrets))
    if len(merged) > MAX_TASK_SECRETS:
        raise DslError(a.at, f"@secrets: {len(merged)} secrets, at most {MAX_TASK_SECRETS} per scenario")
    return replace(scenario, secrets=merged, secrets_env=scenario.secrets_env or env)


def _annotation_step(a: Annotation) -> AnnotateStep:
    """``@annotate(prompt, fields, model=None, columns=None)``, its arguments checked."""
    prompt, fields, model, columns = a.args["prompt"], a.args["fields"], a.args.get("model"), a.args.get("columns")
    if not isinstance(prompt, str) or not prompt:
        raise DslError(a.at, f"@annotate: prompt must be the path of a prompt file, got {prompt!r}")
    if not isinstance(fields, list) or not fields:
        raise DslError(a.at, f"@annotate: fields must be a list of field names, got {fields!r}")
    for name in fields:
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            raise DslError(a.at, f"@annotate: field {name!r} is not a name (letters, digits, '_'; not first a digit)")
    if len(set(fields)) != len(fields):
        raise DslError(a.at, f"@annotate: a field is named twice in {fields!r}")
    if model is not None and (not isinstance(model, str) or not model):
        raise DslError(a.at, f"@annotate: model must be a model's name, got {model!r}")
    if columns is not None and not (
        isinstance(columns, list) and columns and all(isinstance(c, str) and c for c in columns)
    ):
        raise DslError(a.at, f"@annotate: columns must be a list of column names, got {columns!r}")
    return AnnotateStep(prompt, tuple(fields), model, None if columns is None else tuple(columns), a.at)


#: steps and sinks of one scenario, at most (a slice runs them in one process; the parser
#: copied the list at each one: 40,000 steps took 7 s)
MAX_STEPS = MAX_SINKS = 1000


def _apply(scenario: Scenario, annotation: Annotation) -> Scenario:
    a, args = annotation, annotation.args
    if a.name not in SCENARIO_ANNOTATIONS:
        raise DslError(a.at, f"@{a.name} belongs before 'Feature:', not in a Scenario")
    if a.name in ("step", "run", "annotate") and len(scenario.steps) >= MAX_STEPS:
        raise DslError(a.at, f"scenario {scenario.name!r}: more than {MAX_STEPS} steps")
    if a.name == "sink" and len(scenario.sinks) >= MAX_SINKS:
        raise DslError(a.at, f"scenario {scenario.name!r}: more than {MAX_SINKS} sinks")
    if a.name == "source":
        if scenario.source is not None:
            raise DslError(a.at, f"scenario {scenario.name!r} has a second @source (one source per scenario)")
        return replace(scenario, source=Source(str(args["uri"]), args.get("contract"), args.get("options", {}), a.at))
    if a.name == "step":
        return replace(scenario, steps=(*scenario.steps, StepRef(str(args["ref"]), a.at)))
    if a.name == "run":
        command, shell, fmt = args["command"], args.get("shell", False), args.get("format", "csv")
        if not isinstance(command, str):
            raise DslError(a.at, f"@run: the command must be a string, got {command!r}")
        if not isinstance(shell, bool):
            raise DslError(a.at, f"@run: shell must be True or False, got {shell!r}")
        if not isinstance(fmt, str):
            raise DslError(a.at, f"@run: format must be a string (csv, jsonl, parquet...), got {fmt!r}")
        return replace(scenario, steps=(*scenario.steps, CommandStep(command, shell, fmt, a.at)))
    if a.name == "annotate":
        return replace(scenario, steps=(*scenario.steps, _annotation_step(a)))
    if a.name == "sink":
        when = args.get("when", "valid")
        if when not in ("valid", "invalid"):
            raise DslError(a.at, f"@sink: when must be 'valid' or 'invalid', got {when!r}")
        return replace(scenario, sinks=(*scenario.sinks, Sink(str(args["uri"]), when, args.get("options", {}), a.at)))
    if a.name == "requires":
        return replace(scenario, requires=_requirements(a, scenario.requires))
    if a.name == "affinity":
        labels = dict(scenario.node_labels)
        raw = args.get("label")
        for item in [raw] if isinstance(raw, str) else (raw or []):
            key, eq, value = str(item).partition("=")
            if not eq or not key.strip():
                raise DslError(a.at, f"@affinity: label must be 'key=value', got {item!r}")
            labels[key.strip()] = value.strip()
        colocate = args.get("colocate_with")
        if colocate is not None:
            if not str(colocate).startswith("scenario:"):
                raise DslError(a.at, f"@affinity: colocate_with must be 'scenario:<name>', got {colocate!r}")
            colocate = str(colocate)[len("scenario:") :].strip()
        return replace(scenario, node_labels=labels, colocate_with=colocate or scenario.colocate_with)
    if a.name == "retries":
        retries, backoff = _retries_of(a)
        return replace(scenario, retries=retries, backoff=backoff)
    if a.name == "golden":
        return replace(scenario, golden=str(args["directory"]))
    if a.name == "network":
        return replace(scenario, network=True)
    if a.name == "secrets":
        return _with_secrets(scenario, a)
    raise AssertionError(a.name)  # pragma: no cover - SIGNATURES and this function agree
