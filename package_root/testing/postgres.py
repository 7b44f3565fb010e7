"""A PostgreSQL server of its own for tests and benchmarks: Debian's ``postgresql`` package,
initialised in a temporary folder and run on loopback as the ``postgres`` user (PostgreSQL
refuses to run as root), removed afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (no package, or not root)."""


def postgres_bin() -> Path | None:
    """The folder of the newest installed PostgreSQL's programs (Debian's layout), if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@contextmanager
def temporary_postgres(*, durable: bool = False) -> Iterator[str]:
    """A new server on a free loopback port; yields its SQLAlchemy URL (user ``runink``,
    database ``postgres``, trust authentication: loopback only). ``durable``: keep fsync on
    (a benchmark's figures); off by default (tests are faster without it)."""
    bindir = postgres_bin()
    if bindir is None or os.geteuid() != 0:
        raise PostgresUnavailable("needs Debian's postgresql package and root (to run it as the postgres user)")
    # (not under pytest's temp folders: they are root's alone, and the server runs as postgres)
    folder = Path(tempfile.mkdtemp(prefix="runink-pg-"))
    os.chmod(folder, 0o755)
    data = folder / "data"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    with socket.socket() as probe:  # a free port (the server binds it a moment later)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    as_postgres = ["runuser", "-u", "postgres", "--"]
    try:
        initdb = [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "runink"]
        subprocess.run(initdb, check=True, capture_output=True, timeout=120)
        options = f"-h 127.0.0.1 -p {port} -k {data}" + ("" if durable else " -c fsync=off")
        start = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(data / "log")]
        subprocess.run([*start, "start"], check=True, capture_output=True, timeout=120)
        try:
            yield f"postgresql+psycopg://runink@127.0.0.1:{port}/postgres"
        finally:
            stop = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            subprocess.run(stop, check=False, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
