"""The process executor passes the Executor conformance suite."""

from runink.testing import ExecutorConformance


class TestProcessExecutor(ExecutorConformance):
    driver_name = "process"
