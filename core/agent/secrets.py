"""A starting attempt's secrets: asked of the control plane by the node that runs it, given to
its slice as files in ``$RUNINK_FILES`` (a tmpfs only that slice sees with the linux
executor) and, when the task asks, as environment variables. Values live only in the slice's
spec in memory on the way: never in a task record, a log line, a report or a handle."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from runink.core.errors import RuninkError
from runink.core.interfaces.executor import TaskSpec

_NOT_IN_ENV_NAME = re.compile(r"[^A-Z0-9]")


class SecretsRefused(RuninkError):
    """The control plane gives the attempt no secrets (not its current attempt, not placed on
    this node, a secret gone): the attempt fails, saying why."""


def env_name(secret: str) -> str:
    """The environment variable a secret is given as: ``db.password`` -> ``DB_PASSWORD``."""
    return _NOT_IN_ENV_NAME.sub("_", secret.upper())


def with_secrets(spec: TaskSpec, herd: str, values: Mapping[str, bytes], as_env: bool) -> TaskSpec:
    """``spec`` with the herd's secrets ``values`` (name -> value): a file each, and with
    ``as_env`` a variable each too. Raises RuninkError (naming the secret, never its value) for
    a value that is not UTF-8 text, or a variable the task has already (PATH, HOME...)."""
    if not values:
        return spec
    files, env = dict(spec.files), dict(spec.env)
    for name, value in values.items():
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RuninkError(f"secret {name!r} of herd {herd!r} is not UTF-8 text") from None
        if name in files:
            raise RuninkError(f"secret {name!r} of herd {herd!r}: the task has a file of that name already")
        files[name] = text
        if as_env:
            variable = env_name(name)
            if variable in env:
                raise RuninkError(f"secret {name!r} of herd {herd!r}: the task has a variable {variable} already")
            env[variable] = text
    return dataclasses.replace(spec, files=files, env=env)
