"""The node's executor, measured: how long each slice took to start, how each ended (state,
CPU, peak memory from the executor's cgroup accounting), and which run now, per herd.

``MeteredExecutor`` wraps the node's executor driver (under ``ScenarioAttempts``, so commands
and scenarios alike) for an agent and for the embedded ``runink run``. What it measures goes to
the metric exporters (``runink.core.metrics``): events as they happen, the running slices as a
state gauge read when scraped. Labels: the node and the slice's herd, never a task id.
"""

from __future__ import annotations

import threading
import time

from runink.core import metrics
from runink.core.agent.delegating import DelegatingExecutor
from runink.core.interfaces.executor import Executor, TaskHandle, TaskResult, TaskSpec
from runink.core.model import MetricSample
from runink.core.plugins import PluginManager


class MeteredExecutor(DelegatingExecutor):
    def __init__(self, inner: Executor, manager: PluginManager, node: str) -> None:
        super().__init__(inner)
        self.manager = manager
        self.node = node
        self._herds: dict[str, str] = {}  # running task id -> its herd
        self._lock = threading.Lock()
        self.unregister = metrics.register_gauges(self._running)

    def start(self, spec: TaskSpec) -> TaskHandle:
        began = time.perf_counter()
        handle = self.inner.start(spec)
        took = time.perf_counter() - began
        with self._lock:
            self._herds[spec.id] = spec.herd or ""
        metrics.report(self.manager, [metrics.sample("runink_slice_start_seconds", took, node=self.node)])
        return handle

    def recover(self, handle: TaskHandle) -> None:
        self.inner.recover(handle)
        with self._lock:
            self._herds[handle.task_id] = ""  # (its herd is not in the handle: counted as none)

    def wait(self, task_id: str, timeout: float | None = None) -> TaskResult | None:
        result = self.inner.wait(task_id, timeout)
        if result is not None:
            self._ended(task_id, result)
        return result

    def _ended(self, task_id: str, result: TaskResult) -> None:
        with self._lock:
            herd = self._herds.pop(task_id, None)
        if herd is None:
            return  # reported already (wait is called again for an ended task)
        where = {"node": self.node, "herd": herd}
        found = [metrics.sample("runink_slices_ended_total", 1, state=str(result.state.value), **where)]
        if result.cpu_seconds is not None:
            found.append(metrics.sample("runink_slice_cpu_seconds_total", result.cpu_seconds, **where))
        if result.peak_memory_bytes is not None:
            found.append(metrics.sample("runink_slice_memory_peak_bytes", result.peak_memory_bytes, **where))
        metrics.report(self.manager, found)

    def _running(self) -> list[MetricSample]:
        with self._lock:
            herds = list(self._herds.values())
        counts: dict[str, int] = {}
        for herd in herds:
            counts[herd] = counts.get(herd, 0) + 1
        return [metrics.sample("runink_slices_running", n, node=self.node, herd=h) for h, n in sorted(counts.items())]

    def destroy(self, task_id: str) -> None:
        self.inner.destroy(task_id)
        with self._lock:
            self._herds.pop(task_id, None)

    def close(self) -> None:
        self.unregister()
        self.inner.close()
