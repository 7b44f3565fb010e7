"""The agent stream's protocol (agent.proto) and its generated code; see README.md here."""

from __future__ import annotations

from runink.core.control.records import Amount
from runink.core.server.proto import agent_pb2

#: the stream's method, as the server registers it and the agent calls it
CONNECT = "/runink.agent.v1.AgentService/Connect"


def capacity_message(amount: Amount) -> agent_pb2.Capacity:
    """An amount of resources (a node's capacity, a task's resources) as the stream sends it."""
    return agent_pb2.Capacity(cpu=amount.cpu, memory=amount.memory, gpu=amount.gpu, pids=amount.pids)


def amount_of(capacity: agent_pb2.Capacity) -> Amount:
    """The amount a Capacity message says, checked (pydantic's ValidationError if out of bounds)."""
    return Amount(cpu=capacity.cpu, memory=capacity.memory, gpu=capacity.gpu, pids=capacity.pids)
