"""`runink submit`: a pipeline run on the cluster, one task per scenario placed in dependency
order across nodes, each run by its node's agent as `runink run` runs it (the same code).
Real `runink server` and `runink agent` processes on loopback; the intermediate dataset of a
two-node pipeline goes through moto's S3 server (started here, loopback)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from barn_cluster import free_ports
from fixture_types import CliRunner
from runink_processes import admin_headers, cluster_auth, node_auth, ready, start_runink

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agents run slices as root")


def _cluster(tmp: Path, agents: dict[str, str], agent_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A server (memory Barn) and one agent per entry of ``agents`` (node id -> its label);
    yields the CLI's environment."""
    tmp.mkdir(parents=True, exist_ok=True)
    api, grpc = free_ports(2)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "xdg"), "RUNINK_SERVER": f"127.0.0.1:{api}"}
    processes = [
        start_runink(
            ["server", "--api", f"127.0.0.1:{api}", "--agents", f"127.0.0.1:{grpc}", *cluster_auth(tmp, env)],
            tmp / "s.log",
            env,
        )
    ]
    try:
        ready(processes[0], tmp / "s.log")
        for node, label in agents.items():
            args = ["agent", "--servers", f"127.0.0.1:{grpc}", "--node-id", node, "--work-dir", str(tmp / node)]
            args += node_auth(tmp, node)
            processes.append(start_runink([*args, "--labels", label], tmp / f"{node}.log", {**env, **agent_env}))
            ready(processes[-1], tmp / f"{node}.log")
        yield env
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


@pytest.fixture
def one_agent(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield from _cluster(tmp_path / "cluster", {"n1": "zone=a"}, {})


def _project(folder: Path, fail: bool = False) -> Path:
    folder.mkdir(parents=True)
    (folder / "in.csv").write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(100)))
    (folder / "steps.py").write_text(
        "import pyarrow as pa\n"
        "def fail(batch: pa.RecordBatch) -> pa.RecordBatch:\n"
        "    raise RuntimeError('failed on purpose')\n"
    )
    step = '    @step("steps:fail")\n' if fail else ""
    (folder / "p.dsl").write_text(
        "Feature: Two steps\n"
        "  Scenario: First\n"
        '    @source("csv://in.csv")\n'
        f"{step}"
        '    @sink("csv://mid.csv")\n'
        "  Scenario: Second\n"
        '    @source("csv://mid.csv")\n'
        '    @sink("csv://out.csv")\n'
    )
    return folder / "p.dsl"


def test_submit_runs_a_pipelines_scenarios_in_order_on_the_cluster(
    one_agent: dict[str, str], run_cli: CliRunner, tmp_path: Path
) -> None:
    pipeline = _project(tmp_path / "p")
    assert run_cli("herd", "create", "default", "--root", str(tmp_path), env=one_agent).returncode == 0
    out = run_cli("submit", str(pipeline), "--wait", "--json", env=one_agent)
    assert out.returncode == 0, out.stdout + out.stderr
    answer = json.loads(out.stdout)
    assert answer["job"]["state"] == "SUCCEEDED" and answer["job"]["kind"] == "pipeline"
    tasks = {t["scenario"]["scenario"]: t for t in answer["tasks"]}
    assert set(tasks) == {"First", "Second"}
    assert tasks["Second"]["after"] == [tasks["First"]["id"]]
    assert tasks["First"]["message"] == "rows in 100, invalid 0, out 100"  # what its slice did
    # the second was placed only after the first succeeded (its outputs published by then)
    first_done = next(t["at"] for t in tasks["First"]["transitions"] if t["state"] == "SUCCEEDED")
    second_placed = next(t["at"] for t in tasks["Second"]["transitions"] if t["state"] == "SCHEDULED")
    assert second_placed >= first_done
    assert (tmp_path / "p" / "out.csv").read_text().splitlines()[1:3] == ['0,"n0"', '1,"n1"']
    # without --wait: the job's id at once
    detached = run_cli("submit", str(pipeline), env=one_agent)
    assert detached.returncode == 0 and detached.stdout.strip().startswith("job")


def test_the_server_records_the_lineage_its_nodes_send(
    one_agent: dict[str, str], run_cli: CliRunner, tmp_path: Path
) -> None:
    """The agent sends its scenarios' lineage over its stream; the server, which owns the
    catalog, records it (with the job, task and node the record says); the node writes none."""
    pipeline = _project(tmp_path / "p")
    assert run_cli("herd", "create", "default", "--root", str(tmp_path), env=one_agent).returncode == 0
    out = run_cli("submit", str(pipeline), "--wait", "--json", env=one_agent)
    assert out.returncode == 0, out.stdout + out.stderr
    job = json.loads(out.stdout)["job"]["id"]
    deadline = time.monotonic() + 20  # (the server's sink writes from a thread of its own)
    while True:  # the server's catalog, over its REST API (`--cluster`: the cluster RUNINK_SERVER names)
        shown = run_cli("catalog", "show", str(tmp_path / "p" / "mid.csv"), "--cluster", "--json", env=one_agent)
        if (shown.returncode == 0 and len(json.loads(shown.stdout)["runs"]) == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["rows"] == 100 and detail["herd"] == "default"
    runs = {r["scenario"]: r for r in detail["runs"]}
    assert runs["First"]["direction"] == "wrote" and runs["Second"]["direction"] == "read"
    assert {r["job"] for r in runs.values()} == {job} and {r["node"] for r in runs.values()} == {"n1"}
    assert {r["state"] for r in runs.values()} == {"SUCCEEDED"}
    status = json.loads(run_cli("status", job, "--json", env=one_agent).stdout)  # what each scenario read and wrote
    by_scenario = {d["scenario"]: d for d in status["datasets"]}
    assert [(d["uri"].rpartition("/")[2], d["rows"]) for d in by_scenario["First"]["wrote"]] == [("mid.csv", 100)]
    assert [d["uri"].rpartition("/")[2] for d in by_scenario["Second"]["read"]] == ["mid.csv"]
    table = run_cli("status", job, env=one_agent)
    assert table.returncode == 0 and "datasets (the lineage catalog)" in table.stdout and "(100 rows)" in table.stdout
    graph = json.loads(run_cli("lineage", str(tmp_path / "p" / "out.csv"), "--cluster", "--json", env=one_agent).stdout)
    assert sorted(d["uri"].rpartition("/")[2] for d in graph["datasets"]) == ["in.csv", "mid.csv", "out.csv"]
    # the server's data_dir holds it: the node wrote none
    local = {**one_agent, "RUNINK_DATA_DIR": str(tmp_path / "cluster" / "s-data")}
    assert run_cli("catalog", "show", str(tmp_path / "p" / "mid.csv"), env=local).returncode == 0
    node_data = tmp_path / "cluster" / "n1-data"
    assert not (node_data / "catalog.db").exists() and not (node_data / "lineage").exists()
    # a person's annotation, stored through the cluster's API as the CLI's identity, read back
    mid = str(tmp_path / "p" / "mid.csv")
    noted = run_cli("annotate", mid, "--note", "pii=no", "--column", "name", "--cluster", "--json", env=one_agent)
    assert noted.returncode == 0 and json.loads(noted.stdout)["stored"] == 1, noted.stderr
    notes = json.loads(run_cli("annotations", mid, "--cluster", "--json", env=one_agent).stdout)["annotations"]
    assert [(n["column"], n["key"], n["value"], n["model"]) for n in notes] == [("name", "pii", "no", None)]
    assert notes[0]["author"]  # the token's subject
    # RBAC: a viewer of another herd reads nothing of this one
    from runink.core.model import Grant
    from runink.core.server.auth import ClusterTokens

    stranger, _ = ClusterTokens([tmp_path / "cluster" / "auth-key.pem"]).mint("eve", [Grant("viewer", "other")], 600)
    theirs = {**one_agent, "RUNINK_TOKEN": stranger}
    listed = run_cli("catalog", "list", "--cluster", "--json", env=theirs)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    hidden = run_cli("catalog", "show", str(tmp_path / "p" / "mid.csv"), "--cluster", env=theirs)
    assert hidden.returncode != 0 and "404" in hidden.stderr and "not in the catalog" in hidden.stderr
    unseen = run_cli("annotations", mid, "--cluster", env=theirs)
    assert unseen.returncode != 0 and "404" in unseen.stderr and "no" not in unseen.stdout
    forged = run_cli("annotate", mid, "--note", "pii=yes", "--cluster", env=theirs)
    assert forged.returncode != 0 and "404" in forged.stderr


def test_a_failed_scenario_skips_what_comes_after_it(
    one_agent: dict[str, str], run_cli: CliRunner, tmp_path: Path
) -> None:
    pipeline = _project(tmp_path / "p", fail=True)
    assert run_cli("herd", "create", "default", "--root", str(tmp_path), env=one_agent).returncode == 0
    out = run_cli("submit", str(pipeline), "--wait", env=one_agent)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert any("First" in line and "FAILED" in line and "failed on purpose" in line for line in lines), out.stdout
    assert any("Second" in line and "SKIPPED" in line for line in lines), out.stdout
    assert not (tmp_path / "p" / "mid.csv").exists()  # nothing half-written published


def test_a_pipeline_whose_folder_holds_the_nodes_own_files_never_runs(
    one_agent: dict[str, str], run_cli: CliRunner, tmp_path: Path
) -> None:
    """A slice is granted its pipeline's whole folder, read-only and id-mapped: every file of
    the folder's owner in it reads as the slice's own, whatever its mode. A pipeline whose
    folder held the cluster's (here: the agent's work dir, every run's logs and output; under
    `runink up`, the keys beside it) gave its steps all of it (a review read the CA's key)."""
    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "p.dsl").write_text(
        'Feature: Peek\n  Scenario: Look\n    @source("csv://in.csv")\n    @sink("csv://out.csv")\n'
    )
    assert run_cli("herd", "create", "default", "--root", str(tmp_path), env=one_agent).returncode == 0
    out = run_cli("submit", str(tmp_path / "p.dsl"), "--wait", "--json", env=one_agent)
    assert out.returncode == 1, out.stdout + out.stderr
    (task,) = json.loads(out.stdout)["tasks"]
    work = tmp_path / "cluster" / "n1"  # (the agent's --work-dir)
    assert task["state"] == "FAILED" and task["attempt"] == 1
    assert f"the pipeline's folder {tmp_path} holds or is among this node's own files ({work})" in task["message"]
    assert not (tmp_path / "out.csv").exists()


def test_a_source_or_sink_among_the_nodes_own_files_is_refused_whatever_paths_allow(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """`[paths] allow` covering the agent's work dir let a slice read other herds' runs there,
    and a sink publish into it (a review): a grant inside the node's own files is refused too."""
    allow = {"RUNINK_PATHS__ALLOW": str(tmp_path / "cluster")}
    for served in _cluster(tmp_path / "cluster", {"n1": "zone=a"}, allow):
        env = {**served, **allow}
        (tmp_path / "cluster" / "n1" / "runs").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cluster" / "n1" / "runs" / "in.csv").write_text("id\n1\n")
        (tmp_path / "p").mkdir()
        (tmp_path / "p" / "in.csv").write_text("id\n1\n")
        assert run_cli("herd", "create", "default", "--root", str(tmp_path / "p"), env=env).returncode == 0
        inside = tmp_path / "cluster" / "n1" / "runs"
        for name, source, sink in (("read", inside / "in.csv", "out.csv"), ("write", "in.csv", inside / "out.csv")):
            (tmp_path / "p" / f"{name}.dsl").write_text(
                f'Feature: F\n  Scenario: S\n    @source("csv://{source}")\n    @sink("csv://{sink}")\n'
            )
            out = run_cli("submit", str(tmp_path / "p" / f"{name}.dsl"), "--wait", "--json", env=env)
            assert out.returncode == 1, out.stdout + out.stderr
            (task,) = json.loads(out.stdout)["tasks"]
            assert "among this node's own files" in task["message"], (name, task["message"])
        assert not (inside / "out.csv").exists() and not (tmp_path / "p" / "out.csv").exists()


def test_bad_submissions_are_refused_with_one_line(
    one_agent: dict[str, str], run_cli: CliRunner, tmp_path: Path
) -> None:
    pipeline = _project(tmp_path / "p")
    missing = run_cli("submit", str(tmp_path / "nope.dsl"), env=one_agent)
    assert missing.returncode != 0 and "nope.dsl" in missing.stderr and "Traceback" not in missing.stderr
    no_herd = run_cli("submit", str(pipeline), "--herd", "ghost", env=one_agent)
    assert no_herd.returncode != 0 and "ghost" in no_herd.stderr and len(no_herd.stderr.strip().splitlines()) == 1
    assert run_cli("herd", "create", "default", "--root", str(tmp_path), env=one_agent).returncode == 0
    base = f"http://{one_agent['RUNINK_SERVER']}"
    for body, status, words in (
        ({"herd": "default", "pipeline": "relative.dsl", "tasks": [{"scenario": "a"}]}, 422, "pipeline"),
        ({"herd": "default", "pipeline": str(pipeline), "tasks": []}, 422, "tasks"),
        (
            {"herd": "default", "pipeline": str(pipeline), "tasks": [{"scenario": "a", "after": ["b"]}]},
            409,
            "after 'b'",
        ),
        ({"herd": "default", "pipeline": str(pipeline), "tasks": [{"scenario": "a"}, {"scenario": "a"}]}, 409, "twice"),
    ):
        answer = httpx.post(f"{base}/v1/pipelines", json=body, timeout=10, headers=admin_headers(one_agent))
        assert answer.status_code == status and words in answer.text, (body, answer.text)
    assert json.loads(run_cli("jobs", "list", "--json", env=one_agent).stdout) == []  # nothing stored


def test_a_pipeline_outside_its_herds_roots_or_through_a_link_never_runs_nor_shows_what_it_points_at(
    one_agent: dict[str, str], run_cli: CliRunner, tmp_path: Path
) -> None:
    """A herd member choosing the .dsl path itself (the API: `runink submit` compiles it first):
    outside the herd's roots it is a 403; a link in them to a root-only file fails its task on
    the node, and neither the task nor the server's log holds a byte of that file (the agent,
    root, read it and quoted its first line back); a FIFO fails at once, and the node starts
    other work meanwhile (its read once blocked the agent's every start)."""
    _project(tmp_path / "p")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-root-only-value\n")
    secret.chmod(0o600)
    (tmp_path / "p" / "evil.dsl").symlink_to(secret)
    os.mkfifo(tmp_path / "p" / "fifo.dsl")
    assert run_cli("herd", "create", "default", "--root", str(tmp_path / "p"), env=one_agent).returncode == 0
    base, headers = f"http://{one_agent['RUNINK_SERVER']}", admin_headers(one_agent)

    def post(path: Path) -> httpx.Response:
        body = {"herd": "default", "pipeline": str(path), "tasks": [{"scenario": "First"}]}
        return httpx.post(f"{base}/v1/pipelines", json=body, timeout=10, headers=headers)

    outside = post(tmp_path / "q" / "p.dsl")
    assert outside.status_code == 403 and "not in a folder its pipelines may be in" in outside.text
    jobs = {name: post(tmp_path / "p" / name).json()["job"]["id"] for name in ("evil.dsl", "fifo.dsl")}
    other = run_cli("exec", "--", "/bin/true", env=one_agent)
    assert other.returncode == 0, other.stderr
    deadline = time.monotonic() + 30
    for name, why in (("evil.dsl", "a symbolic link on its way"), ("fifo.dsl", "not a regular file")):
        while (status := json.loads(run_cli("status", jobs[name], "--json", env=one_agent).stdout))["job"][
            "state"
        ] != "FAILED":
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert why in json.dumps(status) and "TOPSECRET" not in json.dumps(status), status
    assert "TOPSECRET" not in (tmp_path / "cluster" / "s.log").read_text()
    # a cluster admin changes the herd's roots from the CLI
    changed = run_cli("herd", "roots", "default", str(tmp_path / "q"), str(tmp_path / "p"), env=one_agent)
    assert changed.returncode == 0 and "pipelines in " in changed.stdout, changed.stderr
    (herd,) = json.loads(run_cli("herd", "list", "--json", env=one_agent).stdout)
    assert herd["roots"] == sorted([str(tmp_path / "p"), str(tmp_path / "q")])
    assert post(tmp_path / "q" / "p.dsl").status_code == 201  # (in its roots now: the node checks the rest)
    assert run_cli("herd", "roots", "default", "/", env=one_agent).returncode != 0  # (never /)


def test_a_two_node_pipeline_passes_its_dataset_through_s3(run_cli: CliRunner, tmp_path: Path) -> None:
    pytest.importorskip("moto.server")
    from test_storage_s3 import REGION, _aws_env, _client, _objects, _start_moto

    endpoint_gen = _start_moto(tmp_path, {})
    endpoint = next(endpoint_gen)
    try:
        _client(endpoint).create_bucket(Bucket="shared")
        folder = tmp_path / "p"
        folder.mkdir()
        (folder / "in.csv").write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(500)))
        (folder / "runink.toml").write_text(f'[plugin.storage-s3]\nendpoint = "{endpoint}"\nregion = "{REGION}"\n')
        (folder / "p.dsl").write_text(
            "Feature: Across nodes\n"
            '  @affinity(label="zone=a")\n'
            "  @network\n"
            "  Scenario: Writer\n"
            '    @source("csv://in.csv")\n'
            '    @sink("s3://shared/mid.parquet")\n'
            '  @affinity(label="zone=b")\n'
            "  @network\n"
            "  Scenario: Reader\n"
            '    @source("s3://shared/mid.parquet")\n'
            '    @sink("parquet://out.parquet")\n'
        )
        # the agents' own config: the s3 driver's endpoint; slices through the process executor
        # (a linux slice's network reaches the host through slirp4netns, not its loopback)
        agent_env = {
            **_aws_env(tmp_path),
            "RUNINK_CONFIG": str(folder / "runink.toml"),
            "RUNINK_EXECUTOR__DRIVER": "process",
            "RUNINK_EXECUTOR__OPTIONS__DEGRADE": "true",  # (the process executor enforces no limits)
        }
        for env in _cluster(tmp_path / "cluster", {"n1": "zone=a", "n2": "zone=b"}, agent_env):
            assert run_cli("herd", "create", "default", "--root", str(tmp_path), env=env).returncode == 0
            out = run_cli("submit", str(folder / "p.dsl"), "--wait", "--json", env={**env, **agent_env})
            assert out.returncode == 0, out.stdout + out.stderr
            nodes = {t["scenario"]["scenario"]: t["node"] for t in json.loads(out.stdout)["tasks"]}
            assert nodes == {"Writer": "n1", "Reader": "n2"}
        final = pq.read_table(folder / "out.parquet")
        assert final.num_rows == 500 and final.column("id").to_pylist() == list(range(500))
        assert list(_objects(endpoint, "shared")) == ["mid.parquet"]
    finally:
        endpoint_gen.close()


def test_a_scenarios_slice_runs_under_its_herds_capped_cgroup_parent(
    one_agent: dict[str, str], run_cli: CliRunner, tmp_path: Path
) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "in.csv").write_text("id\n1\n")
    (folder / "steps.py").write_text(
        "import pyarrow as pa\n"
        "def where(batch: pa.RecordBatch) -> pa.RecordBatch:\n"
        "    groups = open('/proc/self/cgroup').read().replace('\\n', ' ')\n"
        "    return batch.append_column('cgroup', pa.array([groups] * batch.num_rows))\n"
    )
    (folder / "p.dsl").write_text(
        "Feature: Where\n"
        "  Scenario: Where\n"
        '    @source("csv://in.csv")\n'
        '    @step("steps:where")\n'
        '    @sink("jsonl://out.jsonl")\n'
    )
    made = run_cli("herd", "create", "lab", "--cpu", "2", "--memory", "1Gi", "--root", str(tmp_path), env=one_agent)
    assert made.returncode == 0
    out = run_cli("submit", str(folder / "p.dsl"), "--herd", "lab", "--wait", env=one_agent)
    assert out.returncode == 0, out.stdout + out.stderr
    groups = json.loads((folder / "out.jsonl").read_text().splitlines()[0])["cgroup"]
    assert "/herd-lab/" in groups, groups


def test_a_local_intermediate_dataset_keeps_its_reader_on_the_writers_node(run_cli: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "in.csv").write_text("id\n1\n2\n")
    (folder / "p.dsl").write_text(
        "Feature: Local data\n"
        '  @affinity(label="zone=b")\n'
        "  Scenario: Writer\n"
        '    @source("csv://in.csv")\n'
        '    @sink("csv://mid.csv")\n'
        "  Scenario: Reader\n"
        '    @source("csv://mid.csv")\n'
        '    @sink("csv://out.csv")\n'
    )
    for env in _cluster(tmp_path / "cluster", {"n1": "zone=a", "n2": "zone=b"}, {}):
        assert run_cli("herd", "create", "default", "--root", str(tmp_path), env=env).returncode == 0
        out = run_cli("submit", str(folder / "p.dsl"), "--wait", "--json", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        answer = json.loads(out.stdout)
        nodes = {t["scenario"]["scenario"]: t["node"] for t in answer["tasks"]}
        # both nodes are empty when Reader is placed: spread alone would take n1 (ties go by id)
        assert nodes == {"Writer": "n2", "Reader": "n2"}
        status = run_cli("status", answer["job"]["id"], "--explain", env=env)
        assert status.returncode == 0, status.stderr
        explained = " ".join(status.stdout.split())  # (the table may wrap a long line)
        assert f"input {folder / 'mid.csv'} was written on node n2" in explained, status.stdout
    assert (folder / "out.csv").read_text().splitlines()[1:] == ["1", "2"]


def test_several_commands_run_in_turn_in_one_slice_sharing_its_work_dir(
    one_agent: dict[str, str], run_cli: CliRunner
) -> None:
    assert run_cli("herd", "create", "default", env=one_agent).returncode == 0
    shared = run_cli("exec", "--command", "sh -c 'echo made > note.txt'", "--command", "cat note.txt", env=one_agent)
    assert shared.returncode == 0 and shared.stdout == "made\n", shared.stdout + shared.stderr
    # no shell reads the words: a ';' or '$(...)' is an argument like any other
    literal = run_cli("exec", "--command", "echo a; echo $(id)", env=one_agent)
    assert literal.returncode == 0 and literal.stdout == "a; echo $(id)\n", literal.stdout
    # the first failure ends the job with its status; what comes after it never runs
    stopped = run_cli("exec", "--command", "sh -c 'exit 4'", "--command", "echo never", env=one_agent)
    assert stopped.returncode == 4 and "never" not in stopped.stdout
    both = run_cli("exec", "--command", "true", "--", "/bin/true", env=one_agent)
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr
    unclosed = run_cli("exec", "--command", "echo 'oops", env=one_agent)
    assert unclosed.returncode == 2 and "the 1st one" in unclosed.stderr
