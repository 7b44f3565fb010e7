"""Driver interfaces: one driver per group is chosen by name in configuration.

Each interface is a small abstract class with a documented contract; ``runink.testing`` has a
conformance suite a driver runs against itself. The entry-point group of each interface is
its ``GROUP`` attribute.

The names below are imported from their modules when first asked for: a slice that needs
``Storage`` does not build the executor's, the Barn's and the model's classes (~30 ms of a
slice launcher's start, before any slice can run).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runink.core.interfaces.annotator import Annotation, Annotator
    from runink.core.interfaces.barn import BarnBackend, KeyValue, WatchEvent
    from runink.core.interfaces.executor import (
        Check,
        Executor,
        ExecutorCapabilities,
        Fingerprint,
        TaskHandle,
        TaskResult,
        TaskSpec,
        TaskState,
        TaskStats,
    )
    from runink.core.interfaces.scaler import Scaler, ScalerError
    from runink.core.interfaces.scheduler_policy import SchedulerPolicy
    from runink.core.interfaces.secrets import SecretBackend
    from runink.core.interfaces.storage import Storage

#: each exported name -> the module of this package that defines it
_MODULE_OF = {
    "Annotation": "annotator",
    "Annotator": "annotator",
    "BarnBackend": "barn",
    "KeyValue": "barn",
    "WatchEvent": "barn",
    "Check": "executor",
    "Executor": "executor",
    "ExecutorCapabilities": "executor",
    "Fingerprint": "executor",
    "TaskHandle": "executor",
    "TaskResult": "executor",
    "TaskSpec": "executor",
    "TaskState": "executor",
    "TaskStats": "executor",
    "Scaler": "scaler",
    "ScalerError": "scaler",
    "SchedulerPolicy": "scheduler_policy",
    "SecretBackend": "secrets",
    "Storage": "storage",
}

__all__ = [
    "Annotation",
    "Annotator",
    "BarnBackend",
    "Check",
    "Executor",
    "ExecutorCapabilities",
    "Fingerprint",
    "KeyValue",
    "Scaler",
    "ScalerError",
    "SchedulerPolicy",
    "SecretBackend",
    "Storage",
    "TaskHandle",
    "TaskResult",
    "TaskSpec",
    "TaskState",
    "TaskStats",
    "WatchEvent",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # (asked once)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
