"""The cluster as users run it: `runink server` and `runink agent` processes on loopback, and
`runink up` / `down` (a 3-server raft group and 2 agents), driven through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from barn_cluster import free_ports
from fixture_types import CliRunner, FakeDist
from runink_processes import cluster_folder, server_and_agent, up_cluster, up_tls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the agent's linux executor needs root")


@pytest.fixture
def one_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A server (memory Barn) and one agent, as processes; yields the CLI's environment."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    with server_and_agent(tmp_path, env):
        yield env


def test_exec_runs_a_command_on_the_cluster_and_exits_with_its_status(
    one_server: dict[str, str], run_cli: CliRunner
) -> None:
    assert run_cli("herd", "create", "default", "--cpu", "2", env=one_server).returncode == 0
    ok = run_cli("exec", "--", "/bin/sh", "-c", "exit 0", env=one_server)
    assert ok.returncode == 0, ok.stderr
    failed = run_cli("exec", "--", "/bin/sh", "-c", "exit 3", env=one_server)
    assert failed.returncode == 3 and "FAILED: exit code 3" in failed.stderr
    timed_out = run_cli("exec", "--timeout", "1s", "--", "/bin/sleep", "30", env=one_server)
    assert timed_out.returncode == 124 and "DEADLINE_EXCEEDED" in timed_out.stderr
    nodes = json.loads(run_cli("nodes", "list", "--json", env=one_server).stdout)
    assert [(n["id"], n["ready"]) for n in nodes] == [("n1", True)]


def test_cancel_stops_a_running_slice(one_server: dict[str, str], run_cli: CliRunner, tmp_path: Path) -> None:
    assert run_cli("herd", "create", "default", env=one_server).returncode == 0
    marker = "sleep 61.987"  # (a command line no other process has)
    job = run_cli("exec", "--detach", "--", *marker.split(), env=one_server)
    job_id = job.stdout.strip()
    assert job.returncode == 0 and job_id.startswith("job-"), job.stderr
    deadline = time.monotonic() + 20
    while subprocess.run(["pgrep", "-f", marker], check=False, capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "the slice never started"
        time.sleep(0.1)
    assert run_cli("cancel", job_id, env=one_server).returncode == 0
    while subprocess.run(["pgrep", "-f", marker], check=False, capture_output=True).returncode == 0:
        assert time.monotonic() < deadline + 10, "the slice still runs after cancel"
        time.sleep(0.1)
    status = json.loads(run_cli("status", job_id, "--json", env=one_server).stdout)
    assert status["job"]["state"] == "CANCELLED"


def test_nodes_list_and_status_show_a_running_tasks_memory(one_server: dict[str, str], run_cli: CliRunner) -> None:
    """The agent samples its slices with its heartbeats: 50 MB a slice holds shows within seconds."""
    assert run_cli("herd", "create", "default", env=one_server).returncode == 0
    program = "x = bytearray(50_000_000); import time; time.sleep(30)"
    job = run_cli("exec", "--detach", "--", "/usr/bin/python3", "-c", program, env=one_server)
    job_id = job.stdout.strip()
    assert job.returncode == 0, job.stderr
    deadline = time.monotonic() + 20
    while True:
        (node,) = json.loads(run_cli("nodes", "list", "--json", env=one_server).stdout)
        tasks = (node.get("usage") or {}).get("tasks", {})
        if any(t["memory"] > 40_000_000 for t in tasks.values()):
            break
        assert time.monotonic() < deadline, f"no task's memory above 40 MB: {node.get('usage')}"
        time.sleep(0.2)
    assert node["usage"]["memory"] >= 40_000_000
    status = json.loads(run_cli("status", job_id, "--json", env=one_server).stdout)
    (task,) = status["tasks"]
    assert task["state"] == "RUNNING" and task["usage"]["memory"] > 40_000_000 and task["usage"]["processes"] >= 1
    listed = run_cli("nodes", "list", env=one_server).stdout
    assert " cpu, " in listed and "USE" in listed
    assert "running tasks: use" in run_cli("status", job_id, env=one_server).stdout
    assert run_cli("cancel", job_id, env=one_server).returncode == 0


def test_status_explain_says_why_a_task_waits(one_server: dict[str, str], run_cli: CliRunner) -> None:
    assert run_cli("herd", "create", "small", "--cpu", "1", env=one_server).returncode == 0
    refused = run_cli("exec", "--herd", "small", "--cpu", "2", "--", "/bin/true", env=one_server)
    assert refused.returncode != 0 and "quota" in refused.stderr  # past its herd's quota: refused at once
    assert "Traceback" not in refused.stderr
    labelled = run_cli("exec", "--herd", "small", "--cpu", "0.5", "--detach", "--", "/bin/true", env=one_server)
    assert labelled.returncode == 0


def test_a_herds_queue_is_bounded_and_describe_shows_it(one_server: dict[str, str], run_cli: CliRunner) -> None:
    """--max-queued 2: one slice runs, one waits for the quota, a third is refused in one
    line; once one ends the server's count (its watch's) takes one more."""
    made = run_cli("herd", "create", "q", "--max-slices", "1", "--max-queued", "2", env=one_server)
    assert made.returncode == 0, made.stderr
    detached = [run_cli("exec", "--herd", "q", "--detach", "--", "sleep", "61.5", env=one_server) for _ in range(2)]
    assert [d.returncode for d in detached] == [0, 0], [d.stderr for d in detached]
    refused = run_cli("exec", "--herd", "q", "--", "/bin/true", env=one_server)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "herd q: 2 tasks not ended, at most 2 (herd q)" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    described = json.loads(run_cli("herd", "describe", "q", "--json", env=one_server).stdout)
    assert described["used"]["not_ended"] == 2 and described["max_queued"] == 2
    assert "tasks not ended" in run_cli("herd", "describe", "q", env=one_server).stdout
    assert run_cli("cancel", detached[0].stdout.strip(), env=one_server).returncode == 0
    deadline = time.monotonic() + 20
    while (taken := run_cli("exec", "--herd", "q", "--detach", "--", "sleep", "61.5", env=one_server)).returncode:
        assert time.monotonic() < deadline, taken.stderr  # (the cancelled slice stops, then its slot frees)
        time.sleep(0.2)
    for job in (detached[1].stdout.strip(), taken.stdout.strip()):
        assert run_cli("cancel", job, env=one_server).returncode == 0


def test_an_admin_labels_a_node_and_a_job_asking_for_that_label_runs_there(
    one_server: dict[str, str], run_cli: CliRunner
) -> None:
    """`runink nodes label`: restricted labels, which no node's agent may claim for itself."""
    import httpx
    from runink_processes import admin_headers

    assert run_cli("herd", "create", "default", env=one_server).returncode == 0
    labelled = run_cli("nodes", "label", "n1", "restricted.runink.io/pool=gpu", env=one_server)
    assert labelled.returncode == 0 and "restricted.runink.io/pool=gpu" in labelled.stdout, labelled.stderr
    (node,) = json.loads(run_cli("nodes", "list", "--json", env=one_server).stdout)
    assert node["labels"]["restricted.runink.io/pool"] == "gpu"
    refused = run_cli("nodes", "label", "n1", "zone=a", env=one_server)
    assert refused.returncode != 0 and "restricted.runink.io/" in refused.stderr
    body = {"herd": "default", "command": ["/bin/true"], "node_labels": {"restricted.runink.io/pool": "gpu"}}
    base = f"http://{one_server['RUNINK_SERVER']}"
    answer = httpx.post(f"{base}/v1/jobs", json=body, headers=admin_headers(one_server), timeout=10)
    assert answer.status_code == 201, answer.text
    job = answer.json()["job"]["id"]
    deadline = time.monotonic() + 20
    while True:
        status = json.loads(run_cli("status", job, "--json", env=one_server).stdout)
        if status["job"]["state"] == "SUCCEEDED":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["tasks"][0]["node"] == "n1"
    # a herd kept to the nodes of another pool: its job waits, saying why, until n1 is in it
    kept = run_cli("herd", "create", "vault", "--node-label", "restricted.runink.io/pool=vault", env=one_server)
    assert kept.returncode == 0, kept.stderr
    loose = run_cli("herd", "node-labels", "vault", "zone=a", env=one_server)
    assert loose.returncode != 0 and "restricted.runink.io/" in loose.stderr and "Traceback" not in loose.stderr
    waiting = run_cli("exec", "--herd", "vault", "--detach", "--", "/bin/true", env=one_server).stdout.strip()
    deadline = time.monotonic() + 20
    while "label mismatch" not in (explained := run_cli("status", waiting, "--explain", env=one_server).stdout):
        assert time.monotonic() < deadline, explained
        time.sleep(0.2)
    assert "restricted.runink.io/pool='vault'" in explained
    assert (
        "runs on nodes with restricted.runink.io/pool=vault"
        in run_cli("herd", "describe", "vault", env=one_server).stdout
    )
    assert run_cli("nodes", "label", "n1", "restricted.runink.io/pool=vault", env=one_server).returncode == 0
    while json.loads(run_cli("status", waiting, "--json", env=one_server).stdout)["job"]["state"] != "SUCCEEDED":
        assert time.monotonic() < deadline + 20, run_cli("status", waiting, "--explain", env=one_server).stdout
        time.sleep(0.2)
    cleared = run_cli("herd", "node-labels", "vault", env=one_server)
    assert cleared.returncode == 0 and "runs on any node" in cleared.stdout
    # an admin caps what the node's agent says it has
    capped = run_cli("nodes", "capacity", "n1", "--cpus", "0.5", env=one_server)
    assert capped.returncode == 0 and "0.5 cores" in capped.stdout and "capped by an admin" in capped.stdout
    (node,) = json.loads(run_cli("nodes", "list", "--json", env=one_server).stdout)
    assert node["capacity"]["cpu"] == 0.5 and node["pinned"]["cpu"] == 0.5
    neither = run_cli("nodes", "capacity", "n1", env=one_server)
    assert neither.returncode != 0 and "--clear" in neither.stderr and "Traceback" not in neither.stderr
    lifted = run_cli("nodes", "capacity", "n1", "--clear", env=one_server)
    assert lifted.returncode == 0 and "capped" not in lifted.stdout


def test_a_server_listens_on_loopback_only_unless_told(run_cli: CliRunner) -> None:
    (port,) = free_ports(1)
    out = run_cli("server", "--api", f"0.0.0.0:{port}", "--plaintext")
    assert out.returncode != 0 and "--insecure-bind" in out.stderr and "Traceback" not in out.stderr
    # and not in plaintext unless told: TLS, or --plaintext said on purpose
    out = run_cli("server", "--api", f"127.0.0.1:{port}")
    assert out.returncode != 0 and "no TLS: give --tls-cert, --tls-key and --tls-ca" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_server_letting_anyone_in_stays_on_loopback_even_with_tls(run_cli: CliRunner, tmp_path: Path) -> None:
    made = run_cli("server", "--init", str(tmp_path / "pki"), "--name", "s0")
    assert made.returncode == 0, made.stderr
    tls = made.stdout.strip().splitlines()[-1].split()
    (port,) = free_ports(1)
    out = run_cli("server", "--api", f"0.0.0.0:{port}", "--insecure-dev", *tls)
    assert out.returncode != 0 and "--insecure-bind" in out.stderr and "Traceback" not in out.stderr


def test_up_down_a_raft_cluster_that_survives_its_leader_paused_then_killed(run_cli: CliRunner, tmp_path: Path) -> None:
    up = run_cli("up", "--servers", "3", "--agents", "2", "--json", "--dir", str(cluster_folder(tmp_path)))
    assert up.returncode == 0, up.stderr
    started = json.loads(up.stdout)
    try:
        assert len(started["api"]) == 3 and [a["name"] for a in started["agents"]] == ["agent-0", "agent-1"]
        assert run_cli("exec", "--", "/bin/true").returncode == 0  # no address given: the context says
        nodes = json.loads(run_cli("nodes", "list", "--json").stdout)
        assert sorted(n["id"] for n in nodes) == ["agent-0", "agent-1"]
        # pause the server whose Barn member leads (SIGSTOP, its member running on): the member
        # hands its lead over and another server schedules within seconds; then pause that one
        # too: the held-back members still vote, so the third leads and runs jobs; resumed,
        # both follow again, their members never restarted
        paused = _leading_server(started)
        _answers_name_the_scheduling_server(started, paused)
        running = run_cli("exec", "--detach", "--", "sleep", "2")
        assert running.returncode == 0, running.stderr
        members = {s["name"]: _member_pid(s) for s in started["servers"]}
        stopped: list[dict[str, Any]] = []
        try:
            for code in (4, 5):
                os.kill(paused["pid"], signal.SIGSTOP)
                stopped.append(paused)
                began = time.monotonic()
                again = run_cli("exec", "--", "/bin/sh", "-c", f"exit {code}")
                assert again.returncode == code, again.stderr
                assert time.monotonic() - began < 30
                leader = _leading_server(started)
                assert leader not in stopped
                assert all(_barn_state(s) == "follower" for s in stopped)  # (held back, voting)
                _answers_name_the_scheduling_server(started, leader, but=stopped)
                paused = leader
        finally:
            for server in stopped:
                os.kill(server["pid"], signal.SIGCONT)
        deadline = time.monotonic() + 30
        while json.loads(run_cli("status", running.stdout.strip(), "--json").stdout)["job"]["state"] != "SUCCEEDED":
            assert time.monotonic() < deadline, "the job running through the pauses did not succeed"
            time.sleep(0.2)
        assert {s["name"]: _member_pid(s) for s in started["servers"]} == members  # (none restarted)
        # kill the server whose Barn member leads; another one schedules within seconds
        leader = _leading_server(started)
        _answers_name_the_scheduling_server(started, leader)
        os.killpg(leader["pid"], signal.SIGKILL)
        began = time.monotonic()
        again = run_cli("exec", "--", "/bin/sh", "-c", "exit 5")
        assert again.returncode == 5, again.stderr
        assert time.monotonic() - began < 30
        # a paused server stops on `runink down` as the others do (its SIGTERM stayed pending
        # until down's SIGKILL, 30 s later)
        survivor = next(s for s in started["servers"] if s is not leader)
        os.kill(survivor["pid"], signal.SIGSTOP)
    finally:
        began = time.monotonic()
        down = run_cli("down")
    assert down.returncode == 0, down.stderr
    assert time.monotonic() - began < 25, "down waited for its SIGKILL"
    for item in [*started["servers"], *started["agents"]]:
        with pytest.raises(ProcessLookupError):
            os.killpg(item["pid"], 0)


HANGING_SCALER = """
import os, time
from pathlib import Path
from runink.core.interfaces.scaler import Scaler

class HangsWhenMarked(Scaler):
    '''A scaler whose look hangs while the file $HANG_MARK.<its server's pid> is there
    (120 s at most): a chore of the leader's control loop that never returns.'''
    name = "hangs-when-marked"
    options_schema = {}

    def nodes(self):
        mark = Path(os.environ["HANG_MARK"] + "." + str(os.getpid()))
        deadline = time.monotonic() + 120
        while mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return []

    def scale_up(self, count):
        return []

    def remove(self, node_id):
        pass
"""


def test_a_leader_whose_scheduling_hangs_hands_its_lead_over(
    run_cli: CliRunner, tmp_path: Path, fake_dist: FakeDist
) -> None:
    """A server whose process ran but whose control loop hung (here: its autoscaler's look
    never returns) kept its Barn member leading, and nothing was scheduled anywhere. Past
    `[scheduler] hung_after` it stops beating its member, which hands its lead over: another
    server schedules, jobs run, no member is restarted."""
    site = fake_dist(
        "hanging-scaler", "1.0", {"runink.scalers": {"hangs-when-marked": "hanging_scaler:HangsWhenMarked"}},
        {"hanging_scaler.py": HANGING_SCALER},
    )  # fmt: skip
    mark = tmp_path / "hang"
    env = {
        "PYTHONPATH": str(site),
        "HANG_MARK": str(mark),
        "RUNINK_SCALING__DRIVER": "hangs-when-marked",
        "RUNINK_SCHEDULER__HUNG_AFTER": "2s",
    }
    with up_cluster(run_cli, tmp_path, 3, 1, env) as cluster:
        started = cluster.started
        members = {s["name"]: _member_pid(s) for s in started["servers"]}
        hung = _leading_server(started)
        hang = Path(f"{mark}.{hung['pid']}")
        hang.touch()
        try:
            began = time.monotonic()
            while _leading_server(started) == hung:
                # its look starts within 1 s; hung after 2 s more; its member silent 5 s later
                assert time.monotonic() - began < 20, "the hung server's member kept its lead"
                time.sleep(0.2)
            leader = _leading_server(started)
            assert _barn_state(hung) == "follower"  # (held back, voting)
            _answers_name_the_scheduling_server(started, leader, but=[hung])
            again = run_cli("exec", "--", "/bin/sh", "-c", "exit 4", env=cluster.env)
            assert again.returncode == 4, again.stderr
            log = (cluster.folder / f"{hung['name']}.log").read_text()
            assert "the control loop's round has run for 2 s or more ([scheduler] hung_after)" in log
        finally:
            hang.unlink()
        deadline = time.monotonic() + 10
        while "the control loop's round ended after" not in (cluster.folder / f"{hung['name']}.log").read_text():
            assert time.monotonic() < deadline, "the hung round did not end once released"
            time.sleep(0.2)
        assert run_cli("exec", "--", "/bin/true", env=cluster.env).returncode == 0
        assert {s["name"]: _member_pid(s) for s in started["servers"]} == members  # (none restarted)


def _answers_name_the_scheduling_server(
    started: dict[str, Any],
    leader: dict[str, Any],
    but: Sequence[dict[str, Any]] = (),
) -> None:
    """Every server's answers (``but``'s: they are paused) name the leader's API
    (X-Runink-Scheduler), within seconds of its claim: clients submit there."""
    import httpx

    deadline = time.monotonic() + 10
    with httpx.Client(verify=up_tls(), timeout=10) as http:
        for server in started["servers"]:
            while server not in but:
                named = http.get(server["api"] + "/healthz").headers.get("x-runink-scheduler")
                if named == leader["api"]:
                    break
                assert time.monotonic() < deadline, f"{server['name']} names {named}, not {leader['api']}"
                time.sleep(0.2)


def _leading_server(started: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:  # (an election may be under way)
        for server in started["servers"]:
            if _barn_state(server) == "leader":
                return server
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.2)


def _member_pid(server: dict[str, Any]) -> int:
    """The pid of the server's own Barn member (its child running `barn serve`)."""
    for child in Path(f"/proc/{server['pid']}/task/{server['pid']}/children").read_text().split():
        if b"barn\0serve" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"{server['name']}: no Barn member")


def _barn_state(server: dict[str, Any]) -> str:
    """ "leader", "follower", ... as its Barn member says, or "" when it does not answer."""
    import httpx

    try:
        status = httpx.get(f"https://{server['barn']}/v1/status", timeout=2, verify=up_tls()).json()
    except httpx.HTTPError:
        return ""
    return str(status.get("state", ""))


def test_up_refuses_a_folder_that_holds_something(run_cli: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    out = run_cli("up", "--servers", "1", "--agents", "0", "--dir", str(folder))
    assert out.returncode != 0 and "not an empty folder" in out.stderr and "Traceback" not in out.stderr
    assert (folder / "keep.txt").read_text() == "mine"


def test_up_refuses_a_folder_inside_the_one_its_pipelines_may_be_in(run_cli: CliRunner, tmp_path: Path) -> None:
    """A pipeline's slices are granted its folder: a cluster folder in it (its keys, its Barn
    journals, every run's output) would be theirs to read (a review's layout)."""
    for given, root in ((tmp_path / "c", ()), (tmp_path / "p" / "c", ("--root", str(tmp_path / "p")))):
        (tmp_path / "p").mkdir(exist_ok=True)
        out = run_cli("up", "--servers", "1", "--agents", "0", "--dir", str(given), *root)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert f"--dir {given}: inside {given.parent}, where the default herd's pipelines may be" in out.stderr
        assert not given.exists() and not (tmp_path / "xdg" / "runink" / "cluster.json").exists()


def test_up_gives_its_default_herd_the_current_folder_unless_anyone_may_write_it(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    """A herd's pipelines may be only in its roots: `runink up` gives `default` the folder it
    runs in, or `--root`'s, never one anyone may write (the nodes refuse a .dsl there), and
    refuses a `--root` that is no folder in one line."""
    missing = run_cli("up", "--servers", "1", "--agents", "0", "--root", str(tmp_path / "nope"))
    assert missing.returncode != 0 and "not a folder" in missing.stderr and "Traceback" not in missing.stderr
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    up = run_cli("up", "--servers", "1", "--agents", "0", "--json", "--dir", str(tmp_path / "c"), cwd=shared, env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert json.loads(up.stdout)["roots"] == [] and "no folder (--root)" in up.stderr
        (herd,) = json.loads(run_cli("herd", "list", "--json", env=env).stdout)
        assert herd["name"] == "default" and herd["roots"] == []
    finally:
        run_cli("down", env=env)


def test_down_stops_only_what_up_started_and_removes_only_its_folder(run_cli: CliRunner, tmp_path: Path) -> None:
    """A stale context (a reboot since, a pid reused by someone else's process, a folder that
    is not up's): `down` kills nothing it did not start and deletes nothing it did not make."""
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    context = tmp_path / "xdg" / "runink" / "cluster.json"
    context.parent.mkdir(parents=True)
    stale = {"pid": bystander.pid, "start": 1, "name": "s0"}  # its pid, another process's start time
    context.write_text(json.dumps({"dir": str(folder), "servers": [stale], "agents": []}))
    try:
        out = run_cli("down")
        assert out.returncode == 0, out.stderr
        assert bystander.poll() is None, "down killed a process it did not start"
        assert (folder / "keep.txt").read_text() == "mine"
        assert not context.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_the_cli_binds_roles_mints_tokens_and_reads_the_audit_log(
    one_server: dict[str, str], run_cli: CliRunner
) -> None:
    """As the cluster admin (the env's RUNINK_TOKEN), then as a runner of one herd."""
    whoami = json.loads(run_cli("whoami", "--json", env=one_server).stdout)
    assert whoami["subject"] == "admin" and whoami["cluster_roles"] == ["cluster-admin"]
    assert run_cli("herd", "create", "team", env=one_server).returncode == 0
    bound = run_cli("rbac", "bind", "team", "viewer", "--user", "alice@example.com", env=one_server)
    assert bound.returncode == 0, bound.stderr
    listed = json.loads(run_cli("rbac", "list", "team", "--json", env=one_server).stdout)
    assert [(b["kind"], b["subject"], b["role"]) for b in listed] == [("user", "alice@example.com", "viewer")]
    minted = run_cli(
        "token", "create", "--herd", "team", "--role", "runner", "--name", "ci", "--ttl", "10m", env=one_server
    )
    assert minted.returncode == 0 and "sa:ci, runner in herd team" in minted.stderr
    runner = {**one_server, "RUNINK_TOKEN": minted.stdout.strip()}
    ran = run_cli("exec", "--herd", "team", "--", "/bin/echo", "as ci", env=runner)
    assert ran.returncode == 0 and ran.stdout == "as ci\n", ran.stderr
    refused = run_cli("nodes", "list", env=runner)
    assert refused.returncode != 0 and "403 sa:ci may not nodes.read in the cluster" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert run_cli("exec", "--herd", "default", "--", "/bin/true", env=runner).returncode != 0  # another herd
    audit = json.loads(run_cli("audit", "--json", env=one_server).stdout)
    submits = [(r["subject"], r["herd"], r["allowed"]) for r in audit if r["action"] == "jobs.submit"]
    assert submits == [("sa:ci", "team", True), ("sa:ci", "default", False)]
    assert run_cli("audit", env=runner).returncode != 0  # (cluster admins only)
    # revoked (the token itself, from stdin): refused from then on, in one line
    token_file = Path(one_server["XDG_CONFIG_HOME"]).parent / "ci.token"
    token_file.write_text(runner["RUNINK_TOKEN"] + "\n")
    revoked = run_cli("token", "revoke", "--token-file", str(token_file), env=one_server)
    assert revoked.returncode == 0 and revoked.stdout.startswith("revoked token ") and "of sa:ci" in revoked.stdout
    after = run_cli("exec", "--herd", "team", "--", "/bin/true", env=runner)
    assert after.returncode != 0 and "401" in after.stderr and "revoked" in after.stderr
    assert "Traceback" not in after.stderr
    nothing = run_cli("token", "revoke", env=one_server)
    assert nothing.returncode == 2 and "give one of TOKEN" in nothing.stderr
    # admission and cost: a herd's own bound refuses in one line; runink cost reports what ran
    made = run_cli("herd", "create", "lean", "--max-job-cpu", "1", "--budget", "5", env=one_server)
    assert made.returncode == 0, made.stderr
    over = run_cli("exec", "--herd", "lean", "--cpu", "2", "--", "/bin/true", env=one_server)
    assert (
        over.returncode != 0
        and "422 herd lean: task 'command': cpu 2 cores is over the per-job bound 1 cores" in over.stderr
    )
    assert len(over.stderr.strip().splitlines()) == 1
    ran = run_cli("exec", "--herd", "lean", "--cpu", "1", "--timeout", "1m", "--", "/bin/true", env=one_server)
    assert ran.returncode == 0 and "worst-case cost" in ran.stderr, ran.stderr
    cost = json.loads(run_cli("cost", "--by", "user", "--herd", "lean", "--json", env=one_server).stdout)
    (row,) = cost["rows"]
    assert row["group"] == "admin" and row["jobs"] == 1 and row["estimate"] > 0 and row["actual"] > 0
    assert "ACTUAL" in run_cli("cost", env=one_server).stdout
