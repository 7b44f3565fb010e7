"""The Scaler driver interface: how the cluster gets and gives back worker nodes.

Seed 002's AutoScaler, split in two. The policy (when to add nodes, which idle one to remove,
min/max, the pending-tasks-per-node threshold, the idle delay, the cooldown) is the core's
``runink.core.control.autoscale.Autoscaler``, run by the leading server; it stores every
decision with its reason in the Barn (``runink nodes scaling``). A ``Scaler`` driver only does
what it is told: start nodes (an agent process, a cloud machine) and stop one.

Contract:

* ``nodes()`` names the nodes this scaler started and has not stopped: those that run and
  those still starting (their agents may not have registered yet). Its length is the
  cluster's current size as the autoscaler counts it. Cheap: called every few seconds.
* ``scale_up(count)`` starts up to ``count`` new nodes and returns their node ids (as their
  agents will register them), once started, not once registered. It may start fewer (no more
  room, a quota of the cloud account): it returns those it started. Raises ``ScalerError``
  for a failure it can name; what it started before failing stays in ``nodes()``.
* ``remove(node_id)`` stops a node it started: SIGTERM to its agent (which drains: running
  tasks may end, the rest are given back to be placed again), then the node itself. The
  autoscaler calls it only for a node it drained first (no new work placed there) and, unless
  its drain grace ran out, on which no task runs any more. Removing a node it does not know
  does nothing.
* A driver is built with the keyword options of ``[scaling] options`` and may be asked from
  any leading server in turn: what it knows of its nodes must not live in one server's memory
  only (the ``local`` driver keeps it in files beside the cluster, a cloud one asks its API).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from runink.core.errors import RuninkError


class ScalerError(RuninkError):
    """A scaler could not start or stop a node; the message says which and why."""


class Scaler(ABC):
    GROUP: ClassVar[str] = "runink.scalers"
    #: the name it is registered under; set by subclasses.
    name: ClassVar[str] = ""

    @abstractmethod
    def nodes(self) -> list[str]:
        """The ids of the nodes this scaler started and has not stopped (running or starting)."""

    @abstractmethod
    def scale_up(self, count: int) -> list[str]:
        """Start up to ``count`` new nodes; the ids of those started."""

    @abstractmethod
    def remove(self, node_id: str) -> None:
        """Stop a node this scaler started (drained first by the autoscaler)."""

    def close(self) -> None:
        """Release what the driver holds (clients, threads); its nodes go on. Default: nothing."""
        return None
