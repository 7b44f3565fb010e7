"""The agent stream's protocol (agent.proto) and its generated code; see README.md here."""

from __future__ import annotations

from typing import Any

from runink.core.control.records import MAX_USAGE_TASKS, Amount, NodeUsage
from runink.core.server.proto import agent_pb2

#: the stream's method, as the server registers it and the agent calls it
CONNECT = "/runink.agent.v1.AgentService/Connect"


def capacity_message(amount: Amount) -> agent_pb2.Capacity:
    """An amount of resources (a node's capacity, a task's resources) as the stream sends it."""
    return agent_pb2.Capacity(cpu=amount.cpu, memory=amount.memory, gpu=amount.gpu, pids=amount.pids)


def amount_of(capacity: agent_pb2.Capacity) -> Amount:
    """The amount a Capacity message says, checked (RecordError if out of bounds)."""
    return Amount.model_validate(
        {"cpu": capacity.cpu, "memory": capacity.memory, "gpu": capacity.gpu, "pids": capacity.pids}
    )


def usage_message(usage: NodeUsage) -> agent_pb2.NodeUsage:
    """A node's usage sample as its heartbeat sends it."""
    tasks = [
        agent_pb2.TaskUsage(
            task_id=task_id,
            attempt=task.attempt,
            cpu_seconds=task.cpu_seconds,
            cpu=task.cpu,
            memory=task.memory,
            processes=task.processes,
        )
        for task_id, task in usage.tasks.items()
    ]
    return agent_pb2.NodeUsage(cpu=usage.cpu, memory=usage.memory, tasks=tasks, at=usage.at)


def usage_sample(message: agent_pb2.NodeUsage) -> dict[str, Any]:
    """A NodeUsage message as the dict NodeUsage validates (the Lifecycle does); ValueError if it
    names more than MAX_USAGE_TASKS tasks or one twice."""
    if len(message.tasks) > MAX_USAGE_TASKS:
        raise ValueError(f"tasks: {len(message.tasks)}, more than {MAX_USAGE_TASKS}")
    tasks = {
        task.task_id: {
            "attempt": task.attempt,
            "cpu_seconds": task.cpu_seconds,
            "cpu": task.cpu,
            "memory": task.memory,
            "processes": task.processes,
        }
        for task in message.tasks
    }
    if len(tasks) != len(message.tasks):
        raise ValueError("tasks: a task named twice")
    return {"cpu": message.cpu, "memory": message.memory, "tasks": tasks, "at": message.at}
