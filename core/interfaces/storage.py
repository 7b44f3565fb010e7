"""The Storage driver interface: dataset sources and sinks, chosen per format (URI scheme).

Several storage drivers are loaded at once; a dataset URI's scheme (``csv://``, ``parquet://``,
``s3://``...) or, for a plain path, its extension names the driver in ``runink.storage``.
Data moves as Arrow record batches, streamed: a reader yields batches, a writer consumes
them, so memory stays bounded whatever the dataset size.

* ``read`` yields ``ReadBatch``es: the batch, each row's position in the source (line or
  row number, for dead-letter records) and the malformed records met since the previous
  batch (they are skipped, never fatal). ``raw=True`` asks for columns as text where the
  format is untyped (CSV), so the contract does the typing and bad values become DLQ rows.
* ``writer`` writes to a temporary name and publishes only on ``commit`` (an atomic rename):
  a failed run never leaves a half-written output, and the previous output stays intact.
  A local sink's path is a file in a staging folder the runner publishes; a remote one's
  (``s3://``) is its place in the store, and the driver's ``commit`` publishes it there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pyarrow is imported by the drivers, not by whoever only names this interface
    import pyarrow as pa


#: the longest line a text reader reads whole: a longer one is a malformed record, skipped in pieces
MAX_LINE_BYTES = 16 << 20
#: pyarrow's Parquet codecs (a Parquet sink's ``compression=``)
PARQUET_COMPRESSIONS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")


def parquet_compression(value: object) -> str:
    """``value`` as a Parquet codec pyarrow writes, lowercased; ValueError saying why not."""
    if not isinstance(value, str) or value.lower() not in PARQUET_COMPRESSIONS:
        raise ValueError(f"option compression={value!r}: expected one of {', '.join(PARQUET_COMPRESSIONS)}")
    import pyarrow as pa

    if value.lower() != "none" and not pa.Codec.is_available(value.lower()):
        raise ValueError(f"option compression={value!r}: this pyarrow is built without it")
    return value.lower()


@dataclass(frozen=True)
class Malformed:
    """A source record that could not be parsed at all (wrong column count, invalid JSON)."""

    position: int
    reason: str
    text: str

    @staticmethod
    def text_of(line: bytes, limit: int) -> str:
        """The start of a raw line as text for the dead letter (at most ``limit`` characters)."""
        return line[: limit * 4].decode("utf-8", errors="replace")[:limit]


@dataclass(frozen=True)
class ReadBatch:
    batch: pa.RecordBatch
    positions: pa.Array  # int64, one per row: the line (text formats) or row number
    malformed: list[Malformed] = field(default_factory=list)
    #: how much of the dataset is read once this batch is, from 0 to 1 (bytes of a file, rows
    #: of a Parquet file); None: not known. `runink run` shows it as percent done and time left.
    fraction: float | None = None


class DatasetWriter(ABC):
    @abstractmethod
    def write(self, batch: pa.RecordBatch) -> None: ...

    @abstractmethod
    def commit(self) -> None:
        """Publish the output atomically."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written; the previous output (if any) is left untouched."""


class Storage(ABC):
    GROUP: ClassVar[str] = "runink.storage"
    name: ClassVar[str] = ""
    #: what a position means for this format, for messages: "line" or "row".
    position_unit: ClassVar[str] = "row"
    #: file extensions that select this driver for a plain path (".csv").
    extensions: ClassVar[tuple[str, ...]] = ()
    #: environment variables a slice using this driver is given from the runner's (its
    #: environment is otherwise clean): a remote store's credentials, endpoint, region.
    environment: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def read(self, path: Path, *, raw: bool = False, options: Mapping[str, Any] | None = None) -> Iterator[ReadBatch]:
        """Stream the dataset at ``path``: its source's options, and from the slice ``exact``,
        the contract's fields whose numbers must not pass through a float (its Decimals), for
        a format that would (JSON Lines: a driver reading text or typed values ignores it)."""

    @abstractmethod
    def writer(self, path: Path, schema: pa.Schema, *, options: Mapping[str, Any] | None = None) -> DatasetWriter:
        """A writer for ``path``; nothing is visible there until ``commit``."""
