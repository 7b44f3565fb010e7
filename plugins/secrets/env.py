"""The ``env`` secret backend: read-only secrets from environment variables. Development only.

Herd HERD's secret NAME is ``RUNINK_SECRET_<HERD>__<NAME>``, herd and name upper-cased with
every character outside A-Z and 0-9 made ``_``. So names differing only in case or in '.',
'-' and '_' are one variable, and herds differing only in '.', '-' and '_' share their
secrets: this is for one developer's machine, not for herds kept apart. A herd name that would
hold ``__`` (``a__b``, ``a-_b``) is refused, so the first ``__`` after the prefix always ends
the herd and no herd reads another one's variables by prefix.

Every secret is version 1 (variables have no history) and ``updated`` is 0.0 (unknown).
``put`` and ``delete`` raise SecretReadOnlyError. core/config.py leaves ``RUNINK_SECRET_*``
variables alone (they are not config keys).
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Mapping
from typing import ClassVar

from runink.core.driverload import OptionsSchema
from runink.core.interfaces.secrets import (
    MAX_SECRET_BYTES,
    SECRET_NAME,
    InvalidSecretError,
    SecretBackend,
    SecretError,
    SecretInfo,
    SecretReadOnlyError,
    check_herd,
    check_secret_name,
    not_found,
)

PREFIX = "RUNINK_SECRET_"
_OUTSIDE = re.compile(r"[^A-Z0-9]")


def _upper(text: str) -> str:
    return _OUTSIDE.sub("_", text.upper())


def variable_prefix(herd: str) -> str:
    """``RUNINK_SECRET_<HERD>__``: every variable of the herd starts with it."""
    herd = check_herd(herd)
    upper = _upper(herd)
    if "__" in upper:
        raise InvalidSecretError(
            f"env secrets: herd {herd!r} becomes {upper!r} in variable names, whose '__' would be read as "
            "the end of the herd; use another herd name or another secrets driver"
        )
    return f"{PREFIX}{upper}__"


def variable_name(herd: str, name: str) -> str:
    """The variable that holds herd ``herd``'s secret ``name``."""
    herd, name = check_secret_name(herd, name)
    return variable_prefix(herd) + _upper(name)


class EnvSecrets(SecretBackend):
    """Secrets from ``RUNINK_SECRET_<HERD>__<NAME>`` variables (read-only, development only).

    ``environ`` (tests) replaces the process environment, which is otherwise read at each call."""

    name: ClassVar[str] = "env"
    options_schema: ClassVar[OptionsSchema] = {"environ": object}

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def __repr__(self) -> str:
        return "EnvSecrets()"

    def _variables(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    def get(self, herd: str, name: str) -> bytes:
        variable = variable_name(herd, name)
        text = self._variables().get(variable)
        if text is None:
            raise not_found(herd, name, f" (no variable {variable})")
        value = os.fsencode(text)  # the bytes the environment had (surrogateescape)
        if len(value) > MAX_SECRET_BYTES:
            raise SecretError(
                f"env secrets: {variable} (herd {herd!r}, secret {name!r}) is {len(value)} bytes, "
                f"at most {MAX_SECRET_BYTES}"
            )
        return value

    def put(self, herd: str, name: str, value: bytes) -> int:
        check_secret_name(herd, name)
        raise SecretReadOnlyError(
            f"env secrets are read-only: cannot store secret {name!r} of herd {herd!r} "
            f"(set {variable_name(herd, name)} in the environment instead)"
        )

    def delete(self, herd: str, name: str) -> bool:
        check_secret_name(herd, name)
        raise SecretReadOnlyError(
            f"env secrets are read-only: cannot delete secret {name!r} of herd {herd!r} "
            f"(unset {variable_name(herd, name)} instead)"
        )

    def list(self, herd: str) -> builtins.list[SecretInfo]:
        """The herd's variables, named as their variable spells them (get finds them by that name)."""
        prefix = variable_prefix(herd)
        names = {
            variable[len(prefix) :]
            for variable in self._variables()
            if variable.startswith(prefix) and SECRET_NAME.fullmatch(variable[len(prefix) :])
        }
        return [SecretInfo(name, 1, 0.0) for name in sorted(names)]

    def version(self, herd: str, name: str) -> int:
        variable = variable_name(herd, name)
        if variable not in self._variables():
            raise not_found(herd, name, f" (no variable {variable})")
        return 1
