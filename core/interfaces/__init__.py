"""Driver interfaces: one driver per group is chosen by name in configuration.

Each interface is a small abstract class with a documented contract; ``runink.testing`` has a
conformance suite a driver runs against itself. The entry-point group of each interface is
its ``GROUP`` attribute.
"""

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
