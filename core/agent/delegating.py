"""An executor that wraps the node's driver and answers as it does: the base of the agent's
wrappers (``MeteredExecutor``, ``DiskLimitedExecutor``), which override what they add to."""

from __future__ import annotations

from typing import Any

from runink.core.interfaces.executor import (
    Executor,
    ExecutorCapabilities,
    Fingerprint,
    TaskHandle,
    TaskResult,
    TaskSpec,
    TaskState,
    TaskStats,
)


class DelegatingExecutor(Executor):
    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.degrade = inner.degrade
        # named as the driver it wraps, in what it says (``name`` is a class attribute)
        object.__setattr__(self, "name", inner.name or type(inner).__name__)

    def start(self, spec: TaskSpec) -> TaskHandle:
        return self.inner.start(spec)

    def recover(self, handle: TaskHandle) -> None:
        self.inner.recover(handle)

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        return self.inner.wait(task_id, timeout)

    def destroy(self, task_id: str) -> None:
        self.inner.destroy(task_id)

    def prepare(self, starts: int | None = None) -> None:
        self.inner.prepare(starts)

    def close(self) -> None:
        self.inner.close()

    def capabilities(self) -> ExecutorCapabilities:
        return self.inner.capabilities()

    def fingerprint(self) -> Fingerprint:
        return self.inner.fingerprint()

    def stop(self, task_id: str, grace: float = 10.0) -> None:
        self.inner.stop(task_id, grace)

    def inspect(self, task_id: str) -> TaskState:
        return self.inner.inspect(task_id)

    def stats(self, task_id: str) -> TaskStats:
        return self.inner.stats(task_id)

    def handle(self, task_id: str) -> TaskHandle:
        return self.inner.handle(task_id)

    def __getattr__(self, name: str) -> Any:  # a driver's own extras
        if name == "inner":  # (not set yet: no recursion)
            raise AttributeError(name)
        return getattr(self.inner, name)
