"""The s3 storage driver against moto's S3 server on loopback (started here, a subprocess):
round trips, atomic publishing, and a pipeline whose intermediate dataset is an S3 object,
run through the CLI with the process executor (the linux executor's slices cannot reach the
host's 127.0.0.1 even with @network: docs/isolation.md, "Network grant")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fixture_types import CliRunner

from runink.core.datasets import DatasetError, resolve_dataset

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

from runink.plugins.storage import s3 as s3_driver  # noqa: E402 - after the skips: needs pyarrow's S3 only
from runink.plugins.storage.s3 import S3Storage  # noqa: E402

ACCESS_KEY, SECRET_KEY = "testing", "testing-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_moto(tmp: Path, env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    log = open(tmp / f"moto-{port}.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {(tmp / f'moto-{port}.log').read_text()}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _start_moto(tmp_path_factory.mktemp("moto"), {})


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def bucket(endpoint: str) -> str:
    name = f"runink-{uuid.uuid4().hex[:12]}"
    _client(endpoint).create_bucket(Bucket=name)
    return name


#: the empty folder marker pyarrow leaves when it deletes the last temporary (not an object's data)
MARKER = ".runink-tmp/"


def _objects(url: str, bucket: str) -> dict[str, bytes]:
    """The bucket's objects, but the temporaries' empty folder marker."""
    client = _client(url)
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    got = {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}
    if got.get(MARKER) == b"":
        del got[MARKER]
    return got


def _driver(url: str) -> S3Storage:
    return S3Storage(endpoint=url, region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY)


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "name": [f"n{i}" for i in range(start, start + n)]})


def test_an_s3_uri_is_a_remote_dataset_not_a_local_path(tmp_path: Path) -> None:
    ref = resolve_dataset("s3://bucket/some/mid.parquet", tmp_path)
    assert (ref.format, ref.remote, ref.path.as_posix(), ref.key) == (
        "s3",
        True,
        "bucket/some/mid.parquet",
        "s3://bucket/some/mid.parquet",
    )
    with pytest.raises(DatasetError, match="expected s3://BUCKET/KEY"):
        resolve_dataset("s3://bucket-only", tmp_path)


def test_round_trip_publishes_only_on_commit(endpoint: str, bucket: str) -> None:
    storage = _driver(endpoint)
    path = Path(bucket) / "data" / "t.parquet"
    table = _table(1000)
    writer = storage.writer(path, table.schema)
    for batch in table.to_batches(max_chunksize=300):
        writer.write(batch)
    assert _objects(endpoint, bucket) == {}  # nothing at the final key before commit
    writer.commit()
    assert list(_objects(endpoint, bucket)) == ["data/t.parquet"]  # and no temporary left
    read = list(storage.read(path, options={"batch_rows": 400}))
    assert pa.Table.from_batches([r.batch for r in read]).equals(table)
    assert [r.positions[0].as_py() for r in read] == [1, 401, 801]


def test_abort_keeps_the_previous_object_and_leaves_no_temporary(endpoint: str, bucket: str) -> None:
    storage = _driver(endpoint)
    path = Path(bucket) / "t.parquet"
    first = storage.writer(path, _table(3).schema)
    first.write(_table(3).to_batches()[0])
    first.commit()
    before = _objects(endpoint, bucket)
    second = storage.writer(path, _table(3).schema)
    second.write(_table(5, start=100).to_batches()[0])
    second.abort()
    assert _objects(endpoint, bucket) == before


def test_a_dead_writers_temporary_is_swept_by_the_next_writer(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _client(endpoint).put_object(Bucket=bucket, Key=".runink-tmp/1-deadbeef-t.parquet", Body=b"half")
    _client(endpoint).put_object(Bucket=bucket, Key="data/.runink-tmp/1-deadbeef-t.parquet", Body=b"not ours")
    storage = _driver(endpoint)
    storage.writer(Path(bucket) / "t.parquet", _table(1).schema).abort()
    assert ".runink-tmp/1-deadbeef-t.parquet" in _objects(endpoint, bucket)  # young: maybe a live writer's
    monkeypatch.setattr(s3_driver, "STALE_AFTER", -1.0)
    storage.writer(Path(bucket) / "t.parquet", _table(1).schema).abort()
    assert list(_objects(endpoint, bucket)) == ["data/.runink-tmp/1-deadbeef-t.parquet"]


def test_a_sweep_lists_the_temporaries_folder_only_and_deletes_a_bounded_number(
    endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        _client(endpoint).put_object(Bucket=bucket, Key=f".runink-tmp/{i}-deadbeef-t.parquet", Body=b"half")
    listed: list[str] = []
    selector = pafs.FileSelector

    def recording(base_dir: str, **kwargs: Any) -> pafs.FileSelector:
        listed.append(base_dir)
        return selector(base_dir, **kwargs)

    monkeypatch.setattr(pafs, "FileSelector", recording)
    monkeypatch.setattr(s3_driver, "STALE_AFTER", -1.0)
    monkeypatch.setattr(s3_driver, "SWEEP_MAX", 2)
    storage = _driver(endpoint)
    storage.writer(Path(bucket) / "t.parquet", _table(1).schema).abort()
    assert listed == [f"{bucket}/.runink-tmp"]
    assert len(_objects(endpoint, bucket)) == 3
    storage.writer(Path(bucket) / "t.parquet", _table(1).schema).abort()
    assert len(_objects(endpoint, bucket)) == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"batch_rows": "many"}, "option batch_rows='many': expected a whole number of rows >= 1"),
        ({"batch_rows": 0}, "option batch_rows=0: expected a whole number of rows >= 1"),
        ({"compression": "zip"}, "option compression='zip': expected one of none, snappy, gzip, brotli, lz4, zstd"),
    ],
)
def test_a_bad_option_is_one_line_naming_it_and_the_dataset(
    endpoint: str, bucket: str, options: dict[str, Any], error: str
) -> None:
    storage = _driver(endpoint)
    path = Path(bucket) / "t.parquet"
    writer = storage.writer(path, _table(1).schema)
    writer.write(_table(1).to_batches()[0])
    writer.commit()

    def use() -> object:
        if "batch_rows" in options:
            return list(storage.read(path, options=options))
        return storage.writer(path, _table(1).schema, options=options)

    with pytest.raises(DatasetError) as raised:
        use()
    assert str(raised.value) == f"s3://{bucket}/t.parquet: {error}"


def test_a_missing_object_and_a_csv_key_are_one_line_errors(endpoint: str, bucket: str) -> None:
    storage = _driver(endpoint)
    with pytest.raises(DatasetError, match=f"^source s3://{bucket}/nope.parquet does not exist$"):
        list(storage.read(Path(bucket) / "nope.parquet"))
    with pytest.raises(DatasetError, match="Parquet only"):
        storage.writer(Path(bucket) / "t.csv", _table(1).schema)


def test_the_driver_never_shows_its_secret() -> None:
    storage = S3Storage(endpoint="http://127.0.0.1:9", region=REGION, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    assert SECRET_KEY not in repr(storage)


# --- a pipeline through S3, with the CLI ------------------------------------------------------

STEPS = """
import pyarrow as pa
calls = 0

def fail_on_second(batch: pa.RecordBatch) -> pa.RecordBatch:
    global calls
    calls += 1
    if calls == 2:
        raise RuntimeError("step failed on purpose")
    return batch
"""


def _pipeline(folder: Path, bucket: str, endpoint: str, *, step: str = "", network: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    rows = "\n".join(f"{i},name-{i:05d}" for i in range(2000))
    (folder / "data" / "in.csv").write_text(f"id,name\n{rows}\n")
    (folder / "steps.py").write_text(STEPS)
    (folder / "runink.toml").write_text(f'[plugin.storage-s3]\nendpoint = "{endpoint}"\nregion = "{REGION}"\n')
    grant = "  @network\n" if network else ""
    (folder / "p.dsl").write_text(
        "Feature: Through S3\n"
        f"{grant}  Scenario: To S3\n"
        '    @source("csv://data/in.csv", block_size=4096)\n'
        f"{step}"
        f'    @sink("s3://{bucket}/mid.parquet")\n'
        f"{grant}  Scenario: From S3\n"
        f'    @source("s3://{bucket}/mid.parquet")\n'
        '    @sink("parquet://out/final.parquet")\n'
    )
    return folder


def _aws_env(tmp: Path, access: str = "testing", secret: str = "testing-secret") -> dict[str, str]:
    """Credentials for the slices in the environment (the driver's options give the endpoint);
    no ambient AWS configuration, no instance metadata."""
    return {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _run(run_cli: CliRunner, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_cli("run", "p.dsl", "--set", "executor.driver=process", env=env, cwd=folder)


def test_a_pipeline_passes_its_intermediate_dataset_through_s3(
    run_cli: CliRunner, endpoint: str, bucket: str, tmp_path: Path
) -> None:
    folder = _pipeline(tmp_path / "p", bucket, endpoint)
    out = _run(run_cli, folder, _aws_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    final = pq.read_table(folder / "out" / "final.parquet")
    assert final.num_rows == 2000 and final.column("id").to_pylist() == list(range(2000))
    assert list(_objects(endpoint, bucket)) == ["mid.parquet"]  # no temporary left
    assert "testing-secret" not in out.stdout + out.stderr


def test_a_failing_scenario_leaves_no_object_at_the_final_key(
    run_cli: CliRunner, endpoint: str, bucket: str, tmp_path: Path
) -> None:
    folder = _pipeline(tmp_path / "p", bucket, endpoint, step='    @step("steps:fail_on_second")\n')
    out = _run(run_cli, folder, _aws_env(tmp_path))
    assert out.returncode == 1
    assert "step failed on purpose" in out.stdout + out.stderr
    assert _objects(endpoint, bucket) == {}  # neither the object nor a temporary
    # the previous object stays whole
    _client(endpoint).put_object(Bucket=bucket, Key="mid.parquet", Body=b"previous")
    out = _run(run_cli, folder, _aws_env(tmp_path))
    assert out.returncode == 1
    assert _objects(endpoint, bucket) == {"mid.parquet": b"previous"}


def _error_lines(out: subprocess.CompletedProcess[str], needle: str) -> list[str]:
    return [line for line in (out.stdout + out.stderr).splitlines() if needle in line]


def test_a_wrong_endpoint_is_one_line_naming_the_dataset(run_cli: CliRunner, bucket: str, tmp_path: Path) -> None:
    folder = _pipeline(tmp_path / "p", bucket, f"http://127.0.0.1:{_free_port()}")
    out = _run(run_cli, folder, _aws_env(tmp_path))
    assert out.returncode == 1
    lines = _error_lines(out, f"s3://{bucket}/mid.parquet")
    assert lines and "cannot write it" in lines[0], out.stdout + out.stderr


@pytest.fixture(scope="module")
def checking_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server that checks credentials (after its first request: the bucket's creation)."""
    yield from _start_moto(tmp_path_factory.mktemp("moto-auth"), {"INITIAL_NO_AUTH_ACTION_COUNT": "1"})


def test_wrong_credentials_are_one_line_naming_the_dataset(
    run_cli: CliRunner, checking_endpoint: str, tmp_path: Path
) -> None:
    name = f"runink-{uuid.uuid4().hex[:12]}"
    _client(checking_endpoint).create_bucket(Bucket=name)
    folder = _pipeline(tmp_path / "p", name, checking_endpoint)
    out = _run(run_cli, folder, _aws_env(tmp_path, access="AKIAWRONGWRONGWRONG0", secret="wrong-secret"))
    assert out.returncode == 1
    lines = _error_lines(out, f"s3://{name}/mid.parquet")
    assert lines and "cannot write it" in lines[0], out.stdout + out.stderr
    assert "wrong-secret" not in out.stdout + out.stderr


def test_an_s3_dataset_without_network_is_refused_at_compile_time(
    run_cli: CliRunner, bucket: str, endpoint: str, tmp_path: Path
) -> None:
    folder = _pipeline(tmp_path / "p", bucket, endpoint, network=False)
    out = _run(run_cli, folder, _aws_env(tmp_path))
    assert out.returncode != 0
    assert f"s3://{bucket}/mid.parquet' is reached over the network" in out.stdout + out.stderr
    assert "needs @network" in out.stdout + out.stderr


def test_config_credentials_reach_the_slice_and_no_file_of_the_run_holds_them(
    run_cli: CliRunner, endpoint: str, bucket: str, tmp_path: Path, data_home: Path
) -> None:
    """``access_key``/``secret_key`` from ``[plugin.storage-s3]`` go to the slice as variables
    (in memory), not in its spec: no file the run keeps has the secret."""
    folder = _pipeline(tmp_path / "p", bucket, endpoint)
    config = folder / "runink.toml"
    config.write_text(config.read_text() + f'access_key = "{ACCESS_KEY}"\nsecret_key = "{SECRET_KEY}"\n')
    env = {k: v for k, v in _aws_env(tmp_path).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    out = _run(run_cli, folder, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert pq.read_table(folder / "out" / "final.parquet").num_rows == 2000
    # (the project's folder, and the data dir: the run's work dirs, logs, lineage, catalog)
    kept = [p for root in (folder, data_home) for p in root.rglob("*") if p.is_file() and p != config]
    assert any(p.name == "slice.json" for p in kept)  # the specs are there, without the secret
    assert [p for p in kept if SECRET_KEY.encode() in p.read_bytes()] == []


def test_the_runners_aws_configuration_files_are_not_passed_to_a_slice() -> None:
    """Only the explicit key variables: a profile or a credentials file would hand a step every
    credential of the runner."""
    passed = set(S3Storage.environment)
    assert passed.isdisjoint({"AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"})
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} <= passed
