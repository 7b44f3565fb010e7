"""An executor: like the built-in ``process`` executor, but every task runs at low cpu priority."""

from __future__ import annotations

from dataclasses import replace

from runink.core.interfaces import TaskHandle, TaskSpec
from runink.plugins.executors.process import ProcessExecutor


class NiceExecutor(ProcessExecutor):
    name = "nice"

    def __init__(self, niceness: int = 10, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        if not 0 <= niceness <= 19:
            raise ValueError(f"niceness must be 0..19, got {niceness}")
        self.niceness = niceness

    def start(self, spec: TaskSpec) -> TaskHandle:
        return super().start(replace(spec, command=("nice", "-n", str(self.niceness), *spec.command)))
