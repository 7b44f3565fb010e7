"""The SecretBackend driver interface: where herd-scoped secrets are kept.

Secrets are addressed by (herd, name); a backend never lists or returns another herd's
secret. Values are bytes; a backend that stores them outside the process must encrypt them
at rest. Nothing here may log a value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class SecretBackend(ABC):
    GROUP: ClassVar[str] = "runink.secret_backends"
    name: ClassVar[str] = ""

    @abstractmethod
    def get(self, herd: str, name: str) -> bytes:
        """The secret's value; KeyError naming herd and name when absent."""

    @abstractmethod
    def put(self, herd: str, name: str, value: bytes) -> int:
        """Store a new version; returns the version number (1 for a new secret)."""

    @abstractmethod
    def delete(self, herd: str, name: str) -> bool:
        """Delete every version; True if it existed."""

    @abstractmethod
    def list(self, herd: str) -> list[str]:
        """Names of the herd's secrets, sorted. Never values."""
