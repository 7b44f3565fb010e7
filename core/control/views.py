"""What the REST API answers about jobs and their tasks, without the web framework: the
server's routes (core/server/api.py) and the record an embedded run keeps of itself
(core/history.py) give the same shapes, so the CLI reads either alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from runink.core.control.records import JobRecord, NodeRecord, NodeUsage, Record, RunState, TaskRecord
from runink.core.control.store import ClusterStore, NotFound

#: never answered: a node's incarnation is its agent's credential (a heartbeat carrying it
#: ties a gRPC stream to the node)
SECRET_FIELDS: dict[type[Record], set[str]] = {NodeRecord: {"incarnation"}}
#: a task's fields answered only when asked (``explain``): the scheduler's last decision
EXPLAIN_FIELDS = {"explain", "pending_reason"}


def dump_record(record: Record, exclude: set[str] | None = None) -> dict[str, Any]:
    hidden = (exclude or set()) | SECRET_FIELDS.get(type(record), set())
    return record.model_dump(mode="json", exclude=hidden or None)


def running_usage(store: ClusterStore, tasks: list[TaskRecord]) -> dict[str, dict[str, Any]]:
    """The last usage sample of each RUNNING task, by task id: its node's, of its attempt."""
    found: dict[str, dict[str, Any]] = {}
    nodes: dict[str, NodeUsage | None] = {}
    for task in tasks:
        if task.state is not RunState.RUNNING or task.node is None:
            continue
        if task.node not in nodes:
            try:
                nodes[task.node] = store.node(task.node).record.usage
            except NotFound:
                nodes[task.node] = None
        sample = nodes[task.node]
        use = None if sample is None else sample.tasks.get(task.id)
        if sample is not None and use is not None and use.attempt == task.attempt:
            found[task.id] = {**use.model_dump(mode="json"), "at": sample.at}
    return found


def job_answer(
    store: ClusterStore,
    job_id: str,
    *,
    explain: bool = False,
    check: Callable[[JobRecord], None] | None = None,
    seen_past: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """``GET /v1/jobs/{job_id}``'s answer: the job, its record's revision and its tasks, each
    with its last usage sample while it runs. NotFound for an unknown job; ``check`` (the
    caller's authorization) sees the job before anything else is read. ``seen_past``: (herd,
    revision) for a waiter woken by the job's change: answered from the records the server's
    watch saw (``ClusterStore.recent_job``) if the job's is past that revision, else read."""
    recent = None
    if seen_past is not None:
        herd, after = seen_past
        recent = store.recent_job(herd, job_id)
        if recent is not None and recent[0].revision <= after:
            recent = None  # (woken by a timeout or a restarted watch: read)
    found = recent[0] if recent is not None else store.job(job_id)
    job = found.record
    if check is not None:
        check(job)
    tasks = [v.record for v in (recent[1] if recent is not None else store.job_tasks(job))]
    usage = running_usage(store, tasks)
    hidden = None if explain else EXPLAIN_FIELDS
    listed = [{**dump_record(t, hidden), "usage": usage.get(t.id)} for t in tasks]
    return {"job": dump_record(job), "revision": found.revision, "tasks": listed}
