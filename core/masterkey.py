"""A master key file: 32 random bytes, base64, in a file only its owner can read. The ``barn``
secret backend wraps each herd's data key with it; ``runink up`` makes one and
``runink secret rotate-master-key`` reads a new one, so the file's format lives here, in the
core, not in the plugin."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from runink.core.fstree import read_private_file
from runink.core.interfaces.secrets import SecretError

MASTER_KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 1024  # a master key file is 45 bytes; more is not one

__all__ = ["MASTER_KEY_BYTES", "create_master_key", "key_id", "read_master_key"]


def key_id(key: bytes) -> str:
    """A key's public name: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:16]


ENV_SOURCE = "env:"  # a master key given as env:NAME is read from the environment variable NAME
KMS_SOURCE = "kms:"  # kms:...: a plugin's (the runink_master_key hook), not read here


def master_key_of(source: str | Path, from_plugins: Callable[[str], bytes | None]) -> bytes:
    """The master key ``source`` names: ``kms:...`` asked of the plugins (``from_plugins``, the
    runink_master_key hook), else a file or ``env:NAME`` (``read_master_key``)."""
    if not str(source).startswith(KMS_SOURCE):
        return read_master_key(source)
    try:
        key = from_plugins(str(source))
    except SecretError:
        raise
    except Exception as exc:  # a plugin's failure: one line naming the source, no traceback
        raise SecretError(f"master key {source}: the plugin serving it failed: {type(exc).__name__}: {exc}") from None
    if key is None:
        raise SecretError(f"master key {source}: no plugin knows it (install the KMS plugin that serves it)")
    if not isinstance(key, bytes) or len(key) != MASTER_KEY_BYTES:
        raise SecretError(f"master key {source}: the plugin's answer is not {MASTER_KEY_BYTES} bytes")
    return key


def read_master_key(path: str | Path) -> bytes:
    """The master key in ``path`` (base64 of 32 bytes), or in the environment variable NAME for
    ``env:NAME``. The file must be a regular file, not a symlink, readable by its owner only;
    SecretError naming the file (or variable) otherwise."""
    if str(path).startswith(ENV_SOURCE):
        name = str(path)[len(ENV_SOURCE) :]
        value = os.environ.get(name)
        if not name or value is None:
            raise SecretError(f"master key {path}: the environment variable {name or '(no name)'} is not set")
        return _decoded(value.encode()[: MAX_KEY_FILE_BYTES + 1], f"${name}")
    path = Path(path)
    data = read_private_file(path, "master key file", MAX_KEY_FILE_BYTES, SecretError)
    return _decoded(data, f"master key file {path}")


def _decoded(data: bytes, where: str) -> bytes:
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SecretError(f"{where} is larger than {MAX_KEY_FILE_BYTES} bytes: not a master key")
    try:
        key = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(f"{where} does not hold base64 text: not a master key") from None
    if len(key) != MASTER_KEY_BYTES:
        raise SecretError(f"{where} holds {len(key)} bytes; a master key is {MASTER_KEY_BYTES}")
    return key


def create_master_key(path: str | Path) -> str:
    """Write a new random master key to ``path`` (mode 0600) and return its key id.

    Written to a temporary file in the same directory and linked into place, so the file
    appears whole or not at all, and never replaces one that is there (SecretError then)."""
    path = Path(path)
    key = os.urandom(MASTER_KEY_BYTES)
    temporary = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SecretError(f"master key file {path}: cannot create it in {path.parent}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, base64.b64encode(key) + b"\n")  # 45 bytes: one write
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # fails if anything (even a dangling symlink) has that name
        except FileExistsError:
            raise SecretError(f"master key file {path} exists; refusing to overwrite it") from None
        except OSError as exc:
            raise SecretError(f"master key file {path}: cannot create it: {exc.strerror}") from None
    finally:
        os.unlink(temporary)
    _sync_directory(path.parent)
    return key_id(key)


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the file itself is synced
    finally:
        os.close(fd)
