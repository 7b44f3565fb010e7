"""The ``file`` secret backend: one PLAINTEXT file per secret. For development only.

Layout: ``DIRECTORY/HERD/NAME`` holds the value as it is (mode 0600) and
``DIRECTORY/HERD/.versions.json`` each name's {version, updated, deleted}; directories are
0700. A secret name never starts with '.', so neither that file nor the temporary files of
atomic writes can be a secret. A file put there by hand is a secret too (version 1 until the
next put).

Everything is opened relative to the directory above it without following symlinks, so a
symlink anywhere below DIRECTORY (a herd directory, a secret) is refused, as is a DIRECTORY
that is a symlink itself or that group or others may open. Writes take the herd directory's
flock, so processes sharing the directory do not lose versions. The value is written before
its version: a crash between the two leaves the new value under the old version number.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from runink.core.driverload import OptionsSchema
from runink.core.fstree import replace_file
from runink.core.interfaces.secrets import (
    MAX_SECRET_BYTES,
    SECRET_NAME,
    InvalidSecretError,
    SecretBackend,
    SecretError,
    SecretInfo,
    check_herd,
    check_secret_name,
    check_secret_value,
    not_found,
)

VERSIONS = ".versions.json"
MAX_VERSIONS_BYTES = 16 << 20
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FileSecrets(SecretBackend):
    """Secrets as plaintext files under ``directory`` (development only: see the module doc)."""

    name: ClassVar[str] = "file"
    options_schema: ClassVar[OptionsSchema] = {"directory": (str, Path)}

    def __init__(self, directory: str | Path) -> None:
        if not isinstance(directory, str | Path) or not str(directory):
            raise InvalidSecretError(f"file secrets: directory must be a path, got {directory!r}")
        self.directory = Path(directory)
        self._lock = threading.Lock()
        if not self.directory.is_symlink():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(self._open_root())  # refuse a bad directory now, not at the first secret

    def __repr__(self) -> str:
        return f"FileSecrets({str(self.directory)!r})"

    # --- the interface ---------------------------------------------------------------------

    def get(self, herd: str, name: str) -> bytes:
        herd, name = check_secret_name(herd, name)
        with self._herd(herd, create=False) as herd_fd:
            value = None if herd_fd is None else self._read_value(herd_fd, herd, name)
        if value is None:
            raise not_found(herd, name, f" (no file {self.directory / herd / name})")
        return value

    def put(self, herd: str, name: str, value: bytes) -> int:
        herd, name = check_secret_name(herd, name)
        value = check_secret_value(herd, name, value)
        with self._lock, self._herd(herd, create=True) as herd_fd:
            assert herd_fd is not None  # created
            fcntl.flock(herd_fd, fcntl.LOCK_EX)  # released when the descriptor is closed
            versions = self._read_versions(herd_fd, herd)
            version = _version(versions.get(name), self._exists(herd_fd, herd, name)) + 1
            self._write(herd_fd, herd, name, value)
            versions[name] = {"version": version, "updated": time.time()}
            self._write(herd_fd, herd, VERSIONS, json.dumps(versions, sort_keys=True).encode())
        return version

    def delete(self, herd: str, name: str) -> bool:
        herd, name = check_secret_name(herd, name)
        with self._lock, self._herd(herd, create=False) as herd_fd:
            if herd_fd is None:
                return False
            fcntl.flock(herd_fd, fcntl.LOCK_EX)
            versions = self._read_versions(herd_fd, herd)
            version = _version(versions.get(name), self._exists(herd_fd, herd, name))
            try:
                os.unlink(name, dir_fd=herd_fd)
            except FileNotFoundError:
                return False
            # kept, marked deleted: a put after this continues the versions
            versions[name] = {"version": version, "updated": time.time(), "deleted": True}
            self._write(herd_fd, herd, VERSIONS, json.dumps(versions, sort_keys=True).encode())
            return True

    def list(self, herd: str) -> builtins.list[SecretInfo]:
        herd = check_herd(herd)
        found: builtins.list[SecretInfo] = []
        with self._herd(herd, create=False) as herd_fd:
            if herd_fd is None:
                return []
            versions = self._read_versions(herd_fd, herd)
            for name in os.listdir(herd_fd):
                if not SECRET_NAME.fullmatch(name):
                    continue
                info = os.stat(name, dir_fd=herd_fd, follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode):
                    continue  # a symlink or directory is no secret (get refuses it)
                entry = versions.get(name)
                updated = entry.get("updated") if entry and not entry.get("deleted") else None
                found.append(
                    SecretInfo(name, _version(entry, True), float(updated) if updated is not None else info.st_mtime)
                )
        return sorted(found, key=lambda info: info.name)

    def version(self, herd: str, name: str) -> int:
        herd, name = check_secret_name(herd, name)
        with self._herd(herd, create=False) as herd_fd:
            if herd_fd is None or not self._exists(herd_fd, herd, name):
                raise not_found(herd, name, f" (no file {self.directory / herd / name})")
            return _version(self._read_versions(herd_fd, herd).get(name), True)

    # --- files ------------------------------------------------------------------------------

    def _open_root(self) -> int:
        try:
            return _open_directory(self.directory, lambda: os.open(self.directory, DIRECTORY_FLAGS))
        except FileNotFoundError:
            raise SecretError(f"file secrets: directory {self.directory} does not exist") from None

    @contextlib.contextmanager
    def _herd(self, herd: str, *, create: bool) -> Iterator[int | None]:
        """The herd directory's descriptor (None if absent and not ``create``), closed after."""
        root_fd = self._open_root()
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(herd, 0o700, dir_fd=root_fd)
            try:
                herd_fd = _open_directory(self.directory / herd, lambda: os.open(herd, DIRECTORY_FLAGS, dir_fd=root_fd))
            except FileNotFoundError:
                herd_fd = None
        finally:
            os.close(root_fd)
        try:
            yield herd_fd
        finally:
            if herd_fd is not None:
                os.close(herd_fd)

    def _exists(self, herd_fd: int, herd: str, name: str) -> bool:
        try:
            info = os.stat(name, dir_fd=herd_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"file secrets: {self.directory / herd / name} is not a regular file; refused")
        return True

    def _read_value(self, herd_fd: int, herd: str, name: str) -> bytes | None:
        path = self.directory / herd / name
        data = self._read(herd_fd, path, name, MAX_SECRET_BYTES)
        if data is not None and len(data) > MAX_SECRET_BYTES:
            raise SecretError(f"file secrets: {path} is larger than {MAX_SECRET_BYTES} bytes; refused")
        return data

    def _read_versions(self, herd_fd: int, herd: str) -> dict[str, dict[str, Any]]:
        path = self.directory / herd / VERSIONS
        data = self._read(herd_fd, path, VERSIONS, MAX_VERSIONS_BYTES)
        if data is None:
            return {}
        try:
            versions = json.loads(data)
        except ValueError:
            raise SecretError(f"file secrets: {path} is not JSON") from None
        if not isinstance(versions, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("version"), int) for entry in versions.values()
        ):
            raise SecretError(f"file secrets: {path} is not a map of name to {{version, updated}}")
        return versions

    def _read(self, herd_fd: int, path: Path, name: str, limit: int) -> bytes | None:
        """The file's bytes (at most ``limit`` + 1, so a caller sees it is too large); None if absent."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=herd_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretError(f"file secrets: {path}: {_why(exc)}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SecretError(f"file secrets: {path} is not a regular file; refused")
            chunks: builtins.list[bytes] = []
            size = 0
            while size <= limit:
                chunk = os.read(fd, limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _write(self, herd_fd: int, herd: str, name: str, data: bytes) -> None:
        """``data`` into ``name`` in the herd directory: a temporary file renamed over it."""
        replace_file(herd_fd, name, data, 0o600)


def _version(entry: dict[str, Any] | None, exists: bool) -> int:
    """A name's latest version (0: never stored). A file with no live entry was put there by
    hand: it is one version past the entry, if any (a deleted one)."""
    if entry is None:
        return 1 if exists else 0
    version = int(entry["version"])
    if entry.get("deleted"):
        return version + 1 if exists else version
    return version


def _open_directory(path: Path, opener: Any) -> int:
    """``opener()``'s directory descriptor, refused (SecretError) if a symlink, not a directory,
    or open to group or others. FileNotFoundError passes through."""
    try:
        fd: int = opener()
    except FileNotFoundError:
        raise
    except OSError as exc:
        # O_DIRECTORY | O_NOFOLLOW on a symlink fails with ENOTDIR: say which it is
        why = "is a symlink; refused" if exc.errno == errno.ENOTDIR and path.is_symlink() else _why(exc)
        raise SecretError(f"file secrets: {path}: {why}") from None
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o077:
        os.close(fd)
        raise SecretError(
            f"file secrets: directory {path} has mode {mode:04o}: group or others may open it; refused "
            f"(chmod 700 {path})"
        )
    return fd


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symlink; refused"
    if exc.errno == errno.ENOTDIR:
        return "is not a directory; refused"
    return exc.strerror or str(exc)
