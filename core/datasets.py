"""Dataset URIs and atomic file output, shared by the storage drivers.

A dataset is named by a URI: ``csv://data/orders.csv`` (format, then a path relative to the
pipeline's folder), ``parquet:///abs/path.parquet``, ``file:///abs/orders.jsonl`` or a plain
path (``out/orders.parquet``); without a format scheme the file extension decides.

A URI of a remote scheme (``s3://bucket/key.parquet``) is no local path: its ``path`` is
``bucket/key`` as written (never made absolute), and its driver publishes it atomically itself.
"""

from __future__ import annotations

import os
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

from runink.core.errors import RuninkError
from runink.core.interfaces.storage import DatasetWriter

#: schemes whose datasets are objects in a store, not files: no path checks, no staging folder
REMOTE_SCHEMES = frozenset({"s3"})
EXTENSION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class DatasetError(RuninkError):
    """A dataset URI cannot be understood, read or written."""


@dataclass(frozen=True)
class DatasetRef:
    """A resolved dataset: its format (storage driver name) and absolute path; ``uri`` as written.
    A remote one's ``path`` is its place in the store (``bucket/key``), relative."""

    format: str
    path: Path
    uri: str
    remote: bool = False

    @property
    def key(self) -> str:
        """Identity used to connect scenarios: the absolute path, whatever the format (a remote
        dataset's: its canonical URI)."""
        return self.canonical() if self.remote else str(self.path)

    def canonical(self) -> str:
        return f"{self.format}://{self.path}"


def split_uri(uri: str) -> tuple[str, str]:
    """A dataset URI's scheme (lower case; "" for a plain path or a ``file:`` URI) and its
    path as written. ``file:`` URIs as RFC 8089 has them: ``file:///x``, ``file://localhost/x``
    and ``file:/x`` are /x; one naming another host is refused (DatasetError)."""
    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        if text[:5].lower() == "file:":  # (file:/path: not a folder named "file:")
            return "", text[5:]
        return "", text
    scheme = scheme.lower()
    if scheme != "file":
        return scheme, rest
    host, slash, path = rest.partition("/")
    if host and host.lower() != "localhost":
        raise DatasetError(f"dataset {uri!r}: a file URI names the host {host!r}: only this machine's files")
    return "", slash + path


def resolve_dataset(uri: str, base_dir: Path) -> DatasetRef:
    """Parse ``uri`` and make its path absolute against ``base_dir`` (the .dsl file's folder)."""
    if not uri.strip():
        raise DatasetError("empty dataset URI")
    scheme, rest = split_uri(uri)
    if scheme in REMOTE_SCHEMES:
        bucket, _, key = rest.partition("/")
        if not bucket or not key.strip("/"):
            raise DatasetError(f"dataset {uri!r}: expected {scheme}://BUCKET/KEY")
        # the key stays in the bucket: a leading / replaced the bucket (s3://home//other/x
        # wrote to bucket "other") and ..  segments climbed out of it; one name, one object
        parts = key.split("/")
        if key.startswith("/") or any(part in (".", "..") for part in parts) or "" in parts[:-1]:
            raise DatasetError(f"dataset {uri!r}: its key must not start with /, hold // or name . or ..")
        return DatasetRef(scheme, Path(bucket) / key, uri, remote=True)
    path = Path(rest).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = Path(os.path.normpath(path))
    fmt = scheme or EXTENSION_FORMATS.get(path.suffix.lower(), "")
    if not fmt:
        raise DatasetError(
            f"dataset {uri!r}: cannot tell the format; use a scheme (csv://, jsonl://, parquet://) "
            f"or an extension ({', '.join(sorted(EXTENSION_FORMATS))})"
        )
    return DatasetRef(fmt, path, uri)


class AtomicOutput:
    """A temporary file beside ``path``, renamed over it on ``commit`` and deleted on ``abort``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create the folder of {self.path}: {exc.strerror}") from None
        if not os.access(self.path.parent, os.W_OK):
            raise DatasetError(f"cannot write {self.path}: folder {self.path.parent} is not writable")
        self.temp = self.path.with_name(f".{self.path.name}.runink-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")

    def commit(self) -> None:
        with open(self.temp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.temp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def abort(self) -> None:
        self.temp.unlink(missing_ok=True)


class AtomicFileWriter(DatasetWriter):
    """Base of file writers: everything goes to a temporary file, renamed into place on commit."""

    def __init__(self, path: Path) -> None:
        self.output = AtomicOutput(path)

    @abstractmethod
    def _close(self) -> None:
        """Flush and close the temporary file."""

    def commit(self) -> None:
        self._close()
        self.output.commit()

    def abort(self) -> None:
        try:
            self._close()
        finally:
            self.output.abort()
