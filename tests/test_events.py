"""Lineage, metrics and logs fan out to every sink; one failing sink does not stop the others."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from runink.core import hookimpl
from runink.core.config import RuninkConfig
from runink.core.events import emit_lineage, export_log, export_metrics
from runink.core.model import LineageEvent, LogEntry, MetricSample
from runink.plugins.lineage import LineageSink
from runink.testing import plugin_manager

EVENT = LineageEvent(
    "COMPLETE",
    "run-1",
    "orders:validate",
    "finance",
    inputs=("csv://data/orders.csv",),
    outputs=("parquet://out/orders.parquet",),
    facets={"rows": 10},
)


class Recorder(LineageSink):
    def __init__(self) -> None:
        self.events: list[LineageEvent] = []

    def emit(self, event: LineageEvent) -> None:
        self.events.append(event)


class Exploding(LineageSink):
    def emit(self, event: LineageEvent) -> None:
        raise ConnectionError("catalog down")


def test_hook_runink_lineage_event(tmp_path: Path) -> None:
    first, second = Recorder(), Recorder()
    config = RuninkConfig(data_dir=tmp_path)
    with plugin_manager(("a", first), ("boom", Exploding()), ("b", second), config=config) as manager:
        failed = emit_lineage(manager, EVENT)
    assert failed == ["boom"]
    assert first.events == [EVENT] and second.events == [EVENT]
    # The built-in lineage-jsonl sink wrote an OpenLineage run event under data_dir (by the
    # time the manager was unconfigured: it writes from a thread of its own).
    line = json.loads((tmp_path / "lineage" / "events.jsonl").read_text().splitlines()[0])
    assert line["eventType"] == "COMPLETE"
    assert line["job"] == {"namespace": "runink.finance", "name": "orders:validate", "facets": {}}
    assert [(o["namespace"], o["name"]) for o in line["outputs"]] == [("file", "out/orders.parquet")]
    assert line["run"]["facets"]["runink"]["herd"] == "finance"


def test_hook_runink_export_metrics() -> None:
    batches: list[list[str]] = []

    class Exporter:
        @hookimpl
        def runink_export_metrics(self, samples: Sequence[MetricSample]) -> None:
            batches.append([s.name for s in samples])

    class Broken:
        @hookimpl
        def runink_export_metrics(self, samples: Sequence[MetricSample]) -> None:
            raise TimeoutError("pushgateway")

    samples = [MetricSample("runink_rows_total", 10, "counter", {"step": "normalize"}), MetricSample("x", 1)]
    with plugin_manager(("exporter", Exporter()), ("broken", Broken())) as manager:
        assert export_metrics(manager, samples) == ["broken"]
    assert batches == [["runink_rows_total", "x"]]


def test_hook_runink_export_log(caplog: pytest.LogCaptureFixture) -> None:
    """The built-in log-export plugin hands records to Python logging with their fields."""
    with plugin_manager() as manager, caplog.at_level(logging.INFO, logger="runink.export"):
        export_log(manager, LogEntry("step started", "info", "slice", {"slice_id": "s-1", "step": "enrich"}))
        export_log(manager, LogEntry("noise", "debug", "slice"))
    assert "[slice] step started (slice_id=s-1 step=enrich)" in caplog.text
    assert "noise" not in caplog.text
