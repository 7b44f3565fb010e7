"""Herd secrets on a real cluster (`runink up`: three servers with their raft Barn members, an
agent with the linux executor), set and used through the CLI: the slice gets the value, as a
file on its private tmpfs and as a variable, and the plaintext is nowhere else: not in any file
under the cluster's folder (Barn journals and snapshots, logs, agents' task dirs), not in any
API answer, not in the CLI's output."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixture_types import CliRunner
from runink_processes import UpCluster, up_cluster, up_tls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent's linux executor needs root")

VALUE = "pa55-w0rd-nobody-may-see-7f3a9c"


@pytest.fixture
def cluster(run_cli: CliRunner, tmp_path: Path) -> Iterator[UpCluster]:
    with up_cluster(run_cli, tmp_path, servers=3, agents=1) as up:
        yield up


def test_a_slice_gets_its_herds_secret_and_the_plaintext_is_nowhere_else(
    cluster: UpCluster, run_cli: CliRunner, tmp_path: Path
) -> None:
    env, folder, started = cluster.env, cluster.folder, cluster.started
    value_file = tmp_path / "value"
    value_file.write_text(VALUE + "\n")
    said: list[str] = []

    def cli(*args: str) -> str:
        out = run_cli(*args, env=env)
        said.extend([out.stdout, out.stderr])
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "version 1" in cli("secret", "set", "default", "db.password", "--from-file", str(value_file))
    listed = json.loads(cli("secret", "list", "default", "--json"))
    assert [(s["name"], s["version"]) for s in listed] == [("db.password", 1)]
    # the slice reads its file and its variable; it prints only a digest of them
    script = 'test "$DB_PASSWORD" = "$(cat "$RUNINK_FILES/db.password")" && sha256sum < "$RUNINK_FILES/db.password"'
    ran = cli("exec", "--secret", "db.password", "--secrets-env", "--", "/bin/sh", "-c", script)
    assert ran.split()[0] == hashlib.sha256(VALUE.encode()).hexdigest()
    # a new version reaches the next slice
    value_file.write_text(VALUE + "-v2")
    assert "version 2" in cli("secret", "set", "default", "db.password", "--from-file", str(value_file))
    again = cli("exec", "--secret", "db.password", "--", "/bin/sh", "-c", 'sha256sum < "$RUNINK_FILES/db.password"')
    assert again.split()[0] == hashlib.sha256((VALUE + "-v2").encode()).hexdigest()
    # a job asking for a secret its herd lacks is refused at once, naming it
    missing = run_cli("exec", "--secret", "nope", "--", "/bin/true", env=env)
    assert missing.returncode != 0 and "herd 'default' has no secret 'nope'" in missing.stderr

    # no API answer holds it: jobs, their tasks and logs, the audit log, the secrets' list
    token = json.loads((tmp_path / "xdg" / "runink" / "cluster.json").read_text())["token"]
    api = str(started["api"][0])  # type: ignore[index]
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api, headers=headers, timeout=10, verify=up_tls(env)) as http:
        jobs = http.get("/v1/jobs").json()["jobs"]
        answers = [http.get("/v1/jobs").text, http.get("/v1/audit").text, http.get("/v1/herds/default/secrets").text]
        for job in jobs:
            answers += [http.get(f"/v1/jobs/{job['id']}").text, http.get(f"/v1/jobs/{job['id']}/logs").text]
    assert len(jobs) == 2 and all(VALUE not in answer for answer in answers)
    assert all(VALUE not in text for text in said)
    # nor any file of the cluster: Barn journals and snapshots, servers' and agents' logs, task dirs
    files = [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    journals = [p for p in files if p.name == "raft.journal"]
    assert len(journals) == 3 and all(b"sha256sum" in p.read_bytes() for p in journals)  # (they hold values raw)
    leaked = [str(p) for p in files if VALUE.encode() in p.read_bytes()]
    assert not leaked, leaked

    # a new master key: the herd's data key re-wrapped in the Barn; the old key opens nothing now
    barn = ",".join(str(address).split("://")[-1] for address in started["barn"])  # type: ignore[attr-defined]
    certs = folder / "tls"
    to_barn = ["--barn", barn, "--tls-cert", str(certs / "server.s0.pem")]
    to_barn += ["--tls-key", str(certs / "server.s0-key.pem"), "--tls-ca", str(certs / "ca.pem")]
    new_key = tmp_path / "new-key"
    assert "written to" in cli("secret", "new-key", str(new_key))
    old_key = folder / "secrets-key"
    rotated = cli("secret", "rotate-master-key", "--key", str(old_key), "--new-key", str(new_key), *to_barn)
    assert rotated.startswith("1 herd data key(s) re-wrapped"), rotated
    again = run_cli("secret", "rotate-master-key", "--key", str(old_key), "--new-key", str(new_key), *to_barn, env=env)
    assert again.returncode == 0 and again.stdout.startswith("0 herd data key(s)")  # (done already: skipped)
    stale = run_cli("secret", "rotate-master-key", "--key", str(old_key), "--new-key", str(old_key), *to_barn, env=env)
    assert stale.returncode != 0 and len(stale.stderr.strip().splitlines()) == 1, stale.stderr
