"""The built-in admission rules (the first ``runink_admit`` plugin): per-job bounds, the
herd's budget, its bound on tasks not ended and its submission rate. Pure: the bounds, the
counts and the rate bucket come with the request (the core reads them, and consumes the token
in the job's own transaction)."""

from __future__ import annotations

import math

from runink.core.hookspecs import hookimpl
from runink.core.model import AdmissionDecision, AdmissionRequest, Identity, JobBounds, TaskDemand

#: the API status of a job past a bound (the request is valid, but not admissible here)
OVER_BOUND = 422
#: the API status of a submission past the herd's rate (with Retry-After) or its bound on
#: tasks not ended (without: when some end is not known)
TOO_MANY = 429
#: the API status of a submission to a herd whose budget is spent
PAYMENT_REQUIRED = 402


def _size(value: float) -> str:
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            return f"{value:g}{unit}" if unit == "" else f"{value:.4g}{unit}"
        value /= 1024
    return f"{value:g}"


def _over(task: TaskDemand, bounds: JobBounds) -> str | None:
    """The first bound ``task`` passes, said with its value and the limit, or None."""
    asked = {"cpu": task.cpu, "memory": task.memory, "gpu": task.gpu, "timeout": task.timeout}
    for name, shown in (("cpu", "{:g} cores"), ("memory", "{}"), ("gpu", "{:g} GPUs"), ("timeout", "{:g} s")):
        limit = getattr(bounds, name)
        value = asked[name]
        if limit is None:
            continue
        if name == "timeout" and value is None:
            return f"timeout: none asked, the bound is {limit:g} s (give --timeout, or @requires(timeout=...))"
        if value is not None and value > limit:
            fmt = _size if name == "memory" else shown.format
            where = bounds.source.get(name, "")
            return f"{name} {fmt(value)} is over the per-job bound {fmt(limit)}" + (f" ({where})" if where else "")
    return None


@hookimpl
def runink_admit(job: AdmissionRequest, identity: Identity | None) -> AdmissionDecision | None:
    for task in job.tasks:
        if (why := _over(task, job.bounds)) is not None:
            return AdmissionDecision(False, f"herd {job.herd}: task {task.name!r}: {why}", OVER_BOUND)
    budget = job.budget
    if budget is not None and budget.spent >= budget.limit:
        days = budget.period / 86400
        return AdmissionDecision(
            False,
            f"herd {job.herd}: its budget of {budget.limit:g} {budget.currency} for {days:g} days is spent "
            f"({budget.spent:.4g} {budget.currency})",
            PAYMENT_REQUIRED,
        )
    queue = job.queue
    if queue is not None and queue.bytes_limit and queue.stored_bytes + queue.adding_bytes > queue.bytes_limit:
        return AdmissionDecision(
            False,
            f"herd {job.herd}: its tasks not ended take {_size(queue.stored_bytes)} in the Barn, at most "
            f"{_size(queue.bytes_limit)} ([admission] max_queued_bytes); this job adds {_size(queue.adding_bytes)}: "
            "wait for some to end",
            TOO_MANY,
        )
    if queue is not None and queue.limit and queue.not_ended + len(job.tasks) > queue.limit:
        return AdmissionDecision(
            False,
            f"herd {job.herd}: {queue.not_ended:,} tasks not ended, at most {queue.limit:,} "
            f"({queue.source}); this job adds {len(job.tasks)}: wait for some to end",
            TOO_MANY,
        )
    bucket = job.bucket
    if bucket is not None and bucket.tokens < 1:
        wait = (1 - bucket.tokens) / bucket.rate
        return AdmissionDecision(
            False,
            f"herd {job.herd}: submission rate {bucket.rate:g} jobs/s (burst {bucket.burst}) reached; "
            f"try again in {wait:.2f} s",
            TOO_MANY,
            retry_after=math.ceil(wait * 1000) / 1000,
        )
    return None
