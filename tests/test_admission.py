"""Admission (issue 23): per-job bounds refuse exactly past their limit, with a 422 naming the
bound, the value and the limit, and store nothing; a herd's own bounds win over the cluster's;
the submission rate is a token bucket in the Barn, exact under concurrent clients and across
servers, even one stopped mid-burst; a plugin adds its own rule; a herd's quota is released
once whichever way its job ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from runink.core import hookimpl
from runink.core.config import AdmissionConfig
from runink.core.control.admission import Admission, AdmissionRefused, bucket_key
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.liveness import Liveness
from runink.core.control.records import (
    Accounting,
    Amount,
    Herd,
    HerdAdmission,
    NodeRecord,
    Quota,
    RunState,
    TaskRecord,
    keys,
)
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.model import AdmissionDecision, AdmissionRequest, Identity
from runink.core.server.api import create_app
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.admission import limits
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

GiB = 1024**3


@dataclass
class Server:
    http: httpx.Client
    admission: Admission
    stop: Callable[[], None]

    def submit(self, herd: str = "team", **fields: Any) -> httpx.Response:
        body = {"herd": herd, "command": ["/bin/true"], **fields}
        return self.http.post("/v1/jobs", json=body)


class Servers:
    """Servers (each its API and admission) over one Barn: as a cluster's servers are."""

    def __init__(self, config: AdmissionConfig, plugins: tuple[tuple[str, object], ...] = ()) -> None:
        self.store = ClusterStore(MemoryBarn())
        self.lifecycle = Lifecycle(self.store)
        self.store.create_herd(Herd(name="team"))
        self.store.create_herd(Herd(name="big", admission=HerdAdmission(max_cpu=8, rate=0)))
        self.store.create_herd(Herd(name="free", admission=HerdAdmission(max_cpu=0)))
        self.config = config
        self.plugins = (("admission", limits), *plugins)
        self.clock: Callable[[], float] = time.time
        self.running: list[Server] = []

    def start(self) -> Server:
        manager = plugin_manager(*self.plugins, entrypoints=False).__enter__()
        # (a lambda: tests swap the clock after the servers start)
        admission = Admission(self.store, manager, self.config, clock=lambda: self.clock())  # noqa: PLW0108
        app = create_app(self.lifecycle, self.store, admission=admission)
        api, thread = serve_api(app, "127.0.0.1", 0)
        http = httpx.Client(base_url=f"http://127.0.0.1:{api.config.port}", timeout=10)

        def stop() -> None:
            http.close()
            stop_api(api, thread)

        server = Server(http, admission, stop)
        self.running.append(server)
        return server

    def jobs(self, herd: str = "team") -> int:
        return len(self.store.jobs(herd))

    def close(self) -> None:
        for server in self.running:
            server.stop()


@pytest.fixture
def servers() -> Iterator[Callable[..., Servers]]:
    made: list[Servers] = []

    def make(plugins: tuple[tuple[str, object], ...] = (), **config: Any) -> Servers:
        made.append(Servers(AdmissionConfig(**config), plugins))
        return made[-1]

    yield make
    for found in made:
        found.close()


@pytest.mark.parametrize(
    ("bound", "config", "at_limit", "over"),
    [
        ("cpu", {"max_cpu": 2}, {"resources": {"cpu": 2}}, {"resources": {"cpu": 2.001}}),
        ("memory", {"max_memory": "1Gi"}, {"resources": {"memory": GiB}}, {"resources": {"memory": GiB + 1}}),
        ("gpu", {"max_gpu": 2}, {"resources": {"gpu": 2}}, {"resources": {"gpu": 3}}),
        ("timeout", {"max_timeout": "1m"}, {"timeout": 60}, {"timeout": 60.001}),
    ],
)
def test_each_bound_refuses_exactly_past_its_limit(
    servers: Callable[..., Servers], bound: str, config: dict[str, Any], at_limit: dict[str, Any], over: dict[str, Any]
) -> None:
    cluster = servers(**config)
    server = cluster.start()
    assert server.submit(**at_limit).status_code == 201
    refused = server.submit(**over)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith(f"herd team: task 'command': {bound} ") and "over the per-job bound" in detail
    assert "[admission]" in detail
    assert cluster.jobs() == 1  # the refused one stored nothing
    if bound == "timeout":
        none_asked = server.submit()
        assert none_asked.status_code == 422 and "none asked" in none_asked.json()["detail"]


def test_a_herds_own_bounds_win_and_zero_lifts_the_cluster_bound(servers: Callable[..., Servers]) -> None:
    cluster = servers(max_cpu=2)
    server = cluster.start()
    assert server.submit("team", resources={"cpu": 4}).status_code == 422
    assert server.submit("big", resources={"cpu": 4}).status_code == 201
    over = server.submit("big", resources={"cpu": 9})
    assert over.status_code == 422 and "over the per-job bound 8 cores (herd big)" in over.json()["detail"]
    assert server.submit("free", resources={"cpu": 64}).status_code == 201


def test_the_rate_is_a_token_bucket_with_retry_after(servers: Callable[..., Servers]) -> None:
    cluster = servers(rate=5, burst=3)
    now = [1000.0]
    cluster.clock = lambda: now[0]
    server = cluster.start()
    assert [server.submit().status_code for _ in range(3)] == [201] * 3  # the burst
    refused = server.submit()
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "submission rate 5 jobs/s (burst 3) reached; try again in 0.20 s" in refused.json()["detail"]
    now[0] += 0.2  # one token back
    assert server.submit().status_code == 201
    assert server.submit().status_code == 429
    now[0] += 100  # full again, never past the burst
    assert [server.submit().status_code for _ in range(4)] == [201, 201, 201, 429]
    assert server.submit("big").status_code == 201  # (herd big: rate 0, no limit)
    assert cluster.jobs() == 7 and cluster.store.barn.get(bucket_key("team")) is not None


def test_a_herds_tasks_not_ended_are_bounded_and_a_slot_frees_when_one_ends(
    servers: Callable[..., Servers],
) -> None:
    """A herd with 3 tasks waiting takes no more ([admission] max_queued 3): a 429 naming the
    count, the bound and where it is set, without Retry-After, nothing stored; another herd is
    not held back by it; once one ends (cancelled here) one more is taken."""
    cluster = servers(max_queued=3)
    cluster.store.create_herd(Herd(name="own", admission=HerdAdmission(max_queued=1)))
    server = cluster.start()
    created = [server.submit() for _ in range(3)]
    assert [a.status_code for a in created] == [201] * 3
    refused = server.submit()
    assert refused.status_code == 429 and "Retry-After" not in refused.headers
    assert refused.json()["detail"] == (
        "herd team: 3 tasks not ended, at most 3 ([admission] max_queued); this job adds 1: wait for some to end"
    )
    assert cluster.jobs() == 3  # the refused one stored nothing
    assert server.submit("big").status_code == 201  # another herd's queue is its own
    assert server.submit("own").status_code == 201
    own = server.submit("own")  # its own bound wins
    assert own.status_code == 429 and "1 tasks not ended, at most 1 (herd own)" in own.json()["detail"]
    described = server.http.get("/v1/herds/team").json()
    assert described["used"]["not_ended"] == 3 and described["max_queued"] == 3
    cluster.lifecycle.cancel(created[0].json()["job"]["id"])  # waiting: it ends at once
    assert server.submit().status_code == 201
    assert server.submit().status_code == 429


def test_a_herds_tasks_not_ended_are_bounded_in_bytes_and_an_ended_task_keeps_little_of_its_command(
    servers: Callable[..., Servers],
) -> None:
    """Jobs of 256 KiB commands kept waiting past the quota: 940 of them held ~1 GB in every
    Barn member and server, and cancelling them freed nothing, ended jobs being kept (a
    review's run). What a herd's tasks not ended take is bounded ([admission]
    max_queued_bytes); an ended task keeps 4 KiB of its command."""
    from runink.core.control.records import ENDED_COMMAND_BYTES

    cluster = servers(max_queued_bytes="1Mi", max_queued=0)
    server = cluster.start()
    big = ["/bin/echo", "x" * (100 * 1024)]
    answers = [server.submit(command=big) for _ in range(12)]
    codes = [a.status_code for a in answers]
    taken = codes.index(429)
    assert taken == 10 and set(codes[taken:]) == {429}, codes  # (records of ~100 KiB: 10 in 1 MiB)
    detail = answers[taken].json()["detail"]
    assert detail == (
        "herd team: its tasks not ended take 1006Ki in the Barn, at most 1Mi ([admission] max_queued_bytes); "
        "this job adds 100.6Ki: wait for some to end"
    )
    assert cluster.jobs() == taken  # the refused ones stored nothing
    assert server.submit("big", command=big).status_code == 201  # another herd's bytes are its own
    assert server.submit().status_code == 201  # a small one still fits
    for answer in answers[:taken]:
        cluster.lifecycle.cancel(answer.json()["job"]["id"])
    (task,) = cluster.store.job_tasks(cluster.store.job(answers[0].json()["job"]["id"]).record)
    assert task.record.state is RunState.CANCELLED
    kept = task.record.command
    assert sum(len(a.encode()) + 1 for a in kept) <= ENDED_COMMAND_BYTES and kept[0] == "/bin/echo"
    assert kept[-1].endswith("more bytes not kept: the task ended)")
    assert server.submit(command=big).status_code == 201  # room again


def test_concurrent_submissions_through_one_server_never_pass_the_queue_bound(
    servers: Callable[..., Servers], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each submission read the herd's count before any of the others was stored: 18 jobs
    passed a bound of 5 through one server (a review's run). What a server admitted and has
    not stored yet counts too."""
    cluster = servers(max_queued=5)
    barn = cluster.store.barn
    commit = barn.transaction

    def as_a_raft_commit(*args: Any, **kwargs: Any) -> Any:  # (milliseconds, not microseconds)
        time.sleep(0.005)
        return commit(*args, **kwargs)

    monkeypatch.setattr(barn, "transaction", as_a_raft_commit)
    server = cluster.start()
    statuses: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(8)

    def client() -> None:
        go.wait()
        for _ in range(6):
            answer = server.submit(resources={"cpu": 0.1})
            with lock:
                statuses.append(answer.status_code)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(statuses) <= {201, 429}, statuses
    assert statuses.count(201) == cluster.jobs() == 5


def test_the_queue_bound_counts_every_task_of_a_pipeline_and_zero_lifts_it(servers: Callable[..., Servers]) -> None:
    cluster = servers(max_queued=2)
    cluster.store.create_herd(Herd(name="unbounded", admission=HerdAdmission(max_queued=0)))
    with plugin_manager(("admission", limits), entrypoints=False) as manager:
        gate = Admission(cluster.store, manager, cluster.config)
        herd = cluster.store.herd("team").record
        first = cluster.lifecycle.submit_command("team", ["/bin/true"])
        tasks = [v.record for v in cluster.store.job_tasks(first)]
        with pytest.raises(AdmissionRefused) as refused:
            gate.admit(herd, "pipeline", tasks * 2, None)  # 1 not ended + 2 > 2
        assert refused.value.status == 429 and "this job adds 2" in str(refused.value)
        assert gate.admit(herd, "pipeline", tasks, None).ops == []  # 1 + 1: at the bound, taken
        for _ in range(5):
            cluster.lifecycle.submit_command("unbounded", ["/bin/true"])
        assert gate.admit(cluster.store.herd("unbounded").record, "command", tasks, None).ops == []


def test_the_rate_holds_within_one_token_under_8_clients_on_two_servers_one_stopped_mid_burst(
    servers: Callable[..., Servers],
) -> None:
    rate, burst = 20.0, 10
    cluster = servers(rate=rate, burst=burst)
    first, second = cluster.start(), cluster.start()
    admitted: list[float] = []
    refused: list[int] = []
    unexpected: list[str] = []
    lost: list[int] = []  # answers lost with the stopped server: admitted or not, unknown
    lock = threading.Lock()
    began = time.monotonic()
    stop_at = began + 2.0

    def client(number: int) -> None:
        while time.monotonic() < stop_at:
            server = first if number % 2 and time.monotonic() < began + 1.0 else second
            try:
                answer = server.submit()
            except (httpx.HTTPError, RuntimeError):  # (the first server stopped under it, its client closed)
                with lock:
                    lost.append(1)
                continue
            with lock:
                if answer.status_code == 201:
                    admitted.append(time.monotonic())
                elif answer.status_code == 429:
                    refused.append(1)
                else:
                    unexpected.append(f"{answer.status_code} {answer.text}")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    first.stop()  # a server gone mid-burst: the bucket is in the Barn, the others go on with it
    for thread in threads:
        thread.join(30)
    assert not unexpected, unexpected[:3]
    elapsed = max(admitted) - began
    allowed = burst + rate * elapsed
    assert len(admitted) <= allowed + 1, (len(admitted), allowed)  # never more than one token past it
    assert refused and len(admitted) >= burst + rate * elapsed * 0.5  # (the clients kept the bucket empty)
    # each admitted job stored once, no refused one; one more only where its answer was lost
    stored = cluster.jobs()
    assert len(admitted) <= stored <= len(admitted) + len(lost), (stored, len(admitted), len(lost))
    assert stored <= allowed + 1


class NoGpuAtNight:
    @hookimpl
    def runink_admit(self, job: AdmissionRequest, identity: Identity | None) -> AdmissionDecision | None:
        if any(t.gpu for t in job.tasks) and time.gmtime(job.now).tm_hour >= 18:
            return AdmissionDecision(False, f"herd {job.herd}: no GPU jobs after 18:00", 403)
        return None


class Broken:
    @hookimpl
    def runink_admit(self, job: AdmissionRequest, identity: Identity | None) -> AdmissionDecision | None:
        raise RuntimeError("boom")


def test_a_plugin_adds_a_rule_and_one_that_fails_admits_nothing(servers: Callable[..., Servers]) -> None:
    cluster = servers(plugins=(("night", NoGpuAtNight()),))
    cluster.clock = lambda: 1_800_000_000.0 + 19 * 3600 - (1_800_000_000 % 86400)  # 19:00 UTC
    server = cluster.start()
    refused = server.submit(resources={"gpu": 1})
    assert refused.status_code == 403 and refused.json()["detail"] == "herd team: no GPU jobs after 18:00"
    assert server.submit().status_code == 201
    broken = servers(plugins=(("broken", Broken()),)).start()
    answer = broken.submit()
    assert answer.status_code == 503 and "plugin broken failed in runink_admit" in answer.json()["detail"]


class Sloppy:
    @hookimpl
    def runink_admit(self, job: AdmissionRequest, identity: Identity | None) -> Any:
        return True  # (not an AdmissionDecision)


def test_a_submission_that_fails_in_admission_gives_its_queue_slots_back() -> None:
    """A plugin answering something that is no decision made every submission fail, and each
    kept its tasks counted against the herd's queue bound for good (a review's run)."""
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="team"))
    task = TaskRecord(id="t", job_id="j", herd="team", command=["/bin/true"])
    with plugin_manager(("sloppy", Sloppy()), entrypoints=False) as manager:
        gate = Admission(store, manager, AdmissionConfig(max_queued=2, rate=0))
        for _ in range(3):
            with pytest.raises(AttributeError):
                gate.admit(store.herd("team").record, "command", [task], None)
        assert dict(gate._reserved) == {}


def test_a_herds_quota_is_released_once_whichever_way_its_job_ends() -> None:
    store = ClusterStore(MemoryBarn())
    life = Lifecycle(store)
    store.create_herd(Herd(name="one", quota=Quota(max_slices=1)))
    life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=8, memory=16 * GiB)))
    with plugin_manager(entrypoints=True) as manager:
        scheduler = Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))

        def placed() -> list[str]:
            scheduler.run_pass(time.time())
            held = (RunState.SCHEDULED, RunState.RUNNING)
            return [t.id for t in (v.record for v in store.tasks("one")) if t.state in held]

        jobs = [life.submit_command("one", ["/bin/true"]) for _ in range(6)]
        ends: list[Callable[[str], None]] = []

        def report(state: RunState) -> Callable[[str], None]:
            def end(task_id: str) -> None:
                task = store.task("one", task_id).record
                assert life.report("one", task_id, task.attempt, task.token, RunState.RUNNING)
                code = 0 if state is RunState.SUCCEEDED else 1
                assert life.report("one", task_id, task.attempt, task.token, state, exit_code=code)

            return end

        def cancelled(task_id: str) -> None:
            task = store.task("one", task_id).record
            life.cancel(task.job_id)
            assert placed() == []  # held until its agent says the attempt ended (never started here)
            assert life.report("one", task_id, task.attempt, task.token, RunState.CANCELLED, node="n1")

        def node_dies(task_id: str) -> None:
            liveness = Liveness(store, 0.01)
            liveness.observe(0.0)
            liveness.observe(10.0)
            life.register_node(NodeRecord(id="n1", capacity=Amount(cpu=8, memory=16 * GiB)))

        ends = [
            report(RunState.SUCCEEDED),
            report(RunState.FAILED),
            cancelled,
            report(RunState.OOMKILLED),
            node_dies,
        ]
        ended = []
        for end in ends:
            (running,) = placed()  # one slice at a time: the quota holds
            end(running)
            ended.append(running.rsplit(".", 1)[0])
            assert len(placed()) == 1  # released once: the next one goes, and only one
        states = [store.job(job).record.state for job in ended]
        assert states[:4] == [RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.OOMKILLED]
        assert len(jobs) == 6 and states[4] is not RunState.RUNNING  # (the dead node's task waits again)


def test_hook_runink_admit() -> None:
    """Through the core: the built-in rules and a plugin's, combined (any refusal wins)."""
    store = ClusterStore(MemoryBarn())
    herd = Herd(name="team")
    store.create_herd(herd)
    task = Lifecycle(store).submit_command("team", ["/bin/true"], Amount(cpu=1, gpu=1))
    (record,) = [v.record for v in store.job_tasks(task)]
    night = 1_800_000_000.0 - (1_800_000_000 % 86400) + 20 * 3600
    with plugin_manager(("admission", limits), ("night", NoGpuAtNight()), entrypoints=False) as manager:
        gate = Admission(store, manager, AdmissionConfig(max_cpu=2), clock=lambda: night)
        with pytest.raises(AdmissionRefused) as refused:
            gate.admit(herd, "command", [record], None)
        assert refused.value.status == 403 and "no GPU jobs after 18:00" in str(refused.value)
        day = Admission(store, manager, AdmissionConfig(max_cpu=2), clock=lambda: night - 10 * 3600)
        assert day.admit(herd, "command", [record], None).ops == []  # no rate: nothing to write
        over = Admission(store, manager, AdmissionConfig(max_cpu=0.5), clock=lambda: night - 10 * 3600)
        with pytest.raises(AdmissionRefused) as past:
            over.admit(herd, "command", [record], None)
        assert past.value.status == 422 and "cpu 1 cores is over the per-job bound 0.5 cores" in str(past.value)


def test_the_worst_case_cost_comes_with_the_job(servers: Callable[..., Servers]) -> None:
    server = servers().start()
    answer = server.submit(resources={"cpu": 2, "memory": 4 * 10**9, "gpu": 1}, timeout=3600, retries=1)
    assert answer.status_code == 201, answer.text
    # 2 attempts x 3,600 s x (2 cpu x 0.000048 + 4 GB x 0.000006 + 1 GPU x 0.00028), seed 004's rates
    assert answer.json()["job"]["estimate"] == pytest.approx(2.88)
    job = server.http.get(f"/v1/jobs/{answer.json()['job']['id']}").json()["job"]
    assert job["estimate"] == pytest.approx(2.88)  # (stored with it)
    assert server.submit(resources={"cpu": 2}).json()["job"]["estimate"] is None  # no timeout: no worst case


def test_runink_cost_reports_estimates_against_what_tasks_used(servers: Callable[..., Servers]) -> None:
    cluster = servers()
    server = cluster.start()
    hour = {"resources": {"cpu": 1}, "timeout": 3600}
    ids = [server.submit("team", **hour).json()["job"]["id"] for _ in range(2)]
    server.submit("big", resources={"cpu": 1})  # no timeout: unbounded
    for job in ids[:1]:  # one ran: 100 cpu-seconds, 2 GB held 200 s
        (task,) = [v.record for v in cluster.store.job_tasks(cluster.store.job(job).record)]
        cluster.store.update(
            keys.task("team", task.id), TaskRecord, lambda t: t.model_copy(update={"state": RunState.RUNNING})
        )
        running = cluster.store.task("team", task.id).record
        used = Accounting(cpu_seconds=100.0, peak_memory=2 * 10**9, seconds=200.0)
        assert cluster.lifecycle.report(
            "team", task.id, running.attempt, running.token, RunState.SUCCEEDED, exit_code=0, accounting=used
        )
    report = server.http.get("/v1/cost", params={"by": "herd"}).json()
    rows = {r["group"]: r for r in report["rows"]}
    assert report["currency"] == "USD" and set(rows) == {"team", "big"}
    assert rows["team"]["jobs"] == 2 and rows["team"]["estimate"] == pytest.approx(2 * 3600 * 0.000048)
    assert rows["team"]["actual"] == pytest.approx(100 * 0.000048 + 2 * 200 * 0.000006)
    assert rows["big"]["unbounded"] == 1 and rows["big"]["actual"] == 0
    by_user = server.http.get("/v1/cost", params={"by": "user", "herd": "team"}).json()["rows"]
    assert [r["group"] for r in by_user] == ["anonymous"]  # (who submitted: this server authenticates nobody)
    assert server.http.get("/v1/cost", params={"since": 0.001}).json()["rows"] == []  # none that recent


def test_a_herd_whose_budget_is_spent_takes_no_new_job(
    servers: Callable[..., Servers], monkeypatch: pytest.MonkeyPatch
) -> None:
    import runink.core.control.admission as admission_module

    monkeypatch.setattr(admission_module, "SPENT_FOR", 0.0)  # (a server sums what was spent every 10 s)
    cluster = servers()
    cluster.store.create_herd(Herd(name="lean", admission=HerdAdmission(budget=0.01)))
    server = cluster.start()
    first = server.submit("lean")
    assert first.status_code == 201
    (task,) = [v.record for v in cluster.store.job_tasks(cluster.store.job(first.json()["job"]["id"]).record)]
    cluster.store.update(keys.task("lean", task.id), TaskRecord, lambda t: t.model_copy(update={"cost": 0.02}))
    refused = server.submit("lean")
    assert refused.status_code == 402, refused.text
    assert refused.json()["detail"] == "herd lean: its budget of 0.01 USD for 30 days is spent (0.02 USD)"
    assert cluster.jobs("lean") == 1
