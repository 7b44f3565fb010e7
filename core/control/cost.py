"""What jobs cost: the worst case of a job at its admission, and what a finished attempt used,
priced at the ``[cost]`` rates (per cpu-second, GB-second of memory, GPU-second)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from runink.core.config import CostConfig
from runink.core.control.records import JobRecord, TaskRecord

GB = 1e9  # bytes: the rates are per GB-second, as cloud providers bill


def task_worst_case(task: TaskRecord, rates: CostConfig) -> float | None:
    """Every attempt the task may make running its whole timeout with what it asked for; None
    without a timeout (it could run for ever)."""
    if task.timeout is None:
        return None
    per_second = (
        task.resources.cpu * rates.cpu_second
        + task.resources.memory / GB * rates.gb_second
        + task.resources.gpu * rates.gpu_second
    )
    return (task.retries + 1) * task.timeout * per_second


def worst_case(tasks: Sequence[TaskRecord], rates: CostConfig) -> float | None:
    """A job's worst case: its tasks' summed (None if any task's is unbounded)."""
    total = 0.0
    for task in tasks:
        each = task_worst_case(task, rates)
        if each is None:
            return None
        total += each
    return total


def used(cpu_seconds: float, peak_memory: int, seconds: float, gpus: int, rates: CostConfig) -> float:
    """An attempt's cost from its accounting: its cpu time, its peak memory held for its whole
    run (the worst of it: a cgroup tells the peak, not the integral) and its GPUs for its run."""
    return (
        cpu_seconds * rates.cpu_second
        + peak_memory / GB * seconds * rates.gb_second
        + gpus * seconds * rates.gpu_second
    )


By = Literal["herd", "pipeline", "scenario", "user"]


def _group(by: By, job: JobRecord, task: TaskRecord) -> str:
    if by == "herd":
        return job.herd
    if by == "user":
        return job.owner or "(unauthenticated)"
    if task.scenario is None:
        return "(commands)"
    return task.scenario.pipeline if by == "pipeline" else f"{task.scenario.pipeline}: {task.scenario.scenario}"


def report(jobs: Iterable[JobRecord], tasks: Iterable[TaskRecord], by: By, rates: CostConfig) -> list[dict[str, Any]]:
    """Estimate against actual per group (``by``): the jobs (those given), their tasks' worst
    cases summed (``unbounded``: tasks without one), and what their ended attempts cost."""
    known = {job.id: job for job in jobs}
    rows: dict[str, dict[str, Any]] = {}
    for task in tasks:
        job = known.get(task.job_id)
        if job is None:
            continue
        row = rows.setdefault(
            _group(by, job, task), {"jobs": set(), "tasks": 0, "estimate": 0.0, "unbounded": 0, "actual": 0.0}
        )
        row["jobs"].add(job.id)
        row["tasks"] += 1
        worst = task_worst_case(task, rates)
        if worst is None:
            row["unbounded"] += 1
        else:
            row["estimate"] += worst
        row["actual"] += task.cost
    return [
        {"group": name, **row, "jobs": len(row["jobs"])}
        for name, row in sorted(rows.items(), key=lambda item: -item[1]["actual"])
    ]
