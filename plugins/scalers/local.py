"""The ``local`` scaler: starts and stops the agents of a `runink up` cluster on this machine.

`runink up --scale-max N` writes a launch file for each of N nodes (runink.core.local_nodes)
and runs its servers with ``[scaling] driver = "local"`` over the cluster's folder: this
driver starts only those agents, records them in files every server sees, and stops one with
SIGTERM (the agent drains and gives back what still runs).
"""

from __future__ import annotations

from typing import ClassVar

from runink.core.interfaces.scaler import Scaler
from runink.core.local_nodes import LocalNodes


class LocalScaler(Scaler):
    name: ClassVar[str] = "local"
    options_schema: ClassVar[dict[str, type]] = {"dir": str}

    def __init__(self, dir: str) -> None:  # (the option's name: the cluster's folder)
        self.local = LocalNodes(dir)

    def nodes(self) -> list[str]:
        return self.local.running()

    def scale_up(self, count: int) -> list[str]:
        return self.local.start(count)

    def remove(self, node_id: str) -> None:
        self.local.stop(node_id)
