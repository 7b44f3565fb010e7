"""The linux executor passes the Executor conformance suite, for real (root, cgroups, namespaces)."""

from __future__ import annotations

import pytest

from runink.plugins.executors.linux.executor import LinuxExecutor
from runink.testing import ExecutorConformance

PROBLEMS = LinuxExecutor._detect_problems()


@pytest.mark.skipif(bool(PROBLEMS), reason=f"cannot isolate here: {PROBLEMS}")
class TestLinuxExecutor(ExecutorConformance):
    driver_name = "linux"
