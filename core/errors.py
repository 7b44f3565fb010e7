"""Errors the core raises on purpose: each carries a one-line message that names what was wrong and where.

The CLI prints ``str(error)`` alone (no traceback unless ``--debug``), so messages must be complete
on their own: the file and line, the config key, the plugin or driver name, the herd.
"""


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line (multi-line messages joined with "; ")."""
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RuninkError(Exception):
    """Base of every error Runink reports to a user. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(RuninkError):
    """The configuration file or a RUNINK_* variable is invalid."""

    exit_code = 2


class PluginError(RuninkError):
    """A plugin could not be loaded, registered or called."""


class DriverNotFoundError(PluginError):
    """No driver of that name is registered in the group."""


class DriverLoadError(PluginError):
    """The driver exists but importing or constructing it failed."""


class ExecutorError(RuninkError):
    """Base of executor driver errors."""


class TaskNotFoundError(ExecutorError):
    """The executor knows no task with that id."""


class TaskRejectedError(ExecutorError):
    """The executor refuses a task spec, e.g. a limit it cannot enforce."""


class AuthenticationError(RuninkError):
    """No authentication plugin recognised the request's credentials."""


class SchedulingError(RuninkError):
    """No node can take the task; the message lists why each node was rejected."""


class BarnError(RuninkError):
    """Base of Barn (state store) errors."""


class LeaseNotFoundError(BarnError):
    """The lease expired or was revoked (or never existed)."""


class CompactedError(BarnError):
    """A watch asked for changes older than the Barn still keeps."""


class NoQuorumError(BarnError):
    """The Barn cannot commit or serve a linearizable read now (no leader, no quorum):
    retry after ``retry_after`` seconds. The outcome of a write that raised this is unknown."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
