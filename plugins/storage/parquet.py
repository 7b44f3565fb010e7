"""Parquet datasets: read row group by row group, written with one writer per output."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from runink.core.datasets import AtomicFileWriter, DatasetError
from runink.core.interfaces.storage import DatasetWriter, ReadBatch, Storage

BATCH_ROWS = 65_536


class ParquetStorage(Storage):
    name = "parquet"
    position_unit = "row"
    extensions = (".parquet", ".pq")

    def read(self, path: Path, *, raw: bool = False, options: Mapping[str, Any] | None = None) -> Iterator[ReadBatch]:
        try:
            file = pq.ParquetFile(path)
        except FileNotFoundError:
            raise DatasetError(f"source {path} does not exist") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{path}: not a readable Parquet file: {exc}") from None
        row = 0
        total = file.metadata.num_rows
        for batch in file.iter_batches(batch_size=int((options or {}).get("batch_rows", BATCH_ROWS))):
            positions = pa.array(range(row + 1, row + 1 + batch.num_rows), pa.int64())
            row += batch.num_rows
            yield ReadBatch(batch, positions, fraction=min(1.0, row / total) if total > 0 else None)

    def writer(self, path: Path, schema: pa.Schema, *, options: Mapping[str, Any] | None = None) -> DatasetWriter:
        return ParquetWriter(path, schema, (options or {}).get("compression", "zstd"))


class ParquetWriter(AtomicFileWriter):
    def __init__(self, path: Path, schema: pa.Schema, compression: str) -> None:
        super().__init__(path)
        self.schema = schema
        self._writer = pq.ParquetWriter(str(self.output.temp), schema, compression=compression)

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)

    def _close(self) -> None:
        self._writer.close()
