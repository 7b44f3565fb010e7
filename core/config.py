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

The sections are msgspec Structs, validated by ``msgspec.convert`` in lax mode (text from a
variable or a flag becomes the number or boolean its key expects). msgspec, not pydantic: every
command reads the config, and pydantic's import and the building of its validators for these
sections cost each command ~70 ms of start (msgspec's import and load: ~10 ms). Values are
validated where they come from a user
(``load_config``, ``model_validate``); a section built in code (``LimitsConfig(pids=64)``) is
trusted as written. The models keep pydantic's method names (``model_copy``, ``model_dump``,
``model_validate``) for the plugins that got a config from ``runink_configure``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import tomllib
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, field

from runink.core import structs
from runink.core.errors import ConfigError, RuninkError
from runink.core.units import MAX_MEMORY, MAX_PIDS, check_name, parse_duration, parse_memory

#: HOST:PORT, the port 0-65535
ADDRESS = re.compile(
    r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
)

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
    "RUNINK_DIE_WITH_PARENT",  # (a server's own Barn member: core/processes.die_with_parent_from_env)
    "RUNINK_PARENT_BEAT",  # (...and its server's beats: core/processes.parent_beat_from_env)
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


class InvalidField(ValueError):
    """A field's value failed a check of its section's: msgspec reports the section's path, this
    names the field below it (``_describe_validation_error`` joins them)."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


def _decode_path(kind: type, value: Any) -> Any:
    """msgspec's hook for the types it does not know: ``Path`` from text."""
    if kind is Path:
        if isinstance(value, str):
            return Path(value)
        raise TypeError(f"Expected a path, got `{type(value).__name__}`")
    raise NotImplementedError(kind)


def _to_python(value: Any) -> Any:
    if isinstance(value, Section):
        return {name: _to_python(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, dict):
        return {key: _to_python(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_python(item) for item in value]
    return value


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, dict=True):
    """A table of the config: unknown keys refused. ``dict=True``: RuninkConfig keeps where its
    values came from beside its fields."""

    @classmethod
    def model_validate(cls, data: Any) -> typing.Self:
        """A section from plain data (a TOML table), checked; msgspec.ValidationError if invalid.

        msgspec names a dict's key `[...]` in its errors: the tables of a field that maps names
        to sections (``herds``) are checked one by one first, so that an error names its key."""
        if isinstance(data, dict):
            for name, kind in cls.field_types().items():
                tables, section = data.get(name), _dict_of_sections(kind)
                if section is not None and isinstance(tables, dict):
                    data = {**data, name: {key: _checked(section, f"{name}.{key}", t) for key, t in tables.items()}}
        return msgspec.convert(data, cls, strict=False, dec_hook=_decode_path)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> typing.Self:
        """A copy, with ``update``'s fields replaced: checked by the section's own checks
        (``__post_init__``), not against the fields' types and bounds (as pydantic's is not)."""
        base = copy.deepcopy(self) if deep else self
        result = msgspec.structs.replace(base, **(update or {}))
        result.__dict__.update(copy.deepcopy(self.__dict__) if deep else self.__dict__)  # (where values came from)
        return result

    def model_dump(self, *, mode: Literal["python", "json"] = "python") -> dict[str, Any]:
        """Plain data: dicts and lists (``mode="json"``: paths as text too)."""
        if mode == "json":
            return typing.cast(dict[str, Any], msgspec.to_builtins(self, enc_hook=str))
        return typing.cast(dict[str, Any], _to_python(self))

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Each field's type, without its ``Annotated`` constraints."""
        return _field_types(cls)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dict_of_sections(kind: Any) -> type[Section] | None:
    """The section of a ``dict[str, SECTION]`` field's type, else None."""
    return typing.cast(type[Section] | None, structs.table_of(kind, Section))


def _checked(section: type[Section], where: str, table: Any) -> Section:
    """``table`` as a ``section`` at the dotted key ``where``, its errors' paths below it."""
    try:
        return section.model_validate(table)
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(_below(where, str(exc))) from None


class PluginsConfig(Section):
    #: Plugins not to load: hook plugin names, driver names or GROUP:NAME.
    disable: list[str] = field(default_factory=list)
    #: Allow-list: when set, only these third-party plugins load (built-in ones always do).
    load: list[str] | None = None
    #: Log every hook call and its result to stderr.
    trace: bool = False


class DriverChoice(Section):
    """A section that chooses a driver: every one names it with ``driver`` and builds it with ``options``."""

    driver: str | None = None
    #: Keyword arguments for the driver.
    options: dict[str, Any] = field(default_factory=dict)


class ExecutorConfig(DriverChoice):
    #: "auto": the first driver of prefer that is healthy and isolates here, else the first healthy one.
    driver: str = "auto"
    #: The drivers "auto" considers, in order (each judged by its own fingerprint and capabilities).
    prefer: Annotated[list[str], Meta(min_length=1)] = field(default_factory=lambda: ["linux", "process"])


class SchedulerConfig(DriverChoice):
    #: The scheduler policy (runink.scheduler_policies).
    driver: str = "spread"
    #: Weight of each score plugin's scores (default 1); finite.
    weights: dict[str, Annotated[float, Meta(ge=-1e6, le=1e6)]] = field(default_factory=dict)
    #: How long one round of the leading server's control loop (a scheduler pass, liveness,
    #: its chores such as the autoscaler's) may run before that server counts as hung: it then
    #: hands its lead, and the scheduling, to another server ("60s"; more than the longest pass
    #: the cluster's backlog needs).
    hung_after: str | int = "60s"

    def __post_init__(self) -> None:
        _check_duration(self, "hung_after", zero=False)

    @property
    def hung_after_seconds(self) -> float:
        return parse_duration(self.hung_after)


class BarnConfig(DriverChoice):
    #: The Barn backend (runink.barn_backends).
    driver: str = "memory"


class SecretsConfig(DriverChoice):
    #: The secret backend (runink.secret_backends), if any.
    driver: str | None = None


class AnnotatorConfig(DriverChoice):
    #: The annotator (runink.annotators), if any.
    driver: str | None = None


#: section -> the key that named its driver before every section used ``driver`` (still read, with a warning)
DEPRECATED_DRIVER_KEYS = {"scheduler": "policy", "barn": "backend", "secrets": "backend"}


def duration_or_none(value: str | int) -> float | None:
    """Seconds from a duration ("30d", "1h"), or None for 0 ("no bound"); ValueError naming it."""
    return None if value in (0, "0") else parse_duration(value)


def _check_duration(section: Section, name: str, *, zero: bool) -> None:
    """``name`` is a positive duration ("30s", "5m"), or 0 (no bound) when ``zero``."""
    value = getattr(section, name)
    try:
        duration_or_none(value) if zero else parse_duration(value)
    except ValueError as exc:
        raise InvalidField(name, str(exc)) from None


def _check_size(section: Section, name: str, *, zero: bool) -> None:
    """``name`` is a size ("5GiB", "500Mi", bytes) at most 1Ei, more than 0 unless ``zero``."""
    value = getattr(section, name)
    try:
        size = parse_memory(value)
    except ValueError as exc:
        raise InvalidField(name, str(exc)) from None
    if not (0 if zero else 1) <= size <= MAX_MEMORY:
        bound = "at most 1Ei bytes" if zero else "more than 0 and at most 1Ei bytes"
        raise InvalidField(name, f"must be {bound}, got {value!r}")


def _check_absolute(section: Section, name: str) -> None:
    for path in getattr(section, name):
        _absolute_path(path, name)


def _absolute_path(path: Path, name: str) -> None:
    if "\0" in str(path):
        raise InvalidField(name, f"{str(path)!r} contains a NUL byte")
    if not path.is_absolute():
        raise InvalidField(name, f"{str(path)!r} is not an absolute path")


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "warning"
    #: Runink's own log lines on stderr: text, one JSON object a line, or auto (JSON for runink
    #: server, agent and barn serve when their stderr is not a terminal, text otherwise).
    format: Literal["auto", "text", "json"] = "auto"
    #: Hand every line slices print to the log exporters (runink_export_log: the fluentd plugin
    #: ships them), with herd, job, task, step and node; they are in each task's log files anyway.
    slice_output: bool = False


class HerdConfig(Section):
    #: What schema drift against a contract does: warn, or block the scenario.
    drift: Literal["warn", "block"] = "warn"


class LimitsConfig(Section):
    """Limits of every slice whose ``@requires`` does not set them (a scenario may ask for more)."""

    #: Processes and threads per slice.
    pids: Annotated[int, Meta(ge=1, le=MAX_PIDS)] = 1024
    #: Memory per slice: "2GiB", "512Mi" or bytes.
    memory: str | int = "2GiB"
    #: Disk per slice: what its work dir and its outputs' staging folders hold together,
    #: summed every few seconds; a slice past it is stopped and FAILED ("10GiB"; 0: no bound).
    #: Set by whoever runs the node (the agent's or `runink run`'s config): a scenario cannot raise it.
    disk: str | int = 0

    def __post_init__(self) -> None:
        _check_size(self, "memory", zero=False)
        _check_size(self, "disk", zero=True)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def disk_bytes(self) -> int:
        return parse_memory(self.disk)


class PathsConfig(Section):
    #: Folders outside a pipeline's own that its sources and sinks may use (absolute paths).
    allow: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_absolute(self, "allow")


class ClusterConfig(Section):
    #: The cluster's API, HOST:PORT[,HOST:PORT...], for exec, jobs, status, herd, nodes (else
    #: $RUNINK_SERVER, else the cluster `runink up` started).
    server: str | None = None
    #: The cluster CA's certificate (PEM) the CLI checks an https:// server against (else the one
    #: of the cluster `runink up` started, else the system's).
    ca: str | None = None
    #: Folders every node sees alike (a shared filesystem; absolute paths): `runink submit` places
    #: a scenario reading a dataset another scenario wrote anywhere when it is under one, else on
    #: the node that wrote it.
    shared_paths: list[Path] = field(default_factory=list)
    #: How long servers keep the audit log's records: "365d", "90d" (whole days: a record goes
    #: once its day is older; 0: kept as long as the Barn is). The leading server removes older
    #: ones hourly.
    audit_keep_for: str | int = "365d"
    #: Audit records the servers keep at most, the newest (0: no bound by count): past it the
    #: oldest go whatever their day. The log is in the Barn, and every submission writes one:
    #: at 10 a second a year of days would not fit (~250 bytes a record).
    audit_keep_max: Annotated[int, Meta(ge=0, le=1_000_000_000)] = 500_000
    #: How long servers keep a job that ended (its tasks and output with it): "7d", "12h" (0:
    #: kept as long as the Barn is). The leading server removes older ones every minute, oldest
    #: first; `runink jobs list`, `status`, `logs` and `runink cost` show the jobs kept.
    jobs_keep_for: str | int = "7d"
    #: Ended jobs each herd keeps at most, its newest (0: no bound by count): past it the
    #: oldest go as they would past jobs_keep_for, so one herd's many short jobs cannot fill
    #: the Barn within that time.
    jobs_keep_max: Annotated[int, Meta(ge=0, le=1_000_000_000)] = 10_000

    def __post_init__(self) -> None:
        _check_absolute(self, "shared_paths")
        _check_duration(self, "audit_keep_for", zero=True)
        _check_duration(self, "jobs_keep_for", zero=True)

    @property
    def audit_keep_seconds(self) -> float | None:
        """None: no bound."""
        return duration_or_none(self.audit_keep_for)

    @property
    def jobs_keep_seconds(self) -> float | None:
        """None: no bound."""
        return duration_or_none(self.jobs_keep_for)


class ScalingConfig(DriverChoice):
    """The autoscaler the leading server runs (issue 23; docs/cluster.md, Autoscaling): nodes
    added while tasks wait for room, idle ones drained and removed. Off unless a driver is named."""

    #: The scaler that starts and stops nodes (runink.scalers; "local": `runink up`).
    driver: str | None = None
    #: Nodes the scaler keeps at least.
    min_nodes: Annotated[int, Meta(ge=0, le=10_000)] = 0
    #: Nodes the scaler starts at most.
    max_nodes: Annotated[int, Meta(ge=0, le=10_000)] = 10
    #: Waiting tasks one added node is counted to take: tasks that fit no node add
    #: ceil(waiting / this) nodes at once.
    pending_per_node: Annotated[int, Meta(ge=1, le=100_000)] = 4
    #: How long a node runs no task before it is drained and removed.
    scale_down_idle: str | int = "5m"
    #: The least time between two scaling actions.
    cooldown: str | int = "1m"
    #: How long a node picked for removal may finish its tasks; then its agent is stopped, which
    #: gives the rest back to be placed elsewhere.
    drain_grace: str | int = "10m"

    def __post_init__(self) -> None:
        for name in ("scale_down_idle", "cooldown", "drain_grace"):
            _check_duration(self, name, zero=False)
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes {self.min_nodes} is more than max_nodes {self.max_nodes}")


class AdmissionConfig(Section):
    """What a server admits (issue 23): per-job bounds and each herd's submission rate, the
    cluster's defaults (a herd's own, `runink herd create --max-job-cpu ...`, win). 0: no bound."""

    #: Cores any one task of a job may ask for.
    max_cpu: Annotated[float, Meta(ge=0, le=4096)] = 0.0
    #: Memory any one task may ask for: "32Gi" (0: no bound).
    max_memory: str | int = 0
    #: GPUs any one task may ask for.
    max_gpu: Annotated[int, Meta(ge=0, le=1024)] = 0
    #: The longest timeout a task may ask for: "1h" (0: no bound).
    max_timeout: str | int = 0
    #: Jobs per second each herd may submit (a token bucket; 0: no limit).
    rate: Annotated[float, Meta(ge=0, le=1_000_000)] = 0.0
    #: Jobs a herd may submit at once past its rate.
    burst: Annotated[int, Meta(ge=1, le=1_000_000)] = 20
    #: Tasks each herd may have not ended at once: waiting, placed or running (0: no bound).
    #: One herd cannot fill the Barn, nor the queue, for all.
    max_queued: Annotated[int, Meta(ge=0, le=1_000_000_000)] = 10_000
    #: What each herd's tasks not ended may take in the Barn, their records as stored (commands
    #: of up to 256 KiB each): "64Mi" (0: no bound). Every member and server holds them in memory.
    max_queued_bytes: str | int = "64Mi"
    #: Cores a task asking none is given when its herd's quota limits cpu (its slice's limit,
    #: and what its herd's quota counts).
    default_cpu: Annotated[float, Meta(gt=0, le=4096)] = 1.0
    #: Memory a task asking none is given when its herd's quota limits memory: "256Mi".
    default_memory: str | int = "256Mi"

    def __post_init__(self) -> None:
        _check_size(self, "max_memory", zero=True)
        _check_size(self, "max_queued_bytes", zero=True)
        _check_duration(self, "max_timeout", zero=True)
        _check_size(self, "default_memory", zero=False)

    @property
    def default_request(self) -> tuple[float, int]:
        """(cores, bytes) a task asking none of a resource its herd's quota limits is given."""
        return self.default_cpu, parse_memory(self.default_memory)


class CostConfig(Section):
    """What a job's resources cost, to estimate its worst case at admission and price what its
    tasks used ($RUNINK_COST__CPU_SECOND...; seed 004's defaults)."""

    #: Per cpu-second.
    cpu_second: Annotated[float, Meta(ge=0, le=1e6)] = 0.000048
    #: Per GB-second of memory (10^9 bytes).
    gb_second: Annotated[float, Meta(ge=0, le=1e6)] = 0.000006
    #: Per GPU-second.
    gpu_second: Annotated[float, Meta(ge=0, le=1e6)] = 0.00028
    #: What the rates are in.
    currency: Annotated[str, Meta(pattern=r"^[A-Za-z$€£¥]{1,8}\Z")] = "USD"


class MetricsConfig(Section):
    #: HOST:PORT where runink server, agent, barn serve or run serves /metrics for Prometheus (off
    #: when unset; their --metrics, run's --metrics-port; other commands ignore it). Plain HTTP:
    #: keep it on loopback or a network you trust.
    address: Annotated[str, Meta(max_length=300)] | None = None

    def __post_init__(self) -> None:
        # (a port past 65535 was taken, and nothing listened)
        if self.address is not None and not ADDRESS.fullmatch(self.address):
            raise InvalidField("address", f"{self.address!r}: expected HOST:PORT (a port 0-65535; [v6]:PORT)")


class RunConfig(Section):
    #: Scenarios run at once by `runink run` (0: one per cpu).
    max_parallel: Annotated[int, Meta(ge=0, le=10_000)] = 0
    #: A scenario whose invalid rows pass this percent of the rows it read fails, its outputs not
    #: published (--fail-on-invalid of runink run; unset: invalid rows never fail a scenario).
    fail_on_invalid: Annotated[float, Meta(ge=0, le=100)] | None = None
    #: Past runs (their logs and records under the data dir) started longer ago than this go:
    #: "30d", "12h" (0: kept whatever their age). Applied after each run and by `runink jobs prune`.
    keep_for: str | int = "30d"
    #: Past runs go, oldest first, while all runs take more than this: "5GiB", "500Mi" (0: no bound).
    keep_size: str | int = "5GiB"

    def __post_init__(self) -> None:
        _check_duration(self, "keep_for", zero=True)
        _check_size(self, "keep_size", zero=True)

    @property
    def keep_for_seconds(self) -> float | None:
        """None: no bound on age."""
        return duration_or_none(self.keep_for)

    @property
    def keep_size_bytes(self) -> int | None:
        """None: no bound on size."""
        return parse_memory(self.keep_size) or None


class RuninkConfig(Section):
    """The whole configuration. ``sources`` maps each dotted key that was set to where it came from."""

    herd: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}\Z")] = "default"
    #: Where local state is kept: runs' work dirs and slice logs, lineage, the catalog
    #: ($RUNINK_DATA_DIR; default $XDG_DATA_HOME/runink, ~/.local/share/runink), never the current folder.
    data_dir: Path = field(default_factory=default_data_dir)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    barn: BarnConfig = field(default_factory=BarnConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    annotator: AnnotatorConfig = field(default_factory=AnnotatorConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    #: Per-herd policies ([herds.NAME]).
    herds: dict[str, HerdConfig] = field(default_factory=dict)
    #: Options of each plugin, by plugin name ([plugin.NAME]).
    plugin: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # ("" is the current folder, which data_dir never is)
        _absolute_path(self.data_dir, "data_dir")
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise InvalidField("data_dir", f"{str(self.data_dir)!r} is not a folder")
        for herd in self.herds:  # ([herds.Finance] was taken, and matched no herd: none has that name)
            try:
                check_name(herd, "herd")
            except ValueError as exc:
                raise InvalidField(f"herds.{herd}", str(exc)) from None

    @property
    def sources(self) -> dict[str, str]:
        """Each dotted key that was set, mapped to ``FILE:LINE``, ``$VAR`` or ``--set KEY``."""
        return typing.cast(dict[str, str], self.__dict__.setdefault("_sources", {}))

    @property
    def file(self) -> Path | None:
        """The config file that was read, if any."""
        return typing.cast(Path | None, self.__dict__.get("_file"))

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


def _below(prefix: str, message: str) -> str:
    """msgspec's ``message - at `$.path``` with ``prefix`` put before the path."""
    match = structs.AT.match(message)
    assert match is not None  # (the pattern matches any text)
    return f"{match['message']} - at `$.{prefix}{match['path'] or ''}`"


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
    # (./runink.toml came with the project: read only once the user trusted it, config_trust)
    project = not explicit and file is not None and file == Path.cwd() / "runink.toml"

    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file is not None:
        if not file.exists():
            if explicit:
                raise ConfigError(f"config file {file} does not exist")
        else:
            _merge_file(file, merged, sources, project=project)
    _merge_env(environ, merged, sources)
    for key, raw in (overrides or {}).items():
        _set_dotted(merged, key, _coerce_text(key, raw), sources, "--set " + key)
    _rename_deprecated_keys(merged, sources)

    try:
        config = RuninkConfig.model_validate(merged)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, sources)) from None
    config.__dict__.update(_sources=sources, _file=file if file is not None and file.exists() else None)
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


def _merge_file(file: Path, merged: dict[str, Any], sources: dict[str, str], *, project: bool = False) -> None:
    from runink.core.config_trust import MAX_CONFIG_BYTES
    from runink.core.project_files import read_regular

    try:  # (a regular file, bounded: a FIFO there hung every command run in its folder)
        raw = read_regular(file, "config file", limit=MAX_CONFIG_BYTES)
    except RuninkError as exc:
        raise ConfigError(str(exc)) from None
    if project:  # (the bytes checked are the bytes read)
        from runink.core.config_trust import check_trusted

        check_trusted(file, raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{file}:{at}: not UTF-8 text ({exc.reason})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    lines = _key_lines(text)
    for dotted, value in _flatten(data):
        line = lines.get(dotted) or lines.get(dotted.rsplit(".", 1)[0])
        _set_dotted(merged, dotted, value, sources, f"{file}:{line}" if line else str(file))
        if isinstance(value, dict):  # a free-form table: its keys' own lines, for the messages about them
            for key in value:
                if key_line := lines.get(f"{dotted}.{key}"):
                    sources[f"{dotted}.{key}"] = f"{file}:{key_line}"


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
    Scalars stay strings and msgspec converts them ("true", "2", "0.5").
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


def _type_at(loc: list[str]) -> Any:
    """The type of the config's key at ``loc`` (the key of a field mapping names to sections
    leads to that section), or None for no such key; RuninkConfig for the top."""
    kind: Any = RuninkConfig
    parts = iter(loc)
    for part in parts:
        fields = kind.field_types() if isinstance(kind, type) and issubclass(kind, Section) else {}
        if part not in fields:
            return None
        kind = fields[part]
        if (section := _dict_of_sections(kind)) is not None and next(parts, None) is not None:
            kind = section
    return kind


def _expects_list(dotted: str) -> bool:
    annotation = _type_at(dotted.split("."))
    origins = {typing.get_origin(annotation)} | {typing.get_origin(arg) for arg in typing.get_args(annotation)}
    return list in origins


def _describe_validation_error(exc: msgspec.ValidationError, sources: dict[str, str]) -> str:
    """``SOURCE: key: what is wrong`` from msgspec's ``what is wrong - at `$.key```."""
    message, where = structs.split(exc)
    loc = [part for part in where if isinstance(part, str)]  # (list indexes and dict keys dropped)
    if (named := structs.field_named(message)) is not None and named[1]:  # (unknown, not missing)
        loc.append(named[0])
        message = "unknown key"
    elif (section := _section_at(loc)) and (name := message.split(": ", 1)[0]) in section.field_types():
        loc.append(name)  # a section's own check of that field (InvalidField)
        message = message.split(": ", 1)[1]
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
    return f"{origin}: {dotted}: {message}" if dotted else f"{origin}: {message}"


def _section_at(loc: list[str]) -> type[Section] | None:
    """The section at ``loc`` (RuninkConfig for the top, HerdConfig for ``herds.NAME``), if any."""
    kind = _type_at(loc)
    return kind if isinstance(kind, type) and issubclass(kind, Section) else None
