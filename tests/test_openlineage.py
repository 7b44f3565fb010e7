"""Lineage events are valid OpenLineage: checked against the spec's JSON schemas, and sent by the
openlineage-python client's HTTP transport to a local server, in the order runs happen. Sinks
never make a run wait or fail."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fixture_types import CliRunner
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from runink.core.model import LineageEvent
from runink.plugins.lineage import QueuedLineageSink
from runink.plugins.lineage.openlineage_events import (
    EVENT_SCHEMA,
    FACET_SCHEMAS,
    RUNINK_FACET_SCHEMA,
    run_uuid,
    to_json,
)
from runink.testing import plugin_manager

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "tests" / "data" / "openlineage"


def _registry() -> Registry:
    resources = [
        Resource.from_contents(json.loads(path.read_text()))
        for path in [SPEC / "OpenLineage.json", *sorted((SPEC / "facets").glob("*.json"))]
    ]
    return Registry().with_resources((str(r.contents["$id"]), r) for r in resources)


REGISTRY = _registry()


def validate(event: dict[str, Any]) -> None:
    """``event`` against OpenLineage's RunEvent schema, and each facet against its own schema."""
    assert event["schemaURL"] == "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
    Draft202012Validator({"$ref": event["schemaURL"]}, registry=REGISTRY).validate(event)
    facets = [
        *event["run"]["facets"].values(),
        *event["job"]["facets"].values(),
        *(f for d in event["inputs"] for f in [*d["facets"].values(), *d.get("inputFacets", {}).values()]),
        *(f for d in event["outputs"] for f in [*d["facets"].values(), *d.get("outputFacets", {}).values()]),
    ]
    for facet in facets:
        assert facet["_producer"].startswith("https://")
        if facet["_schemaURL"] == RUNINK_FACET_SCHEMA:  # ours: its fields are documented in docs/lineage.md
            continue
        Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=REGISTRY).validate(facet)


def test_a_runs_events_validate_against_the_openlineage_schema(
    run_cli: CliRunner, orders: Path, data_home: Path
) -> None:
    out = run_cli("run", "orders.dsl", cwd=orders)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in (data_home / "lineage" / "events.jsonl").read_text().splitlines()]
    assert [e["eventType"] for e in events].count("START") == 2 and len(events) == 4
    for event in events:
        validate(event)
    # a failed run too, with its error
    failed = LineageEvent(
        "FAIL",
        "run-9/validate",
        "Validate",
        "finance",
        ("csv:///data/orders.csv",),
        ("s3://lake/silver/orders.parquet",),
        facets={"pipeline": "orders", "pipeline_run": "run-9", "error": "contract: amount missing", "rows_in": 3},
    )
    event = json.loads(to_json(failed))
    validate(event)
    assert event["run"]["facets"]["errorMessage"]["message"] == "contract: amount missing"
    assert event["run"]["runId"] == run_uuid("run-9/validate")
    assert event["run"]["facets"]["parent"]["run"]["runId"] == run_uuid("run-9")
    assert (event["outputs"][0]["namespace"], event["outputs"][0]["name"]) == ("s3://lake", "silver/orders.parquet")


class _Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, type[_Collector]]]:
    handler = type("Collector", (_Collector,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_http_transport_posts_every_event_in_the_order_runs_happen(
    run_cli: CliRunner, orders: Path, collector: tuple[str, type[_Collector]], data_home: Path
) -> None:
    url, handler = collector
    config = orders / "runink.toml"
    config.write_text(
        f'[plugin.openlineage]\ntransport = {{ type = "http", url = "{url}", endpoint = "api/v1/lineage" }}\n'
    )
    out = run_cli("run", "orders.dsl", cwd=orders)
    assert out.returncode == 0, out.stderr
    # every event, once the command returned (the sink flushes as the command ends), in the
    # order they were emitted: the same order the JSON Lines sink wrote them in
    written = [json.loads(line) for line in (data_home / "lineage" / "events.jsonl").read_text().splitlines()]
    assert [path for path, _ in handler.received] == ["/api/v1/lineage"] * 4
    posted = [event for _, event in handler.received]
    assert [(e["eventType"], e["run"]["runId"]) for e in posted] == [
        (e["eventType"], e["run"]["runId"]) for e in written
    ]
    for run_id in {e["run"]["runId"] for e in posted}:  # each run: START, then its end
        assert [e["eventType"] for e in posted if e["run"]["runId"] == run_id] == ["START", "COMPLETE"]
    # the upstream scenario's run ended before the downstream one started
    order = [(e["eventType"], e["job"]["name"].rpartition(".")[2]) for e in posted]
    assert order.index(("COMPLETE", "Validate orders")) < order.index(("START", "Large orders"))
    for event in posted:
        validate(event)
    # the client sends the very events the JSON Lines file has, plus facets of its own (tags)
    for sent, kept in zip(posted, written, strict=True):
        for part in ("run", "job"):
            added = set(sent[part]["facets"]) - set(kept[part]["facets"])
            assert all("OpenLineage/OpenLineage" in sent[part]["facets"][k]["_producer"] for k in added), added
            sent[part]["facets"] = {k: v for k, v in sent[part]["facets"].items() if k not in added}
        assert sent == kept


def test_the_events_name_the_schemas_openlineage_python_names() -> None:
    """The events are built as dicts (the client's import costs every run ~0.4 s): each facet
    names the schema URL the installed client's class for it names, and the event its own."""
    from openlineage.client.event_v2 import RunEvent
    from openlineage.client.facet_v2 import (
        data_quality_metrics_input_dataset,
        error_message_run,
        output_statistics_output_dataset,
        parent_run,
        processing_engine_run,
        schema_dataset,
    )

    classes = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
        "parent": parent_run.ParentRunFacet,
        "errorMessage": error_message_run.ErrorMessageRunFacet,
        "schema": schema_dataset.SchemaDatasetFacet,
        "dataQualityMetrics": data_quality_metrics_input_dataset.DataQualityMetricsInputDatasetFacet,
        "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet,
    }
    assert set(FACET_SCHEMAS) == {*classes, "runink"}
    for kind, facet in classes.items():
        assert FACET_SCHEMAS[kind] == facet._get_schema(), kind
    assert RunEvent._get_schema() == EVENT_SCHEMA


def test_a_consumer_that_refuses_or_is_away_never_fails_the_run(
    run_cli: CliRunner, orders: Path, collector: tuple[str, type[_Collector]]
) -> None:
    url, handler = collector
    handler.status = 400  # refuses every event
    refused = 'transport = {{ type = "http", url = "{}", retry = {{ total = 0 }} }}\nflush_timeout = 5\n'
    (orders / "runink.toml").write_text("[plugin.openlineage]\n" + refused.format(url))
    out = run_cli("run", "orders.dsl", cwd=orders)
    assert out.returncode == 0, out.stderr
    assert len(handler.received) == 4  # each tried once, each refused
    assert out.stderr.count("openlineage: an event was not delivered: HTTPError") == 4
    # away: nothing listens there
    (orders / "runink.toml").write_text("[plugin.openlineage]\n" + refused.format("http://127.0.0.1:9"))
    began = time.monotonic()
    out = run_cli("run", "orders.dsl", "--json", cwd=orders)
    assert out.returncode == 0, out.stderr
    assert {s["state"] for s in json.loads(out.stdout)["scenarios"]} == {"SUCCEEDED"}
    assert "openlineage: an event was not delivered" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - began < 60


def test_bad_openlineage_settings_are_one_line_naming_the_option(run_cli: CliRunner, orders: Path) -> None:
    (orders / "runink.toml").write_text('[plugin.openlineage]\ntransport = "http://x"\n')
    out = run_cli("plugins", "list", "--json", cwd=orders)
    assert "plugin openlineage failed: [plugin.openlineage] transport (" in out.stderr
    assert out.stderr.rstrip().endswith("runink.toml:2): must be a table, got a string")
    assert "Traceback" not in out.stderr


class _Slow(QueuedLineageSink):
    label = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.closings = 0

    def deliver(self, event: LineageEvent) -> None:
        time.sleep(0.05)
        self.seen.append(event.run_id)

    def closed(self) -> None:
        self.closings += 1


def test_hook_runink_unconfigure() -> None:
    """A queued sink's emit returns at once; unconfigure waits until every event was delivered, in order."""
    sink = _Slow()
    with plugin_manager(("slow", sink), entrypoints=False) as manager:
        began = time.monotonic()
        for number in range(5):
            manager.hooks.lineage_event(LineageEvent("START", f"run-{number}", "job", "herd"))
        assert time.monotonic() - began < 0.2  # the run did not wait for 5 x 50 ms
        manager.unconfigure()
        assert sink.seen == [f"run-{n}" for n in range(5)] and sink.delivered == 5
        manager.unconfigure()  # once only: nothing happens the second time
        sink.close()  # (as the process's exit does too): the sink releases what it holds once
        assert sink.closings == 1


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    sink = _Slow()
    sink.resize(2)
    with plugin_manager(("slow", sink), entrypoints=False) as manager:
        for number in range(10):
            manager.hooks.lineage_event(LineageEvent("START", f"run-{number}", "job", "herd"))
    assert sink.dropped >= 6 and sink.delivered + sink.dropped == 10
