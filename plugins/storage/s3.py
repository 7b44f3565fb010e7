"""S3 datasets (``s3://bucket/key.parquet``): Parquet objects read and written through pyarrow's S3 file system.

Where and as whom: the driver's options (``[plugin.storage-s3]``: ``endpoint``, ``region``,
``access_key``, ``secret_key``, ``session_token``), else the standard AWS variables
(``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``...), which
the runner passes to a slice that uses this driver (``Storage.environment``).

Publishing: an object is written to a temporary key in the bucket's ``.runink-tmp/`` folder
(``.runink-tmp/PID-RANDOM-NAME``; pyarrow uploads it in parts, and it becomes visible only
when the upload completes on close), and ``commit`` moves it to the final key (a server-side
copy, then the temporary is deleted). Readers of the final key see the previous object or the
whole new one, never a part. ``abort`` deletes the temporary. (pyarrow, deleting the last key
of a folder, leaves an empty ``.runink-tmp/`` marker object: the one trace in the bucket.)
A writer killed mid-upload leaves only an incomplete multipart upload (invisible; a bucket
lifecycle rule removes those); one killed between completing and moving leaves a temporary
object, which a later writer in that bucket deletes once it is an hour old: each writer lists
the ``.runink-tmp/`` folder only (not the bucket) and deletes at most ``SWEEP_MAX`` of them. S3's single
copy is limited to 5 GiB per object, so is a published one.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from runink.core.datasets import DatasetError
from runink.core.driverload import OptionsSchema
from runink.core.interfaces.storage import DatasetWriter, ReadBatch, Storage, parquet_compression

if TYPE_CHECKING:  # imported where used: the runner reads this driver's options (checking a config) without Arrow
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

BATCH_ROWS = 65_536
PARQUET_SUFFIXES = (".parquet", ".pq")
#: a temporary object older than this is a dead writer's (a live one exists for the length of a copy)
STALE_AFTER = 3600.0


def _one_line(exc: BaseException) -> str:
    """pyarrow's S3 errors span lines (the AWS error, then its detail): one line for messages."""
    return " ".join(str(exc).split())


TEMP_FOLDER = ".runink-tmp"
#: stale temporaries one writer deletes at most (the rest are left to the next writers)
SWEEP_MAX = 100


def _batch_rows(uri: str, options: Mapping[str, Any]) -> int:
    value = options.get("batch_rows", BATCH_ROWS)
    try:
        rows = int(value) if not isinstance(value, bool | float) else 0
    except (TypeError, ValueError):
        rows = 0
    if rows < 1:
        raise DatasetError(f"{uri}: option batch_rows={value!r}: expected a whole number of rows >= 1")
    return rows


def _compression(uri: str, options: Mapping[str, Any]) -> str:
    try:
        return parquet_compression(options.get("compression", "zstd"))
    except ValueError as exc:
        raise DatasetError(f"{uri}: {exc}") from None


class S3Storage(Storage):
    name = "s3"
    position_unit = "row"
    extensions = ()
    environment = (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CA_BUNDLE",
    )  # not AWS_PROFILE / AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE: a step would read the runner's every profile
    #: options the runner passes to the slice as variables (its env, in memory), never in its spec (a file)
    secret_options: ClassVar[dict[str, str]] = {
        "access_key": "AWS_ACCESS_KEY_ID",
        "secret_key": "AWS_SECRET_ACCESS_KEY",
        "session_token": "AWS_SESSION_TOKEN",
    }
    options_schema: ClassVar[OptionsSchema] = {
        "endpoint": str,
        "region": str,
        "access_key": str,
        "secret_key": str,
        "session_token": str,
        "anonymous": bool,
        "connect_timeout": float,
        "request_timeout": float,
        "retries": int,
    }

    def __init__(
        self,
        *,
        endpoint: str = "",
        region: str = "",
        access_key: str = "",
        secret_key: str = "",
        session_token: str = "",
        anonymous: bool = False,
        connect_timeout: float = 5.0,
        request_timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        if not (access_key or secret_key or session_token):  # in a slice: the runner's, or the config's
            access_key = os.environ.get("AWS_ACCESS_KEY_ID", "")
            secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
            session_token = os.environ.get("AWS_SESSION_TOKEN", "")
        if bool(access_key) != bool(secret_key):
            raise DatasetError(
                "storage driver 's3': access_key and secret_key (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) "
                "are given together or not at all"
            )
        endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3", "") or os.environ.get("AWS_ENDPOINT_URL", "")
        scheme, sep, host = endpoint.partition("://")
        if not sep:
            scheme, host = "https", endpoint
        if scheme not in ("http", "https"):
            raise DatasetError(f"storage driver 's3': endpoint {endpoint!r} must be http:// or https://")
        import pyarrow.fs as pafs

        self._endpoint = endpoint
        self._settings: dict[str, Any] = {
            "region": region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
            "endpoint_override": host.rstrip("/") or None,
            "scheme": scheme,
            "anonymous": anonymous,
            "connect_timeout": connect_timeout,
            "request_timeout": request_timeout,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, retries)),
        }
        if access_key:  # (else pyarrow finds them: ~/.aws outside a slice, instance metadata)
            self._settings.update(access_key=access_key, secret_key=secret_key, session_token=session_token or None)
        self._fs: pafs.S3FileSystem | None = None

    def __repr__(self) -> str:  # never the credentials
        return f"S3Storage(endpoint={self._endpoint!r}, region={self._settings['region']!r})"

    def filesystem(self) -> pafs.S3FileSystem:
        if self._fs is None:
            import pyarrow.fs as pafs

            self._fs = pafs.S3FileSystem(**self._settings)
        return self._fs

    def read(self, path: Path, *, raw: bool = False, options: Mapping[str, Any] | None = None) -> Iterator[ReadBatch]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        uri = f"s3://{path.as_posix()}"
        _check_format(uri)
        _batch_rows(uri, options or {})  # before any request
        try:
            file = pq.ParquetFile(self.filesystem().open_input_file(path.as_posix()))
        except FileNotFoundError:
            raise DatasetError(f"source {uri} does not exist") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{uri}: cannot read it: {_one_line(exc)}") from None
        row = 0
        batches = file.iter_batches(batch_size=_batch_rows(uri, options or {}))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except OSError as exc:
                raise DatasetError(f"{uri}: cannot read it: {_one_line(exc)}") from None
            yield ReadBatch(batch, pa.array(range(row + 1, row + 1 + batch.num_rows), pa.int64()))
            row += batch.num_rows

    def writer(self, path: Path, schema: pa.Schema, *, options: Mapping[str, Any] | None = None) -> DatasetWriter:
        uri = f"s3://{path.as_posix()}"
        _check_format(uri)
        return S3ParquetWriter(self.filesystem(), path, schema, _compression(uri, options or {}))


def _check_format(uri: str) -> None:
    if not uri.lower().endswith(PARQUET_SUFFIXES):
        raise DatasetError(f"{uri}: the s3 driver reads and writes Parquet only (a key ending in .parquet or .pq)")


class S3ParquetWriter(DatasetWriter):
    """Parquet to a temporary key, moved to the final key on ``commit``."""

    def __init__(self, fs: pafs.S3FileSystem, path: Path, schema: pa.Schema, compression: str) -> None:
        self.fs = fs
        self.final = path.as_posix().strip("/")
        self.uri = f"s3://{self.final}"
        bucket = self.final.partition("/")[0]
        self.temp = f"{bucket}/{TEMP_FOLDER}/{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}"
        self._sweep(bucket)
        try:
            self._stream = fs.open_output_stream(self.temp)
        except OSError as exc:
            raise DatasetError(f"{self.uri}: cannot write it: {_one_line(exc)}") from None
        self.schema, self.compression = schema, compression
        self._writer: pq.ParquetWriter | None = None  # opened by the first batch, as the parquet driver's
        self._closed = False

    def _open(self, dictionary: list[str] | bool) -> pq.ParquetWriter:
        import pyarrow.parquet as pq

        return pq.ParquetWriter(self._stream, self.schema, compression=self.compression, use_dictionary=dictionary)

    def _sweep(self, bucket: str) -> None:
        """Delete up to SWEEP_MAX temporaries dead writers left in the bucket (older than
        STALE_AFTER): a listing of the temporaries' folder only, not of the bucket."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(f"{bucket}/{TEMP_FOLDER}", allow_not_found=True))
        except OSError as exc:  # the first request: a wrong endpoint or credentials show here
            raise DatasetError(f"{self.uri}: cannot write it: {_one_line(exc)}") from None
        now = time.time()
        stale = [
            info.path
            for info in infos
            if info.type == pafs.FileType.File and info.mtime is not None and now - info.mtime.timestamp() > STALE_AFTER
        ]
        for path in stale[:SWEEP_MAX]:
            with contextlib.suppress(OSError):  # another writer swept it first: fine
                self.fs.delete_file(path)

    def write(self, batch: pa.RecordBatch) -> None:
        from runink.plugins.storage.parquet import dictionary_columns

        try:
            if self._writer is None:
                self._writer = self._open(dictionary_columns(batch))
            self._writer.write_batch(batch)
        except OSError as exc:
            raise DatasetError(f"{self.uri}: cannot write it: {_one_line(exc)}") from None

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                (self._writer or self._open(True)).close()
            finally:
                self._stream.close()  # completes the upload of the temporary object

    def commit(self) -> None:
        try:
            self._close()
            self.fs.move(self.temp, self.final)  # S3: copy to the final key, then delete the temporary
        except OSError as exc:
            self._delete_temp()
            raise DatasetError(f"{self.uri}: cannot publish it: {_one_line(exc)}") from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # the upload did not complete: nothing to delete
            self._close()
        self._delete_temp()

    def _delete_temp(self) -> None:
        with contextlib.suppress(OSError):  # never created, or the store is unreachable: swept later
            self.fs.delete_file(self.temp)
