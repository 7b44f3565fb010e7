"""The REST API over real sockets: uvicorn on 127.0.0.1 in a thread, a memory-Barn store, httpx
as the client, and the real scheduler between calls for --explain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import typer

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, NodeRecord, RunState, keys
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.server.api import MAX_BODY, create_app
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

GiB = 1024**3


@dataclass
class Cluster:
    client: httpx.Client
    store: ClusterStore
    lifecycle: Lifecycle
    scheduler: Scheduler

    def add_node(self, node_id: str, cpu: float = 4, **labels: str) -> None:
        self.lifecycle.register_node(NodeRecord(id=node_id, capacity=Amount(cpu=cpu, memory=16 * GiB), labels=labels))

    def stored_keys(self) -> list[str]:
        return [kv.key for kv in self.store.barn.scan("/")]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    store = ClusterStore(MemoryBarn())
    lifecycle = Lifecycle(store)
    server, thread = serve_api(create_app(lifecycle, store), "127.0.0.1", 0)
    try:
        with (
            plugin_manager() as manager,
            httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as client,
        ):
            yield Cluster(client, store, lifecycle, Scheduler(store, manager, load_driver(SchedulerPolicy, "spread")))
    finally:
        stop_api(server, thread)
    assert not thread.is_alive()


def make_herd(client: httpx.Client, name: str = "team", **quota: float) -> None:
    """The herd, its pipelines in /p (where this file's pipeline submissions say they are)."""
    response = client.post("/v1/herds", json={"name": name, "quota": quota, "roots": ["/p"]})
    assert response.status_code == 201, response.text


def submit(client: httpx.Client, herd: str = "team", cpu: float = 1, **fields: object) -> str:
    body = {"herd": herd, "command": ["/bin/echo", "hi"], "resources": {"cpu": cpu}} | fields
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job"]["id"]
    return job_id


def test_use_counts_a_cancelled_slice_until_its_agent_says_it_stopped(cluster: Cluster) -> None:
    """As the scheduler counts it: `runink herd describe` and `runink nodes list` showed
    nothing used while a cancelled slice that ignores SIGTERM ran on (a review's run)."""
    make_herd(cluster.client, cpu=8)
    cluster.add_node("n1")
    job_id = submit(cluster.client, cpu=2)
    assert cluster.scheduler.run_pass(now=0.0).placed
    assert cluster.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    described = cluster.client.get("/v1/herds/team").json()
    assert (described["used"]["cpu"], described["used"]["slices"]) == (2, 1)
    (node,) = cluster.client.get("/v1/nodes").json()["nodes"]
    assert node["used"]["slices"] == 1
    task = cluster.store.job_tasks(cluster.store.job(job_id).record)[0].record
    assert cluster.lifecycle.report("team", task.id, task.attempt, task.token, RunState.CANCELLED)
    assert cluster.client.get("/v1/herds/team").json()["used"]["slices"] == 0


def test_an_admin_caps_a_nodes_capacity_through_the_api(cluster: Cluster) -> None:
    make_herd(cluster.client, cpu=8)
    cluster.add_node("n1", cpu=8)
    pinned = cluster.client.put("/v1/nodes/n1/capacity", json={"pinned": {"cpu": 1}})
    assert pinned.status_code == 200 and pinned.json()["capacity"]["cpu"] == 1, pinned.text
    assert cluster.client.put("/v1/nodes/n1/capacity", json={"pinned": {"cpu": -1}}).status_code == 422
    refused = cluster.client.post("/v1/jobs", json={"herd": "team", "command": ["/bin/true"], "resources": {"cpu": 2}})
    assert refused.status_code == 409 and "n1: cpu 2 > capacity 1" in refused.text  # (never fits: nothing stored)
    submit(cluster.client, cpu=1)
    job_id = submit(cluster.client, cpu=1)
    assert len(cluster.scheduler.run_pass(now=0.0).placed) == 1
    explain = cluster.client.get(f"/v1/jobs/{job_id}", params={"explain": "true"}).json()["tasks"][0]["explain"]
    assert any("n1: cpu 1 > free 0" in line for line in explain), explain
    lifted = cluster.client.put("/v1/nodes/n1/capacity", json={"pinned": None})
    assert lifted.json()["capacity"]["cpu"] == 8 and lifted.json()["pinned"] is None
    assert cluster.scheduler.run_pass(now=0.0).placed


def test_herd_job_explain_cancel_through_the_api(cluster: Cluster) -> None:
    client = cluster.client
    make_herd(client, "team", cpu=8, max_slices=4)
    assert [h["name"] for h in client.get("/v1/herds").json()["herds"]] == ["team"]
    cluster.add_node("big", cpu=4)
    cluster.add_node("small", cpu=1)

    job_id = submit(client, cpu=2, priority=5, retries=2)
    listed = client.get("/v1/jobs", params={"herd": "team", "state": "PENDING"}).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert client.get("/v1/jobs", params={"state": "RUNNING"}).json()["jobs"] == []

    plain = client.get(f"/v1/jobs/{job_id}").json()
    assert plain["job"]["state"] == "PENDING"
    assert plain["tasks"][0]["command"] == ["/bin/echo", "hi"]
    assert "explain" not in plain["tasks"][0]

    result = cluster.scheduler.run_pass(now=0.0)
    assert list(result.placed.values()) == ["big"]
    explained = client.get(f"/v1/jobs/{job_id}", params={"explain": "true"}).json()
    task = explained["tasks"][0]
    assert task["state"] == "SCHEDULED" and task["node"] == "big"
    assert task["explain"][0].startswith("chosen big")
    assert any(line.startswith("small:") for line in task["explain"]), task["explain"]
    assert task["pending_reason"] == ""

    described = client.get("/v1/herds/team").json()
    assert described["quota"]["cpu"] == 8
    assert described["used"] == {"cpu": 2, "memory": 0, "gpu": 0, "pids": 0, "slices": 1, "not_ended": 1}
    nodes = {n["id"]: n for n in client.get("/v1/nodes").json()["nodes"]}
    assert nodes["big"]["used"]["slices"] == 1 and nodes["small"]["used"]["slices"] == 0

    # a job that fits nowhere now waits with its reason, shown by explain
    waiting = submit(client, cpu=3)
    cluster.scheduler.run_pass(now=0.0)
    waiting_task = client.get(f"/v1/jobs/{waiting}?explain=true").json()["tasks"][0]
    assert waiting_task["state"] == "PENDING"
    assert "no node fits" in waiting_task["pending_reason"]

    response = client.delete("/v1/herds/team")
    assert response.status_code == 409 and "has not ended" in response.json()["detail"]

    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["job"]["state"] == "CANCELLED"
    assert cluster.store.task("team", plain["tasks"][0]["id"]).record.state is RunState.CANCELLED
    client.post(f"/v1/jobs/{waiting}/cancel")
    assert client.delete("/v1/herds/team").status_code == 204
    assert client.get("/v1/herds/team").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert cluster.stored_keys() == [keys.node("big"), keys.node("small")]


def test_nodes_cordon_drain_uncordon(cluster: Cluster) -> None:
    cluster.add_node("n1")
    client = cluster.client
    assert client.post("/v1/nodes/n1/cordon").json()["cordoned"] is True
    assert client.post("/v1/nodes/n1/drain").json()["draining"] is True
    node = client.post("/v1/nodes/n1/uncordon").json()
    assert node["cordoned"] is False and node["draining"] is False
    assert cluster.store.node("n1").record.schedulable


def test_no_answer_carries_a_nodes_incarnation(cluster: Cluster) -> None:
    """It is the agent's credential: a heartbeat carrying it ties a gRPC stream to the node."""
    cluster.add_node("n1")
    secret = cluster.store.node("n1").record.incarnation
    assert secret
    client = cluster.client
    answers = [
        client.get("/v1/nodes"),
        client.get("/v1/nodes/n1"),
        client.post("/v1/nodes/n1/cordon"),
        client.post("/v1/nodes/n1/drain"),
        client.post("/v1/nodes/n1/uncordon"),
    ]
    for answer in answers:
        assert answer.status_code == 200 and secret not in answer.text and "incarnation" not in answer.text


def test_a_herd_larger_than_one_barn_transaction_is_deleted(cluster: Cluster) -> None:
    """A Barn caps a transaction at MAX_TXN_OPS (4,096) operations: the delete goes in batches."""
    make_herd(cluster.client, "team")
    for _ in range(1400):  # 1,400 jobs + 1,400 tasks + 1,400 job index entries
        job = cluster.lifecycle.submit_command("team", ["/bin/true"])
        cluster.lifecycle.cancel(job.id)
    assert cluster.client.delete("/v1/herds/team").status_code == 204
    assert cluster.stored_keys() == []
    make_herd(cluster.client, "team")  # the name is free again


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/job-nope"),
        ("POST", "/v1/jobs/job-nope/cancel"),
        ("GET", "/v1/herds/nope"),
        ("DELETE", "/v1/herds/nope"),
        ("GET", "/v1/jobs?herd=nope"),
        ("GET", "/v1/nodes/nope"),
        ("POST", "/v1/nodes/nope/cordon"),
        ("POST", "/v1/nodes/nope/uncordon"),
        ("POST", "/v1/nodes/nope/drain"),
    ],
)
def test_unknown_names_are_404(cluster: Cluster, method: str, path: str) -> None:
    response = cluster.client.request(method, path)
    assert response.status_code == 404, response.text
    assert "nope" in response.json()["detail"]


def test_submission_to_unknown_herd_is_404(cluster: Cluster) -> None:
    response = cluster.client.post("/v1/jobs", json={"herd": "ghost", "command": ["/bin/true"]})
    assert response.status_code == 404
    assert response.json() == {"detail": "herd 'ghost': no such herd"}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {"herd": "team", "command": ["/bin/true"], "resources": {"cpu": -1}},
            "body.resources.cpu: Input should be greater than or equal to 0",
        ),
        (
            {"herd": "team", "command": []},
            "body: Value error, give command (one program and its arguments) or commands",
        ),
        (
            {"herd": "team", "command": ["/bin/true"], "commands": [["/bin/true"]]},
            "body: Value error, give command (one program and its arguments) or commands",
        ),
        ({"herd": "team", "commands": [["/bin/true"], []]}, "body.commands.1: List should have at least 1 item"),
        ({"herd": "team", "command": ["/bin/true"], "shell": True}, "body.shell: Extra inputs are not permitted"),
        (
            {"herd": "team", "command": ["/bin/true"], "resources": {"cpu": 1, "disk": 1}},
            "body.resources.disk: Extra inputs are not permitted",
        ),
        ({"herd": "team", "command": ["a\0b"]}, "body: command[0]: contains a NUL byte"),
        # labels show as they are (a pending reason, --explain): no line break or NUL
        (
            {"herd": "team", "command": ["/bin/true"], "node_labels": {"gpu\nFAKE: chosen": "yes"}},
            "body.node_labels.gpu FAKE: chosen.[key]: String should match pattern",  # (shown on one line)
        ),
        (
            {"herd": "team", "command": ["/bin/true"], "node_labels": {"gpu": "yes\0"}},
            "body.node_labels.gpu: String should match pattern",
        ),
        ({"herd": "Bad Name", "command": ["/bin/true"]}, "body.herd 'Bad Name': expected 1-63 lower-case"),
        ({"command": ["/bin/true"]}, "body.herd: Field required"),
        # each of its task's writes carries it, and a scheduler pass writes many tasks
        (
            {"herd": "team", "commands": [["/bin/echo", "x" * 100_000]] * 3},
            "body: Value error, the command lines are 300,033 bytes in all, at most 262,144",
        ),
    ],
)
def test_malformed_submission_is_422_naming_the_field(cluster: Cluster, body: dict[str, object], detail: str) -> None:
    make_herd(cluster.client)
    response = cluster.client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    got = response.json()["detail"]
    assert isinstance(got, str) and "\n" not in got
    assert got.startswith(detail), got
    assert [k for k in cluster.stored_keys() if "/jobs/" in k] == []


def test_malformed_json_and_queries_are_422(cluster: Cluster) -> None:
    client = cluster.client
    response = client.post("/v1/herds", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"].startswith("body.")
    response = client.get("/v1/jobs", params={"state": "DONE"})
    assert response.status_code == 422 and response.json()["detail"].startswith("query.state: Input should be")
    response = client.post("/v1/herds", json={"name": "t", "quota": {"cpu": -2}})
    assert response.json()["detail"] == "body.quota.cpu: Input should be greater than or equal to 0"
    assert (
        client.get("/v1/nodes/Bad!")
        .json()["detail"]
        .startswith("path.node_id 'Bad!': expected 1-63 lower-case letters")
    )


def test_past_quota_or_never_fitting_submission_is_409_and_stores_nothing(cluster: Cluster) -> None:
    make_herd(cluster.client, "team", cpu=2)
    before = cluster.stored_keys()
    response = cluster.client.post("/v1/jobs", json={"herd": "team", "command": ["/bin/true"], "resources": {"cpu": 3}})
    assert response.status_code == 409
    assert response.json()["detail"] == "herd 'team': the task alone exceeds the herd's quota: cpu 3 > quota 2"
    cluster.add_node("n1", cpu=1)
    before = cluster.stored_keys()
    response = cluster.client.post("/v1/jobs", json={"herd": "team", "command": ["/bin/true"], "resources": {"cpu": 2}})
    assert response.status_code == 409
    assert "can never fit any node (n1: cpu 2 > capacity 1)" in response.json()["detail"]
    assert cluster.stored_keys() == before


def test_a_pipeline_colocated_with_an_unknown_scenario_is_409_and_stores_nothing(cluster: Cluster) -> None:
    make_herd(cluster.client, "team")
    before = cluster.stored_keys()
    tasks = [{"scenario": "a"}, {"scenario": "b", "colocate_with": "ghost"}]
    response = cluster.client.post("/v1/pipelines", json={"herd": "team", "pipeline": "/p/p.dsl", "tasks": tasks})
    assert response.status_code == 409
    assert response.json()["detail"] == (
        "pipeline /p/p.dsl: scenario 'b': colocate_with 'ghost' is no scenario of this submission"
    )
    assert cluster.stored_keys() == before


@pytest.mark.parametrize(
    ("tasks", "detail"),
    [
        ([{"scenario": "a"}, {"scenario": "b", "resources": {"cpu": -1}}], "body.tasks.1.resources.cpu: Expected"),
        ([{"scenario": "a", "retries": "many"}], "body.tasks.0.retries: Expected `int`"),
        ([{"scenario": "a", "shell": True}], "body.tasks.0.shell: not a known field"),
        ([{"after": []}], "body.tasks.0.scenario: required"),
        ([{"scenario": "a", "secrets": ["s", "s"]}], "body.tasks.0: secret 's' named twice"),
        ([{"scenario": "a"}, {"scenario": "b", "after": ["a"] * 1000}], "body.tasks.1: after 'a' named twice"),
        ([{"scenario": "a", "local_input": {"scenario": "b", "path": "/d\n"}}], "body.tasks.0.local_input: path:"),
        ([{"scenario": "a", "node_labels": {"gpu": "y\r\nx"}}], "body.tasks.0.node_labels"),
        ([{"scenario": "a", "node_labels": {"k": "v" * 254}}], "body.tasks.0.node_labels"),
        (["a"], "body.tasks.0: Input should be a valid dictionary"),  # (FastAPI's own check first)
    ],
)
def test_a_malformed_pipeline_task_is_422_naming_its_field(cluster: Cluster, tasks: list[object], detail: str) -> None:
    """A pipeline's tasks are records the API checks itself (not pydantic models): the same one
    line as any other malformed body, naming the task and its field; nothing is stored."""
    make_herd(cluster.client, "team")
    before = cluster.stored_keys()
    response = cluster.client.post("/v1/pipelines", json={"herd": "team", "pipeline": "/p/p.dsl", "tasks": tasks})
    assert response.status_code == 422, response.text
    got = response.json()["detail"]
    assert got.startswith(detail) and "\n" not in got, got
    assert cluster.stored_keys() == before


def test_a_pipeline_outside_its_herds_roots_is_403_and_roots_are_a_cluster_admins(cluster: Cluster) -> None:
    """Each scenario's slice is granted its .dsl's whole folder: a herd's pipelines may be only
    where a cluster admin said (a member once ran another herd's pipeline, and one in /tmp
    granted its slices all of /tmp). The node checks again (tests/test_pipeline_file.py)."""
    make_herd(cluster.client, "team")
    before = cluster.stored_keys()
    tasks = [{"scenario": "a"}]
    for path in ("/q/p.dsl", "/p/../q/p.dsl", "/pp/p.dsl", "/p"):
        response = cluster.client.post("/v1/pipelines", json={"herd": "team", "pipeline": path, "tasks": tasks})
        assert response.status_code in (403, 422), (path, response.text)
    assert response.status_code == 422  # ("/p": not a .dsl path)
    refused = cluster.client.post("/v1/pipelines", json={"herd": "team", "pipeline": "/q/p.dsl", "tasks": tasks})
    assert refused.json()["detail"] == (
        "herd team: /q/p.dsl is not in a folder its pipelines may be in (/p; a cluster admin sets them: "
        "runink herd roots team DIR...)"
    )
    assert cluster.stored_keys() == before
    changed = cluster.client.put("/v1/herds/team/roots", json={"roots": ["/q/", "/q", "/srv/x/../y"]})
    assert changed.status_code == 200 and changed.json()["roots"] == ["/q", "/srv/y"]
    taken = cluster.client.post("/v1/pipelines", json={"herd": "team", "pipeline": "/q/p.dsl", "tasks": tasks})
    assert taken.status_code == 201, taken.text
    (task,) = [kv for kv in cluster.stored_keys() if "/tasks/" in kv]
    assert json.loads(cluster.store.barn.get(task).value)["scenario"]["roots"] == ["/q", "/srv/y"]  # (for the node)
    for bad in (["/"], ["relative"], ["/a\n"], ["/x"] * 65):
        assert cluster.client.put("/v1/herds/team/roots", json={"roots": bad}).status_code == 422, bad


def test_duplicate_herd_is_409(cluster: Cluster) -> None:
    make_herd(cluster.client, "team")
    response = cluster.client.post("/v1/herds", json={"name": "team"})
    assert response.status_code == 409 and response.json()["detail"] == "herd 'team' exists already"


def test_oversized_body_is_413(cluster: Cluster) -> None:
    make_herd(cluster.client)
    big = {"herd": "team", "command": ["x" * 1000] * (MAX_BODY // 1000 + 10)}
    response = cluster.client.post("/v1/jobs", json=big)
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {MAX_BODY} bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as the bytes arrive
        yield b'{"herd": "team", "command": ["'
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"y" * 65536
        yield b'"]}'

    response = cluster.client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert cluster.client.get("/v1/jobs").json()["jobs"] == []


def test_openapi_lists_the_v1_paths(cluster: Cluster) -> None:
    document = cluster.client.get("/openapi.json").json()
    assert {
        "/v1/herds",
        "/v1/herds/{name}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/nodes",
        "/v1/nodes/{node_id}",
        "/v1/nodes/{node_id}/cordon",
        "/v1/nodes/{node_id}/uncordon",
        "/v1/nodes/{node_id}/drain",
    } <= set(document["paths"])
    assert cluster.client.get("/docs").status_code == 200


def test_openapi_describes_a_pipeline_task(cluster: Cluster) -> None:
    # the tasks are checked as records (msgspec), not by FastAPI: their schema is written in
    document = cluster.client.get("/openapi.json").json()
    tasks = document["components"]["schemas"]["PipelineIn"]["properties"]["tasks"]
    task = tasks["items"]
    assert task["required"] == ["scenario"] and task["additionalProperties"] is False
    assert {"scenario", "after", "resources", "timeout", "retries", "local_input", "secrets"} <= set(task["properties"])
    assert task["properties"]["resources"]["properties"]["memory"]["type"] == "integer"  # nested, in place
    assert "$ref" not in json.dumps(tasks) and "$defs" not in json.dumps(document)
    # Python's end of text (\Z) is written as the end OpenAPI's regex dialect knows
    secret = task["properties"]["secrets"]["items"]["pattern"]
    assert secret.endswith("$") and "\\Z" not in secret


def test_conflict_is_503_with_retry_after_and_a_fault_is_one_line(cluster: Cluster) -> None:
    make_herd(cluster.client)
    cluster.add_node("n1")
    job_id = submit(cluster.client)

    def always_changed(read: object, writes: object) -> int:
        from runink.core.control.store import Conflict

        raise Conflict("a record changed since it was read")

    cluster.store.commit = always_changed  # type: ignore[method-assign]
    cluster.lifecycle.cancel_within = 0.2  # (it tries for a while: 5 s)
    response = cluster.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"

    cluster.store.barn.put(keys.node("n2"), b"{garbage")
    response = cluster.client.get("/v1/nodes")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error: RuninkError"}


def test_non_loopback_address_is_refused() -> None:
    store = ClusterStore(MemoryBarn())
    with pytest.raises(ValueError, match="loopback only"):
        serve_api(create_app(Lifecycle(store), store), "0.0.0.0", 0)


def test_a_submission_too_large_to_store_is_413_and_stores_nothing(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Barn refusing a transaction for its size was a 503 ("try again": it never would
    succeed); it is refused before it is sent now, as what it is."""
    from runink.core.control import store as store_module

    make_herd(cluster.client)
    cluster.add_node("n1")
    before = cluster.stored_keys()
    monkeypatch.setattr(store_module, "MAX_COMMIT_BYTES", 20_000)
    response = cluster.client.post("/v1/jobs", json={"herd": "team", "command": ["/bin/echo", "x" * 30_000]})
    assert response.status_code == 413, response.text
    assert response.json()["detail"].startswith("too large to store: ")
    assert cluster.stored_keys() == before


def test_job_lists_come_a_page_at_a_time_in_submission_order_across_herds(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A herd's whole history was one answer (and one read of every record on the server)."""
    make_herd(cluster.client, "team")
    make_herd(cluster.client, "other")
    herd_of = {submit(cluster.client, herd): herd for herd in ["team", "other"] * 4}
    submitted = sorted(herd_of)
    cluster.client.post(f"/v1/jobs/{submitted[2]}/cancel").raise_for_status()
    pages, after = [], None
    while True:
        answer = cluster.client.get("/v1/jobs", params={"limit": 3} | ({"after": after} if after else {})).json()
        pages.append([job["id"] for job in answer["jobs"]])
        after = answer["next"]
        if after is None:
            break
    assert pages == [submitted[:3], submitted[3:6], submitted[6:]]
    assert cluster.client.get("/v1/jobs", params={"limit": 8}).json()["next"] is None  # exactly all: no empty page
    one_herd = cluster.client.get("/v1/jobs", params={"herd": "team", "after": submitted[0]}).json()
    assert [j["id"] for j in one_herd["jobs"]] == [j for j in submitted[1:] if herd_of[j] == "team"]
    # a state few jobs are in: a page reads a bounded number of records, says where to go on
    monkeypatch.setattr("runink.core.control.store.JOBS_READ_PER_PAGE", 2)
    real_scan, read = cluster.store.barn.scan, [0]

    def counted(prefix: str, **kwargs: Any) -> Any:
        found = real_scan(prefix, **kwargs)
        read[0] += len(found) if prefix.endswith("/jobs/") else 0
        return found

    monkeypatch.setattr(cluster.store.barn, "scan", counted)
    found, after, rounds = [], None, 0
    while rounds < 10:
        rounds += 1
        read[0] = 0
        params = {"state": "CANCELLED", "limit": 1} | ({"after": after} if after else {})
        answer = cluster.client.get("/v1/jobs", params=params).json()
        assert read[0] <= 4, read  # (2 herds' first scans of 2: the bound, then the page ends)
        found += [job["id"] for job in answer["jobs"]]
        if (after := answer["next"]) is None:
            break
    assert found == [submitted[2]] and rounds > 2
    for bad in ({"limit": 0}, {"limit": 5001}, {"after": "../x"}):
        assert cluster.client.get("/v1/jobs", params=bad).status_code == 422, bad


def test_jobs_list_reads_page_after_page_up_to_its_limit(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from runink.core.cli import jobs_cmd

    class Api:  # what `runink jobs list` calls, over this test's server
        def call(self, method: str, path: str, **params: object) -> object:
            kept = {k: v for k, v in params.items() if v is not None}
            return cluster.client.request(method, path, params=kept).raise_for_status().json()

    make_herd(cluster.client)
    submitted = sorted(submit(cluster.client) for _ in range(5))
    monkeypatch.setattr(jobs_cmd, "MAX_PAGE", 2)
    listed = jobs_cmd._all_pages(Api(), None, None, None, None)  # type: ignore[arg-type]
    assert [job["id"] for job in listed] == submitted
    listed = jobs_cmd._all_pages(Api(), "team", None, 3, submitted[0])  # type: ignore[arg-type]
    assert [job["id"] for job in listed] == submitted[1:4]

    class Earlier:  # a server of the version before paging: every job at once, no next
        def call(self, method: str, path: str, **params: object) -> object:
            return {"jobs": [{"id": job_id} for job_id in submitted]}

    listed = jobs_cmd._all_pages(Earlier(), None, None, 2, submitted[0])  # type: ignore[arg-type]
    assert [job["id"] for job in listed] == submitted[1:3]

    class Stuck:  # a next that does not go on: not asked again and again
        calls = 0

        def call(self, method: str, path: str, **params: object) -> object:
            self.calls += 1
            return {"jobs": [], "next": params.get("after") or submitted[0]}

    stuck = Stuck()
    assert jobs_cmd._all_pages(stuck, None, None, None, None) == [] and stuck.calls == 2  # type: ignore[arg-type]
    with pytest.raises(typer.BadParameter, match="job"):
        jobs_cmd._all_pages(Api(), None, None, None, "../x")  # type: ignore[arg-type]
