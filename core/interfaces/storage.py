"""The Storage driver interface: dataset sources and sinks, chosen per URI scheme.

Several storage drivers are loaded at once; a URI's scheme (``csv``, ``parquet``, ``s3``...)
is the driver's entry-point name in ``runink.storage``. Data moves as Arrow record batches,
streamed: a reader yields batches, a writer consumes them, so memory stays bounded.
A writer must write to a temporary name and publish only on ``commit`` (no half-written
output after a failure).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pyarrow as pa


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

    @abstractmethod
    def read(
        self, uri: str, *, schema: pa.Schema | None = None, options: Mapping[str, Any] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Stream the dataset at ``uri`` as record batches."""

    @abstractmethod
    def writer(self, uri: str, schema: pa.Schema, *, options: Mapping[str, Any] | None = None) -> DatasetWriter:
        """A writer for ``uri``; nothing is visible there until ``commit``."""
