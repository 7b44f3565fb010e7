"""The SecretBackend driver interface: where herd-scoped secrets are kept.

Secrets are addressed by (herd, name); a backend never lists or returns another herd's
secret. Values are bytes; a backend that stores them outside the process must encrypt them
at rest. Nothing here may log or repr a value.

Versions: ``put`` returns the new version, 1 for a name never stored in the herd, then 2, 3...
Only the latest version is kept. A deleted name keeps counting where it stopped (delete then
put gives the next version, not 1) in the backends that can remember it (``barn``, ``file``),
so a version number never names two different values: a cache keyed by (herd, name, version)
stays right. Deleting the herd itself forgets everything.

Errors (each one line naming the herd and the secret): bad input raises ``InvalidSecretError``
(a ValueError); an absent secret ``SecretNotFoundError`` (a KeyError, as dict-like callers
expect); anything else the backend cannot do ``SecretError``. All are RuninkErrors, which
core/errors.py asks of every error a user sees (the CLI prints the line alone); they live
here, next to the contract, as ``Conflict`` and ``NotFound`` live next to ClusterStore.
"""

from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from runink.core.errors import RuninkError
from runink.core.units import check_name

#: a secret's name: one part of a Barn key and one file name, never '.'-first (no hidden or '..')
SECRET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_SECRET_BYTES = 64 * 1024  # a value
MAX_TASK_SECRETS = 32  # secrets one task (a scenario's slice, a command) may receive


class SecretError(RuninkError):
    """A secret backend cannot do what was asked (the message names herd and secret)."""


class InvalidSecretError(SecretError, ValueError):
    """A bad herd name, secret name or value."""


class SecretNotFoundError(SecretError, KeyError):
    """The herd has no secret of that name."""

    def __str__(self) -> str:  # KeyError's own str() quotes the message
        return str(self.args[0]) if self.args else ""


class SecretReadOnlyError(SecretError):
    """The backend cannot store or delete secrets (``env``)."""


@dataclass(frozen=True)
class SecretInfo:
    """What ``list`` tells about a secret: never its value."""

    name: str
    version: int
    updated: float  # unix time of the latest put (0.0: the backend cannot tell)


def _shown(value: object) -> str:
    """A name for an error line, cut short (a bad name may be megabytes of input)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_herd(herd: object) -> str:
    """``herd`` if it is a valid herd name (the core's rule, ``runink.core.units.check_name``)."""
    if not isinstance(herd, str):
        raise InvalidSecretError(f"secrets: a herd name must be a string, got {type(herd).__name__}")
    try:
        return check_name(herd, "herd")
    except ValueError as exc:
        raise InvalidSecretError(f"secrets: {exc}") from None


def check_secret_name(herd: object, name: object) -> tuple[str, str]:
    """(herd, name) if both are valid; InvalidSecretError naming both otherwise."""
    herd = check_herd(herd)
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise InvalidSecretError(
            f"secret name {_shown(name)} in herd {herd!r}: expected 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return herd, name


def check_secret_value(herd: str, name: str, value: object) -> bytes:
    """``value`` as bytes if it is bytes of at most MAX_SECRET_BYTES (never shown in the error)."""
    if not isinstance(value, bytes | bytearray | memoryview):
        kind = type(value).__name__
        raise InvalidSecretError(f"secret {name!r} in herd {herd!r}: the value must be bytes, got {kind}")
    value = bytes(value)
    if len(value) > MAX_SECRET_BYTES:
        raise InvalidSecretError(
            f"secret {name!r} in herd {herd!r}: the value is {len(value)} bytes, at most {MAX_SECRET_BYTES}"
        )
    return value


def not_found(herd: str, name: str, where: str = "") -> SecretNotFoundError:
    return SecretNotFoundError(f"herd {herd!r} has no secret {name!r}{where}")


class SecretBackend(ABC):
    GROUP: ClassVar[str] = "runink.secret_backends"
    name: ClassVar[str] = ""

    @abstractmethod
    def get(self, herd: str, name: str) -> bytes:
        """The latest version's value; SecretNotFoundError naming herd and name when absent."""

    @abstractmethod
    def put(self, herd: str, name: str, value: bytes) -> int:
        """Store a new version; returns its number (1 for a new secret, see the module doc).

        Concurrent puts of one name never lose a version: each gets its own number."""

    @abstractmethod
    def delete(self, herd: str, name: str) -> bool:
        """Delete the secret; True if it existed."""

    @abstractmethod
    def list(self, herd: str) -> builtins.list[SecretInfo]:
        """The herd's secrets sorted by name: names and versions, never values."""

    def rotate_master_key(self, new_master_key: bytes) -> int:
        """Re-wrap what the backend keeps under ``new_master_key`` (``runink secret
        rotate-master-key``); returns how many keys were re-wrapped. A backend that keeps no
        master key (this default) raises SecretError saying so."""
        raise SecretError(f"the {self.name or type(self).__name__!r} secret backend keeps no master key to rotate")

    def version(self, herd: str, name: str) -> int:
        """The latest version's number; SecretNotFoundError when absent. (A backend may answer
        it without reading the whole herd: this default reads the list.)"""
        herd, name = check_secret_name(herd, name)
        for info in self.list(herd):
            if info.name == name:
                return info.version
        raise not_found(herd, name)
