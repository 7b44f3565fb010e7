"""Lineage over the agent stream: the server takes a node's lineage events only for scenario
attempts placed on that node, with the herd, run and job of the task's record whatever the
node says; malformed events end the stream (as any garbage does). The agent's outbox keeps
events in order while the servers are away."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import grpc
import msgspec
import pytest
from agent_helpers import schedule
from test_agent_grpc import RawStream, register

from runink.core.agent.lineage import LineageOutbox
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.records import PipelineTask
from runink.core.control.store import ClusterStore
from runink.core.errors import RuninkError
from runink.core.model import LineageEvent
from runink.core.server.agent_service import serve_agents
from runink.core.server.proto import agent_pb2 as pb


@pytest.fixture
def received(life: Lifecycle) -> Iterator[tuple[str, list[LineageEvent]]]:
    events: list[LineageEvent] = []
    server = serve_agents(life, "127.0.0.1", 0, on_lineage=events.append)
    yield f"127.0.0.1:{server.port}", events
    server.stop(grace=None).wait()


@pytest.fixture
def stream(received: tuple[str, list[LineageEvent]]) -> Iterator[Callable[[], RawStream]]:
    opened: list[RawStream] = []

    def open_stream() -> RawStream:
        opened.append(RawStream(received[0]))
        return opened[-1]

    yield open_stream
    for one in opened:
        one.close()


def _scenario_task(life: Lifecycle, store: ClusterStore, node: str = "n1") -> tuple[str, str]:
    job = life.submit_pipeline("lab", "/srv/p.dsl", [PipelineTask(scenario="Validate orders")], run="run-7")
    task = schedule(store, job.id, node)
    return task.id, job.id


def _lineage(task_id: str, **fields: object) -> pb.AgentMessage:
    event = {
        "herd": "lab",
        "task_id": task_id,
        "attempt": 1,
        "event_type": "COMPLETE",
        "inputs": ["csv:///srv/in.csv"],
        "outputs": ["parquet:///srv/out.parquet"],
        "event_time": 1_800_000_000.0,
        "facets_json": json.dumps({"rows_out": 98, "job_id": "forged", "node": "forged"}),
        **fields,
    }
    return pb.AgentMessage(request_id=9, lineage=pb.Lineage(**event))  # type: ignore[arg-type]


def test_an_event_of_an_attempt_on_the_node_reaches_the_servers_sinks_as_the_record_says(
    life: Lifecycle, store: ClusterStore, stream: Callable[[], RawStream], received: tuple[str, list[LineageEvent]]
) -> None:
    task_id, job_id = _scenario_task(life, store)
    agent = stream()
    register(agent, "n1")
    answer = agent.send(_lineage(task_id, herd="lab"))
    assert answer.WhichOneof("body") == "lineage_ack" and answer.lineage_ack.accepted
    (event,) = received[1]
    assert (event.event_type, event.run_id, event.job, event.herd) == (
        "COMPLETE",
        "run-7/validate-orders",
        "Validate orders",
        "lab",
    )
    assert event.facets["job_id"] == job_id and event.facets["node"] == "n1" and event.facets["rows_out"] == 98
    assert event.facets["pipeline_run"] == "run-7" and event.outputs == ("parquet:///srv/out.parquet",)


def test_record_annotations_made_while_a_scenario_runs_reach_the_sinks_too(
    life: Lifecycle, store: ClusterStore, stream: Callable[[], RawStream], received: tuple[str, list[LineageEvent]]
) -> None:
    task_id, _ = _scenario_task(life, store)
    agent = stream()
    register(agent, "n1")
    chunk = {"model": "m", "records": [{"record": "0", "failed": False, "fields": {"summary": "s"}}]}
    facets = json.dumps({"record_annotations": chunk})
    answer = agent.send(_lineage(task_id, event_type="OTHER", facets_json=facets))
    assert answer.WhichOneof("body") == "lineage_ack" and answer.lineage_ack.accepted
    (event,) = received[1]
    assert event.event_type == "OTHER" and event.facets["record_annotations"] == chunk
    assert event.run_id == "run-7/validate-orders" and event.facets["node"] == "n1"


def test_an_event_of_another_nodes_attempt_or_a_command_is_refused_and_the_stream_goes_on(
    life: Lifecycle, store: ClusterStore, stream: Callable[[], RawStream], received: tuple[str, list[LineageEvent]]
) -> None:
    elsewhere, _ = _scenario_task(life, store, node="n2")
    command = schedule(store, life.submit_command("lab", ["/bin/true"]).id, "n1")
    agent = stream()
    register(agent, "n1")
    for message in (_lineage(elsewhere), _lineage(command.id), _lineage("task-nope"), _lineage(elsewhere, attempt=2)):
        answer = agent.send(message)
        assert answer.WhichOneof("body") == "lineage_ack" and not answer.lineage_ack.accepted
    assert received[1] == []


def test_an_event_of_a_herd_being_deleted_is_refused(
    life: Lifecycle, store: ClusterStore, stream: Callable[[], RawStream], received: tuple[str, list[LineageEvent]]
) -> None:
    """Accepted while its herd was being deleted, it wrote catalog rows again after the herd's
    deletion had removed them, for a herd made later under the name to read (a review's run)."""
    from runink.core.control.records import keys

    task_id, _ = _scenario_task(life, store)
    herd = store.herd("lab")
    store.barn.put(keys.herd("lab"), msgspec.json.encode(herd.record.model_copy(update={"deleting": True})))
    agent = stream()
    register(agent, "n1")
    answer = agent.send(_lineage(task_id))
    assert answer.WhichOneof("body") == "lineage_ack" and not answer.lineage_ack.accepted
    assert received[1] == []


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"event_type": "RUNNING"}, "lineage.event_type"),
        ({"facets_json": "[1, 2]"}, "not a JSON object"),
        ({"facets_json": "{"}, "not JSON"),
        ({"facets_json": json.dumps({"x": "y" * 70_000})}, "at most 65536"),
        ({"inputs": [f"csv:///{i}" for i in range(65)]}, "lineage.inputs: 65 datasets"),
        ({"outputs": ["csv:///" + "x" * 3000]}, "lineage.outputs"),
        ({"herd": "../etc"}, "lineage.herd"),
    ],
)
def test_a_malformed_event_ends_the_stream_with_a_reason(
    life: Lifecycle, store: ClusterStore, stream: Callable[[], RawStream], fields: dict[str, object], why: str
) -> None:
    task_id, _ = _scenario_task(life, store)
    agent = stream()
    register(agent, "n1")
    answer = agent.send(_lineage(task_id, **fields))
    assert answer.WhichOneof("body") == "error" and why in answer.error.message
    assert agent.ended() is grpc.StatusCode.INVALID_ARGUMENT


class _Away:
    def __init__(self) -> None:
        self.up = False
        self.sent: list[str] = []

    def lineage(self, event: LineageEvent, herd: str, task_id: str, attempt: int) -> bool:
        if not self.up:
            raise RuninkError("server away")
        self.sent.append(f"{event.event_type} {task_id}/{attempt}")
        return task_id != "gone"


def test_the_outbox_keeps_events_in_order_while_the_servers_are_away_and_bounds_them() -> None:
    outbox = LineageOutbox(limit=3)
    for kind, task in (("START", "t1"), ("COMPLETE", "t1"), ("START", "gone"), ("START", "t3")):
        facets = {"task_id": task, "attempt": 1}
        outbox.runink_lineage_event(LineageEvent(kind, f"r/{task}", "s", "lab", facets=facets))  # type: ignore[arg-type]
    outbox.runink_lineage_event(LineageEvent("START", "r/x", "s", "lab"))  # no task: not a cluster scenario's
    control = _Away()
    assert not outbox.send(control) and len(outbox) == 3 and outbox.dropped == 1
    control.up = True
    assert outbox.send(control) and len(outbox) == 0
    assert control.sent == ["START t1/1", "COMPLETE t1/1", "START gone/1"]
    assert (outbox.sent, outbox.refused) == (2, 1)


def test_the_outbox_drops_an_event_the_servers_would_refuse_for_its_size_and_goes_on() -> None:
    """Sent, it would be refused on every round, and every event after it would wait forever."""
    outbox = LineageOutbox()
    task = {"task_id": "t1", "attempt": 1}
    big = {**task, "record_annotations": {"records": ["é" * 20_000]}}  # 120,000 bytes as JSON
    for kind, facets in (("START", task), ("OTHER", big), ("COMPLETE", task)):
        outbox.runink_lineage_event(LineageEvent(kind, "r/t1", "s", "lab", facets=facets))  # type: ignore[arg-type]
    control = _Away()
    control.up = True
    assert outbox.send(control) and control.sent == ["START t1/1", "COMPLETE t1/1"] and outbox.too_large == 1
