"""A job's reader waits on the server for its next change (``GET /v1/jobs/{id}?wait=S&after=REV``)
instead of polling: real uvicorn on 127.0.0.1, a memory Barn followed by the server's one watch
(BarnFeed), httpx as the client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import Amount, Herd, keys
from runink.core.control.store import ClusterStore
from runink.core.control.views import job_answer
from runink.core.server.api import create_app
from runink.core.server.feed import BarnFeed, JobWaits, RecentRecords
from runink.core.server.serve_api import serve_api, stop_api
from runink.plugins.barn.memory import MemoryBarn


@dataclass
class Api:
    client: httpx.Client
    lifecycle: Lifecycle
    waits: JobWaits


def _serve(waits: JobWaits, *, recent: bool = True) -> Iterator[Api]:
    """The API with the watch's listeners a server has (``recent``: RecentRecords first)."""
    store = ClusterStore(MemoryBarn())
    lifecycle = Lifecycle(store)
    store.create_herd(Herd(name="team"))
    stop = threading.Event()
    feed = BarnFeed(store.barn, stop)
    if recent:
        records = RecentRecords()
        feed.listen(records.on_change)
        feed.on_restart(records.reset)
        store.recent = records.get
    feed.listen(waits.on_change)
    feed.on_restart(waits.reset)
    feed.start()
    server, thread = serve_api(create_app(lifecycle, store, waits), "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.config.port}", timeout=10) as client:
            time.sleep(0.1)  # (the feed's watch is following)
            yield Api(client, lifecycle, waits)
    finally:
        stop.set()
        stop_api(server, thread)


@pytest.fixture
def api() -> Iterator[Api]:
    yield from _serve(JobWaits())


def _later(seconds: float, do: object) -> None:
    threading.Timer(seconds, do).start()  # type: ignore[arg-type]


def test_a_waiting_read_answers_when_the_job_changes_not_before(api: Api) -> None:
    job = api.lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
    first = api.client.get(f"/v1/jobs/{job.id}").json()
    assert first["job"]["state"] == "PENDING" and first["revision"] > 0
    _later(0.3, lambda: api.lifecycle.cancel(job.id))
    asked = time.monotonic()
    changed = api.client.get(f"/v1/jobs/{job.id}", params={"wait": 10, "after": first["revision"]})
    took = time.monotonic() - asked
    assert changed.status_code == 200
    assert changed.json()["job"]["state"] == "CANCELLED" and changed.json()["revision"] > first["revision"]
    assert 0.25 < took < 5  # woken by the change, not by its 10 s
    assert api.waits._waiting == {}  # nothing left registered


def test_a_submissions_answer_gives_the_revision_its_first_wait_waits_past(api: Api) -> None:
    """POST /v1/jobs answers with the revision the job was stored at: a reader waits from it
    at once (no read of the job before its first change), as `runink exec` does."""
    posted = api.client.post("/v1/jobs", json={"herd": "team", "command": ["/bin/true"]})
    assert posted.status_code == 201, posted.text
    job_id, revision = posted.json()["job"]["id"], posted.json()["revision"]
    assert api.client.get(f"/v1/jobs/{job_id}").json()["revision"] == revision
    _later(0.3, lambda: api.lifecycle.cancel(job_id))
    asked = time.monotonic()
    changed = api.client.get(f"/v1/jobs/{job_id}", params={"wait": 10, "after": revision}).json()
    assert 0.25 < time.monotonic() - asked < 5  # waited for the change, not answered as stored
    assert changed["job"]["state"] == "CANCELLED" and changed["revision"] > revision


def test_a_waiting_read_of_an_unchanged_job_answers_after_its_time(api: Api) -> None:
    job = api.lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
    revision = api.client.get(f"/v1/jobs/{job.id}").json()["revision"]
    asked = time.monotonic()
    same = api.client.get(f"/v1/jobs/{job.id}", params={"wait": 0.4, "after": revision}).json()
    assert 0.35 < time.monotonic() - asked < 3 and same["revision"] == revision
    # a revision the job is past already: at once
    asked = time.monotonic()
    api.client.get(f"/v1/jobs/{job.id}", params={"wait": 10, "after": revision - 1})
    assert time.monotonic() - asked < 2


def test_wait_is_bounded_and_validated(api: Api) -> None:
    job = api.lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
    for params in ({"wait": 31}, {"wait": -1}, {"wait": "nan"}, {"after": -1}):
        answer = api.client.get(f"/v1/jobs/{job.id}", params=params)
        assert answer.status_code == 422, (params, answer.text)
    assert api.client.get("/v1/jobs/job-nope", params={"wait": 1}).status_code == 404


def test_past_its_waiters_cap_a_read_answers_at_once() -> None:
    for api in _serve(JobWaits(max_waiters=0)):
        job = api.lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
        revision = api.client.get(f"/v1/jobs/{job.id}").json()["revision"]
        asked = time.monotonic()
        api.client.get(f"/v1/jobs/{job.id}", params={"wait": 10, "after": revision})
        assert time.monotonic() - asked < 2


def test_record_of_names_only_job_and_task_records() -> None:
    assert keys.record_of("/herds/team/jobs/job-1") == ("jobs", "team", "job-1")
    assert keys.record_of("/herds/team/tasks/task-1") == ("tasks", "team", "task-1")
    assert keys.record_of("/herds/team/jobs/") is None
    assert keys.record_of("/herds/team/herd") is None
    assert keys.record_of("/herds/team/rbac/x") is None
    assert keys.record_of("herds/team/jobs/job-1") is None
    assert keys.record_of("/herds/team/jobs/job-1/x") is None
    assert keys.record_of("/cluster/assigned/n1/team/task-1") is None


@pytest.mark.parametrize("recent", [False, True], ids=["read", "watched"])
def test_a_reader_with_the_feeds_revision_waits_without_reading_first(recent: bool) -> None:
    """The feed saw the revision the reader has: nothing newer to read, so the request reads
    the Barn only once the job changed (one read, not two); with the records the watch saw
    kept (a server's RecentRecords), not even then: the job and its task, changed by one
    commit, answer as the Barn would."""
    for api in _serve(JobWaits(), recent=recent):
        _reads_once_after_the_change(api, recent)


def _reads_once_after_the_change(api: Api, recent: bool) -> None:
    job = api.lifecycle.submit_command("team", ["/bin/true"], Amount(cpu=1))
    first = api.client.get(f"/v1/jobs/{job.id}").json()
    deadline = time.monotonic() + 5
    while api.waits.seen(job.id) != (first["revision"], "team") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert api.waits.seen(job.id) == (first["revision"], "team")
    store = api.lifecycle.store
    reads: list[str] = []
    original = store.barn.get

    def counted(key: str) -> object:
        if threading.current_thread().name.startswith("AnyIO"):  # the API's reads (not the cancel's)
            reads.append(key)
        return original(key)

    store.barn.get = counted  # type: ignore[method-assign]
    _later(0.3, lambda: api.lifecycle.cancel(job.id))
    began = time.monotonic()
    answer = api.client.get(f"/v1/jobs/{job.id}", params={"wait": 5, "after": first["revision"]}).json()
    assert 0.25 < time.monotonic() - began < 4 and answer["revision"] > first["revision"]
    assert answer["job"]["state"] == "CANCELLED" and answer["tasks"][0]["state"] == "CANCELLED"
    job_reads = [k for k in reads if k.endswith(f"/jobs/{job.id}")]
    # read once, after the change (not also before the wait); from the watch, not at all
    assert len(job_reads) == (0 if recent else 1), reads
    store.barn.get = original  # type: ignore[method-assign]
    assert answer == job_answer(store, job.id)  # what a read of the Barn answers


def test_a_restarted_feed_forgets_what_it_saw_and_wakes_every_waiter() -> None:
    """Changes made while the feed's watch was down are not delivered: what it saw is
    forgotten (readers read the Barn again), and waiting requests wake to read now."""
    import asyncio

    waits = JobWaits()
    barn = MemoryBarn()
    store = ClusterStore(barn)
    store.create_herd(Herd(name="team"))
    job = Lifecycle(store).submit_command("team", ["/bin/true"], Amount(cpu=1))
    for event in barn.watch("/herds/", 1):
        waits.on_change(event)
        if waits.seen(job.id) is not None:
            break
    assert waits.seen(job.id) is not None

    async def wait_and_reset() -> bool:
        async with waits.waiter(job.id) as changed:
            assert changed is not None
            asyncio.get_running_loop().call_later(0.05, waits.reset)
            await asyncio.wait_for(changed.wait(), 5)
            return True

    assert asyncio.run(wait_and_reset())
    assert waits.seen(job.id) is None
