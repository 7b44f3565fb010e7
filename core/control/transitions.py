"""The control plane's events as log records: each task's transition (SCHEDULED on a node,
RUNNING, SUCCEEDED, FAILED, ...) goes to the log exporters (``runink_export_log``; the Fluentd
plugin ships it tagged ``runink.control``) with its herd, job, task, node, state and attempt.

A server hears every change of the herds' records through its feed (core/server/feed.py);
only the one whose Barn member leads exports them, so each transition goes out once (around a
change of leader one may go out twice, or not at all). The embedded run (``runink run``)
reports its tasks' changes itself. The built-in exporter writes them to the process's log at
level info (warning for a failure), below the default threshold.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

from runink.core.control.records import keys
from runink.core.events import export_log
from runink.core.interfaces.barn import WatchEvent
from runink.core.model import LogEntry
from runink.core.plugins import PluginManager
from runink.core.report import printable

#: tasks whose last exported transition is remembered (a change that is not a transition,
#: e.g. a usage sample, must not export it again); the oldest are forgotten past it
MAX_REMEMBERED = 100_000
FAILURES = ("FAILED", "OOMKILLED", "DEADLINE_EXCEEDED")
#: a task record of more than this is not decoded here (the Barn bounds values; this bounds the feed's work)
MAX_VALUE = 1 << 20


def _task_key(key: str) -> tuple[str, str] | None:
    """(herd, task id) of ``/herds/<herd>/tasks/<id>``; None for any other key."""
    found = keys.record_of(key)
    return (found[1], found[2]) if found is not None and found[0] == "tasks" else None


class TransitionLog:
    """Exports tasks' new transitions: from a server's feed (``on_change``, while ``leads()``)
    or from the embedded run's rounds (``task_changed``). Of a task first seen, only its last
    transition goes (a server that starts or comes to lead does not replay old ones) unless
    ``whole_history``: the embedded run sees every task from its start."""

    def __init__(
        self,
        manager: PluginManager,
        leads: Callable[[], bool] = lambda: True,
        *,
        whole_history: bool = False,
        failure_level: Literal["info", "warning"] = "warning",
    ) -> None:
        self.manager = manager
        self.leads = leads
        self.whole_history = whole_history
        self.failure_level = failure_level  # (`runink run` says each failure itself: info there)
        self._last: OrderedDict[str, float] = OrderedDict()  # task id -> its last exported transition's time

    def on_change(self, event: WatchEvent) -> None:
        found = _task_key(event.kv.key)
        if found is None:
            return
        herd, task_id = found
        if event.type == "DELETE":
            self._last.pop(task_id, None)
            return
        if len(event.kv.value) > MAX_VALUE or not self.leads():
            return
        try:
            task = json.loads(event.kv.value)
        except ValueError:
            return
        self.task_changed(herd, task_id, task)

    def task_changed(self, herd: str, task_id: str, task: dict[str, Any]) -> None:
        """Export the transitions of ``task`` (a task record as JSON) not exported yet."""
        try:
            transitions = [(float(t["at"]), t) for t in task["transitions"]]
        except (KeyError, TypeError, ValueError):
            return  # not a task record as this version writes it: nothing to say
        if not transitions:
            return
        exported = self._last.get(task_id)
        if exported is None:
            new = transitions if self.whole_history else transitions[-1:]
        else:
            new = [(at, t) for at, t in transitions if at > exported]
        if not new:
            return
        self._last[task_id] = new[-1][0]
        self._last.move_to_end(task_id)
        while len(self._last) > MAX_REMEMBERED:
            self._last.popitem(last=False)
        for _at, transition in new:
            self._export(herd, task_id, task.get("job_id"), transition)

    def _export(self, herd: str, task_id: str, job: object, transition: dict[str, Any]) -> None:
        state, attempt, node = str(transition.get("state")), transition.get("attempt"), transition.get("node")
        reason = printable(str(transition.get("reason") or ""), 500)
        where = f" on {node}" if node else ""
        message = f"task {task_id}: {state} (attempt {attempt}{where})" + (f": {reason}" if reason else "")
        fields = {"herd": herd, "job": job, "task": task_id, "node": node, "state": state, "attempt": attempt}
        level = self.failure_level if state in FAILURES else "info"
        export_log(self.manager, LogEntry(message, level, "control", {**fields, "reason": reason}))
