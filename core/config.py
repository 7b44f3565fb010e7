"""Configuration: one validated model read from a TOML file and RUNINK_* environment variables.

Precedence, lowest to highest:

1. built-in defaults (the model below);
2. the config file: ``--config PATH``, else ``$RUNINK_CONFIG``, else ``./runink.toml``, else
   ``$XDG_CONFIG_HOME/runink/config.toml`` (``~/.config/runink/config.toml``); only the first
   one found is read;
3. environment variables: ``RUNINK_<KEY>`` for a top-level key and ``RUNINK_<TABLE>__<KEY>``
   for a nested one (``RUNINK_EXECUTOR__DRIVER=linux``); list values are comma-separated.
   Short names are kept for plugin control: ``RUNINK_DISABLE_PLUGINS``,
   ``RUNINK_LOAD_PLUGINS`` and ``RUNINK_TRACE_PLUGINS`` (= ``plugins.disable``,
   ``plugins.load``, ``plugins.trace``), and ``RUNINK_SERVER`` (= ``cluster.server``);
4. command-line flags of a command (e.g. ``runink run --set executor.driver=process``).

Every error names the key and where its value came from (``runink.toml:12`` or the variable).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from runink.core.errors import ConfigError
from runink.core.units import MAX_MEMORY, MAX_PIDS, parse_duration, parse_memory

ENV_PREFIX = "RUNINK_"
#: environment variables that are not config keys (read elsewhere).
# (the raft Barn's commands read the RUNINK_BARN_* ones: `runink barn serve/status/member`)
ENV_NOT_KEYS = {
    "RUNINK_CONFIG",
    "RUNINK_DEBUG",
    "RUNINK_TOKEN",
    "RUNINK_BARN_SECRET_FILE",
    "RUNINK_BARN_TLS_CA",
    "RUNINK_BARN_TLS_CERT",
    "RUNINK_BARN_TLS_KEY",
}
ENV_ALIASES = {
    "RUNINK_DISABLE_PLUGINS": "plugins.disable",
    "RUNINK_LOAD_PLUGINS": "plugins.load",
    "RUNINK_TRACE_PLUGINS": "plugins.trace",
    "RUNINK_SERVER": "cluster.server",
}


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/runink``, else ``~/.local/share/runink``: one place for everything runs
    leave, whatever folder they were started from (a read-only one included)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "runink"


def _absolute(value: list[Path]) -> list[Path]:
    for path in value:
        if not path.is_absolute():
            raise ValueError(f"{str(path)!r} is not an absolute path")
    return value


#: folders given by absolute path ([paths] allow, [cluster] shared_paths)
AbsolutePaths = Annotated[list[Path], AfterValidator(_absolute)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PluginsConfig(_Section):
    disable: list[str] = Field(
        default_factory=list,
        description="Plugins not to load: hook plugin names, driver names or GROUP:NAME.",
    )
    load: list[str] | None = Field(
        default=None,
        description="Allow-list: when set, only these third-party plugins load (built-in ones always do).",
    )
    trace: bool = Field(default=False, description="Log every hook call and its result to stderr.")


class DriverChoice(_Section):
    """A section that chooses a driver: every one names it with ``driver`` and builds it with ``options``."""

    driver: str | None
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the driver.")


class ExecutorConfig(DriverChoice):
    driver: str = Field(
        default="auto",
        description='"auto": the first driver of prefer that is healthy and isolates here, else the first healthy one.',
    )
    prefer: list[str] = Field(
        default_factory=lambda: ["linux", "process"],
        min_length=1,
        description='The drivers "auto" considers, in order (each judged by its own fingerprint and capabilities).',
    )


class SchedulerConfig(DriverChoice):
    driver: str = Field(default="spread", description="The scheduler policy (runink.scheduler_policies).")
    weights: dict[str, float] = Field(
        default_factory=dict, description="Weight of each score plugin's scores (default 1)."
    )


class BarnConfig(DriverChoice):
    driver: str = Field(default="memory", description="The Barn backend (runink.barn_backends).")


class SecretsConfig(DriverChoice):
    driver: str | None = Field(default=None, description="The secret backend (runink.secret_backends), if any.")


class AnnotatorConfig(DriverChoice):
    driver: str | None = Field(default=None, description="The annotator (runink.annotators), if any.")


#: section -> the key that named its driver before every section used ``driver`` (still read, with a warning)
DEPRECATED_DRIVER_KEYS = {"scheduler": "policy", "barn": "backend", "secrets": "backend"}


def duration_or_none(value: str | int) -> float | None:
    """Seconds from a duration ("30d", "1h"), or None for 0 ("no bound"); ValueError naming it."""
    return None if value in (0, "0") else parse_duration(value)


def _duration_or_zero(value: str | int) -> str | int:
    duration_or_none(value)
    return value


def _size_or_zero(value: str | int) -> str | int:
    if not 0 <= parse_memory(value) <= MAX_MEMORY:
        raise ValueError(f"must be at most 1Ei bytes, got {value!r}")
    return value


#: a duration ("30d", "1h") or 0 (no bound), kept as written
DurationOrZero = Annotated[str | int, AfterValidator(_duration_or_zero)]
#: a size ("5GiB", "500Mi", bytes) or 0 (no bound), kept as written
SizeOrZero = Annotated[str | int, AfterValidator(_size_or_zero)]


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "warning"
    format: Literal["auto", "text", "json"] = Field(
        default="auto",
        description="Runink's own log lines on stderr: text, one JSON object a line, or auto (JSON for "
        "runink server, agent and barn serve when their stderr is not a terminal, text otherwise).",
    )
    slice_output: bool = Field(
        default=False,
        description="Hand every line slices print to the log exporters (runink_export_log: the fluentd "
        "plugin ships them), with herd, job, task, step and node; they are in each task's log files anyway.",
    )


class HerdConfig(_Section):
    drift: Literal["warn", "block"] = Field(
        default="warn", description="What schema drift against a contract does: warn, or block the scenario."
    )


class LimitsConfig(_Section):
    """Limits of every slice whose ``@requires`` does not set them (a scenario may ask for more)."""

    pids: int = Field(default=1024, ge=1, le=MAX_PIDS, description="Processes and threads per slice.")
    memory: str | int = Field(default="2GiB", description='Memory per slice: "2GiB", "512Mi" or bytes.')

    @field_validator("memory")
    @classmethod
    def _memory_parses(cls, value: str | int) -> str | int:
        if not 0 < parse_memory(value) <= MAX_MEMORY:
            raise ValueError(f"must be more than 0 and at most 1Ei bytes, got {value!r}")
        return value

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)


class PathsConfig(_Section):
    allow: AbsolutePaths = Field(
        default_factory=list,
        description="Folders outside a pipeline's own that its sources and sinks may use (absolute paths).",
    )


class ClusterConfig(_Section):
    server: str | None = Field(
        default=None,
        description="The cluster's API, HOST:PORT[,HOST:PORT...], for exec, jobs, status, herd, nodes "
        "(else $RUNINK_SERVER, else the cluster `runink up` started).",
    )
    ca: str | None = Field(
        default=None,
        description="The cluster CA's certificate (PEM) the CLI checks an https:// server against "
        "(else the one of the cluster `runink up` started, else the system's).",
    )
    shared_paths: AbsolutePaths = Field(
        default_factory=list,
        description="Folders every node sees alike (a shared filesystem; absolute paths): `runink submit` "
        "places a scenario reading a dataset another scenario wrote anywhere when it is under one, else on "
        "the node that wrote it.",
    )
    audit_keep_for: DurationOrZero = Field(
        default="365d",
        description='How long servers keep the audit log\'s records: "365d", "90d" (whole days: a record goes '
        "once its day is older; 0: kept as long as the Barn is). The leading server removes older ones hourly.",
    )

    @property
    def audit_keep_seconds(self) -> float | None:
        """None: no bound."""
        return duration_or_none(self.audit_keep_for)


def _duration(value: str | int) -> str | int:
    parse_duration(value)
    return value


#: a positive duration ("30s", "5m"), kept as written
Duration = Annotated[str | int, AfterValidator(_duration)]


class ScalingConfig(DriverChoice):
    """The autoscaler the leading server runs (issue 23; docs/cluster.md, Autoscaling): nodes
    added while tasks wait for room, idle ones drained and removed. Off unless a driver is named."""

    driver: str | None = Field(
        default=None, description='The scaler that starts and stops nodes (runink.scalers; "local": `runink up`).'
    )
    min_nodes: int = Field(default=0, ge=0, le=10_000, description="Nodes the scaler keeps at least.")
    max_nodes: int = Field(default=10, ge=0, le=10_000, description="Nodes the scaler starts at most.")
    pending_per_node: int = Field(
        default=4,
        ge=1,
        le=100_000,
        description="Waiting tasks one added node is counted to take: tasks that fit no node add "
        "ceil(waiting / this) nodes at once.",
    )
    scale_down_idle: Duration = Field(
        default="5m", description="How long a node runs no task before it is drained and removed."
    )
    cooldown: Duration = Field(default="1m", description="The least time between two scaling actions.")
    drain_grace: Duration = Field(
        default="10m",
        description="How long a node picked for removal may finish its tasks; then its agent is stopped, "
        "which gives the rest back to be placed elsewhere.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ScalingConfig:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes {self.min_nodes} is more than max_nodes {self.max_nodes}")
        return self


class AdmissionConfig(_Section):
    """What a server admits (issue 23): per-job bounds and each herd's submission rate, the
    cluster's defaults (a herd's own, `runink herd create --max-job-cpu ...`, win). 0: no bound."""

    max_cpu: float = Field(default=0.0, ge=0, le=4096, description="Cores any one task of a job may ask for.")
    max_memory: SizeOrZero = Field(default=0, description='Memory any one task may ask for: "32Gi" (0: no bound).')
    max_gpu: int = Field(default=0, ge=0, le=1024, description="GPUs any one task may ask for.")
    max_timeout: DurationOrZero = Field(
        default=0, description='The longest timeout a task may ask for: "1h" (0: no bound).'
    )
    rate: float = Field(
        default=0.0,
        ge=0,
        le=1_000_000,
        description="Jobs per second each herd may submit (a token bucket; 0: no limit).",
    )
    burst: int = Field(default=20, ge=1, le=1_000_000, description="Jobs a herd may submit at once past its rate.")


class CostConfig(_Section):
    """What a job's resources cost, to estimate its worst case at admission and price what its
    tasks used ($RUNINK_COST__CPU_SECOND...; seed 004's defaults)."""

    cpu_second: float = Field(default=0.000048, ge=0, le=1e6, description="Per cpu-second.")
    gb_second: float = Field(default=0.000006, ge=0, le=1e6, description="Per GB-second of memory (10^9 bytes).")
    gpu_second: float = Field(default=0.00028, ge=0, le=1e6, description="Per GPU-second.")
    currency: str = Field(default="USD", pattern=r"^[A-Za-z$€£¥]{1,8}$", description="What the rates are in.")


class MetricsConfig(_Section):
    address: str | None = Field(
        default=None,
        pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}$",
        description="HOST:PORT where runink server, agent, barn serve or run serves /metrics for Prometheus "
        "(off when unset; their --metrics, run's --metrics-port; other commands ignore it). Plain HTTP: "
        "keep it on loopback or a network you trust.",
    )


class RunConfig(_Section):
    max_parallel: int = Field(default=0, ge=0, description="Scenarios run at once by `runink run` (0: one per cpu).")
    fail_on_invalid: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="A scenario whose invalid rows pass this percent of the rows it read fails, its outputs "
        "not published (--fail-on-invalid of runink run; unset: invalid rows never fail a scenario).",
    )
    keep_for: DurationOrZero = Field(
        default="30d",
        description='Past runs (their logs and records under the data dir) started longer ago than this go: "30d", '
        '"12h" (0: kept whatever their age). Applied after each run and by `runink jobs prune`.',
    )
    keep_size: SizeOrZero = Field(
        default="5GiB",
        description='Past runs go, oldest first, while all runs take more than this: "5GiB", "500Mi" (0: no bound).',
    )

    @property
    def keep_for_seconds(self) -> float | None:
        """None: no bound on age."""
        return duration_or_none(self.keep_for)

    @property
    def keep_size_bytes(self) -> int | None:
        """None: no bound on size."""
        return parse_memory(self.keep_size) or None


class RuninkConfig(_Section):
    """The whole configuration. ``sources`` maps each dotted key that was set to where it came from."""

    herd: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where local state is kept: runs' work dirs and slice logs, lineage, the catalog "
        "($RUNINK_DATA_DIR; default $XDG_DATA_HOME/runink, ~/.local/share/runink), never the current folder.",
    )
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    barn: BarnConfig = Field(default_factory=BarnConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    annotator: AnnotatorConfig = Field(default_factory=AnnotatorConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    herds: dict[str, HerdConfig] = Field(default_factory=dict, description="Per-herd policies ([herds.NAME]).")
    plugin: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options of each plugin, by plugin name ([plugin.NAME])."
    )

    # Not configuration: where each value came from, for error messages and `runink config show`.
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _file: Path | None = PrivateAttr(default=None)

    @property
    def sources(self) -> dict[str, str]:
        """Each dotted key that was set, mapped to ``FILE:LINE``, ``$VAR`` or ``--set KEY``."""
        return self._sources

    @property
    def file(self) -> Path | None:
        """The config file that was read, if any."""
        return self._file

    def herd_policy(self, herd: str) -> HerdConfig:
        return self.herds.get(herd, HerdConfig())

    def plugin_options(self, name: str) -> dict[str, Any]:
        """The ``[plugin.NAME]`` table, or an empty dict."""
        return dict(self.plugin.get(name, {}))

    def source_of(self, dotted_key: str) -> str:
        """Where a key's value came from: ``FILE:LINE``, ``$VAR``, ``--set`` or ``default``."""
        parts = dotted_key.split(".")
        for end in range(len(parts), 0, -1):
            found = self.sources.get(".".join(parts[:end]))
            if found:
                return found
        return "default"


def default_config_path(cwd: Path | None = None) -> Path | None:
    """The config file that would be read when none is named explicitly."""
    if env := os.environ.get("RUNINK_CONFIG"):
        return Path(env)
    local = (cwd or Path.cwd()) / "runink.toml"
    if local.exists():
        return local
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user = xdg / "runink" / "config.toml"
    return user if user.exists() else None


def load_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> RuninkConfig:
    """Read, merge and validate the configuration (see the module docstring for precedence).

    ``overrides`` are ``dotted.key -> value`` pairs from command-line flags.
    Raises ConfigError naming the key and its source.
    """
    environ = os.environ if environ is None else environ
    explicit = path is not None or "RUNINK_CONFIG" in environ
    if path is None and "RUNINK_CONFIG" in environ:
        path = environ["RUNINK_CONFIG"]
    file = Path(path) if path is not None else default_config_path()

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file is not None:
        if not file.exists():
            if explicit:
                raise ConfigError(f"config file {file} does not exist")
        else:
            _merge_file(file, merged, sources)
    _merge_env(environ, merged, sources)
    for key, raw in (overrides or {}).items():
        _set_dotted(merged, key, _coerce_text(key, raw), sources, "--set " + key)
    _rename_deprecated_keys(merged, sources)

    try:
        config = RuninkConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, sources)) from None
    config._sources = sources
    config._file = file if file is not None and file.exists() else None
    return config


def _rename_deprecated_keys(merged: dict[str, Any], sources: dict[str, str]) -> None:
    """``scheduler.policy``, ``barn.backend`` and ``secrets.backend`` -> ``SECTION.driver``, with a
    warning naming where the old key was set; both keys set is an error."""
    for section, old in DEPRECATED_DRIVER_KEYS.items():
        table = merged.get(section)
        if not isinstance(table, dict) or old not in table:
            continue
        origin = sources.pop(f"{section}.{old}", "?")
        if "driver" in table:
            raise ConfigError(
                f"{origin}: {section}.{old} and {section}.driver both set "
                f"(set at {sources.get(section + '.driver', '?')}); keep {section}.driver"
            )
        table["driver"] = table.pop(old)
        sources[f"{section}.driver"] = origin
        warnings.warn(f"{origin}: {section}.{old} is deprecated: use {section}.driver", FutureWarning, stacklevel=3)


def _merge_file(file: Path, merged: dict[str, Any], sources: dict[str, str]) -> None:
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    lines = _key_lines(text)
    for dotted, value in _flatten(data):
        line = lines.get(dotted) or lines.get(dotted.rsplit(".", 1)[0])
        _set_dotted(merged, dotted, value, sources, f"{file}:{line}" if line else str(file))


_TABLE_RE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_.\"' -]+?)\s*=")


def _key_lines(text: str) -> dict[str, int]:
    """Line number of each ``table.key`` assignment and table header (best effort, for messages)."""
    lines: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if match := _TABLE_RE.match(line):
            table = _unquote_key(match.group(1))
            lines.setdefault(table, number)
        elif match := _KEY_RE.match(line):
            key = _unquote_key(match.group(1))
            lines.setdefault(f"{table}.{key}" if table else key, number)
    return lines


def _unquote_key(key: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Leaf keys; free-form tables (options, weights, plugin) are kept whole below their key."""
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not _is_free_form(dotted):
            items.extend(_flatten(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


def _is_free_form(dotted: str) -> bool:
    last = dotted.rsplit(".", 1)[-1]
    return last in {"options", "weights"} or dotted.startswith(("plugin.", "herds."))


def _set_dotted(target: dict[str, Any], dotted: str, value: Any, sources: dict[str, str], origin: str) -> None:
    parts = dotted.split(".")
    node = target
    for index, part in enumerate(parts[:-1]):
        existing = node.get(part)
        if not isinstance(existing, dict):
            if existing is not None:
                where = sources.get(".".join(parts[: index + 1]), "?")
                raise ConfigError(f"{origin}: {dotted} conflicts with {'.'.join(parts[: index + 1])} set at {where}")
            existing = node[part] = {}
        node = existing
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = {**node[last], **value}
    else:
        node[last] = value
    sources[dotted] = origin


def _merge_env(environ: Mapping[str, str], merged: dict[str, Any], sources: dict[str, str]) -> None:
    for name in sorted(environ):
        # RUNINK_SECRET_*: the env secrets driver's values (runink.plugins.secrets.env)
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS or name.startswith("RUNINK_SECRET_"):
            continue
        dotted = ENV_ALIASES.get(name) or name[len(ENV_PREFIX) :].lower().replace("__", ".")
        _set_dotted(merged, dotted, _coerce_text(dotted, environ[name]), sources, "$" + name)


def _coerce_text(dotted: str, raw: str) -> Any:
    """A string from the environment or a flag, made into the type its key expects.

    JSON is accepted for tables and lists; a list key also takes comma-separated text.
    Scalars stay strings and pydantic converts them ("true", "2", "0.5").
    """
    stripped = raw.strip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            pass
    if _expects_list(dotted):
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def _expects_list(dotted: str) -> bool:
    model: Any = RuninkConfig
    annotation: Any = None
    for part in dotted.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        annotation = fields[part].annotation
        model = annotation
    origins = {typing.get_origin(annotation)} | {typing.get_origin(arg) for arg in typing.get_args(annotation)}
    return list in origins


def _describe_validation_error(exc: ValidationError, sources: dict[str, str]) -> str:
    """One line per problem: ``SOURCE: key: what is wrong``."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        dotted = ".".join(loc)
        origin = "default"
        for end in range(len(loc), 0, -1):
            if (candidate := ".".join(loc[:end])) in sources:
                origin = sources[candidate]
                break
        else:  # an unknown table: its keys were recorded below it
            below = sorted(key for key in sources if key.startswith(dotted + "."))
            if below:
                origin = sources[below[0]]
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{origin}: {dotted}: {message}")
    return "; ".join(problems) if len(problems) > 1 else problems[0]
