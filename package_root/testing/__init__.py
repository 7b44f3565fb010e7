"""Helpers for testing Runink plugins and drivers.

* ``plugin_manager()`` / the ``runink_plugins`` pytest fixture: a fresh plugin manager, made
  current for one test, with extra plugins registered by ``register``.
* ``ExecutorConformance``, ``SchedulerPolicyConformance``, ``BarnConformance``: test classes a
  driver subclasses to run the contract checks against itself (see docs/plugins.md).
"""

from runink.testing.barn import BarnConformance
from runink.testing.executor import ExecutorConformance
from runink.testing.plugins import plugin_manager, registered_plugin
from runink.testing.scheduler import SchedulerPolicyConformance, make_node

__all__ = [
    "BarnConformance",
    "ExecutorConformance",
    "SchedulerPolicyConformance",
    "make_node",
    "plugin_manager",
    "registered_plugin",
]
