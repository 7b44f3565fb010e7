"""Placing a pipeline's task near another of its job, through the real Scheduler and ClusterStore
on the memory Barn: a scenario reading a local dataset an upstream scenario wrote runs on that
node (unless the dataset is under ``[cluster] shared_paths`` or remote), one with
``@affinity(colocate_with=...)`` waits until its partner has a node and then goes there only;
``--explain`` (the task's explain and pending reason) says why; bad constraints are refused."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from runink.core.control.lifecycle import Lifecycle, pipeline_tasks
from runink.core.control.records import (
    Amount,
    Herd,
    LocalInput,
    NodeRecord,
    PipelineTask,
    RunState,
    TaskRecord,
    keys,
)
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore, Refused
from runink.core.drivers import load_driver
from runink.core.interfaces import SchedulerPolicy
from runink.core.pipeline.compile import CompiledPipeline, compile_pipeline
from runink.core.pipeline.dsl import parse_file
from runink.core.plugins import PluginManager
from runink.plugins.barn.memory import MemoryBarn
from runink.testing import plugin_manager

GiB = 1024**3
PIPELINE = "/pipelines/p.dsl"


@pytest.fixture
def store() -> ClusterStore:
    store = ClusterStore(MemoryBarn())
    store.create_herd(Herd(name="h"))
    for node_id in ("n1", "n2"):
        node = NodeRecord(id=node_id, capacity=Amount(cpu=4, memory=16 * GiB))
        store.commit([(keys.node(node_id), 0)], [(keys.node(node_id), node)])
    return store


@pytest.fixture
def manager() -> Iterator[PluginManager]:
    with plugin_manager() as manager:
        yield manager


def spread(store: ClusterStore, manager: PluginManager) -> Scheduler:
    return Scheduler(store, manager, load_driver(SchedulerPolicy, "spread"))


def compiled(folder: Path, body: str) -> CompiledPipeline:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.dsl").write_text("Feature: f\n" + body)
    return compile_pipeline(parse_file(folder / "p.dsl"))


TWO_STEPS = (
    "  Scenario: First\n"
    '    @source("csv://in.csv")\n'
    '    @sink("csv://mid.csv")\n'
    "  Scenario: Second\n"
    '    @source("csv://mid.csv")\n'
    '    @sink("csv://out.csv")\n'
)


def tasks_by_scenario(store: ClusterStore, job_id: str) -> dict[str, TaskRecord]:
    return {
        v.record.scenario.scenario: v.record
        for v in store.job_tasks(store.job(job_id).record)
        if v.record.scenario is not None
    }


def change(
    store: ClusterStore, task: TaskRecord, node: str | None = None, states: Sequence[RunState] = ()
) -> TaskRecord:
    """Place ``task`` on ``node`` (when given) and move it through ``states``, as the scheduler
    and an agent would."""

    def moved(t: TaskRecord) -> TaskRecord:
        if node is not None:
            t = t.moved_to(RunState.SCHEDULED, node=node, attempt=t.attempt + 1, token=1)
        for state in states:
            t = t.moved_to(state)
        return t

    return store.update(keys.task(task.herd, task.id), TaskRecord, moved)


def busy(store: ClusterStore, life: Lifecycle, node: str, cpu: float) -> None:
    """A command job holding ``cpu`` on ``node`` (spread then prefers the other node)."""
    job = life.submit_command("h", ["/bin/true"], Amount(cpu=cpu))
    (task,) = store.job_tasks(store.job(job.id).record)
    change(store, task.record, node=node)


def test_a_scenario_reading_a_local_dataset_runs_on_the_node_that_wrote_it(
    store: ClusterStore, manager: PluginManager, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    tasks = pipeline_tasks(compiled(tmp_path / "p", TWO_STEPS))
    mid = str(tmp_path / "p" / "mid.csv")
    assert tasks[1].local_input == LocalInput(scenario="First", path=mid)
    assert tasks[0].local_input is None  # in.csv: written by no scenario
    job = life.submit_pipeline("h", PIPELINE, tasks)
    first = tasks_by_scenario(store, job.id)["First"]
    change(store, first, node="n2", states=[RunState.RUNNING, RunState.SUCCEEDED])
    busy(store, life, "n2", cpu=2)
    # a command job of the same size, submitted with it, shows where spread alone would go
    control = life.submit_command("h", ["/bin/true"], Amount(cpu=1))

    placed = spread(store, manager).run_pass(now=0).placed
    second = tasks_by_scenario(store, job.id)["Second"]
    assert placed[second.id] == "n2"
    assert placed[store.job(control.id).record.tasks[0]] == "n1"
    assert second.near[0].task == first.id
    why = f"input {mid} was written on node n2 (not under [cluster] shared_paths)"
    assert second.explain[0].startswith("chosen n2: score ")
    assert second.explain[1:] == [f"{why}: placed there", f"n1: {why}"]


def test_a_dataset_under_a_shared_path_or_in_s3_needs_no_locality(
    store: ClusterStore, manager: PluginManager, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    folder = tmp_path / "shared" / "p"
    tasks = pipeline_tasks(compiled(folder, TWO_STEPS), shared_paths=[tmp_path / "shared"])
    assert [t.local_input for t in tasks] == [None, None]
    job = life.submit_pipeline("h", PIPELINE, tasks)
    first = tasks_by_scenario(store, job.id)["First"]
    change(store, first, node="n2", states=[RunState.RUNNING, RunState.SUCCEEDED])
    busy(store, life, "n2", cpu=2)
    spread(store, manager).run_pass(now=0)
    second = tasks_by_scenario(store, job.id)["Second"]
    assert (second.near, second.node) == ([], "n1")  # spread's choice: nothing holds it to n2

    # a shared path given through a symbolic link still counts (the dataset's real path is under it)
    (tmp_path / "link").symlink_to(tmp_path / "shared")
    assert [t.local_input for t in pipeline_tasks(compiled(folder, TWO_STEPS), shared_paths=[tmp_path / "link"])] == [
        None,
        None,
    ]
    # not under it: constrained
    assert pipeline_tasks(compiled(folder, TWO_STEPS), shared_paths=[tmp_path / "elsewhere"])[1].local_input

    remote = compiled(
        tmp_path / "remote",
        "  @network\n"
        "  Scenario: Writer\n"
        '    @source("csv://in.csv")\n'
        '    @sink("s3://bucket/mid.parquet")\n'
        "  @network\n"
        "  Scenario: Reader\n"
        '    @source("s3://bucket/mid.parquet")\n'
        '    @sink("csv://out.csv")\n',
    )
    reader = pipeline_tasks(remote)[1]
    assert (reader.after, reader.local_input) == (["Writer"], None)


COLOCATED = (
    "  Scenario: A\n"
    '    @source("csv://a.csv")\n'
    "    @requires(cpu=2)\n"
    '    @sink("csv://a-out.csv")\n'
    '  @affinity(colocate_with="scenario:A")\n'
    "  Scenario: B\n"
    '    @source("csv://b.csv")\n'
    '    @sink("csv://b-out.csv")\n'
)


def test_a_colocated_scenario_waits_for_its_partner_then_lands_on_its_node(
    store: ClusterStore, manager: PluginManager, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    busy(store, life, "n1", cpu=1)  # A (2 cpu) goes to n2; B (1 cpu) alone would go to n1
    tasks = pipeline_tasks(compiled(tmp_path / "p", COLOCATED))
    assert [t.colocate_with for t in tasks] == [None, "A"]
    job = life.submit_pipeline("h", PIPELINE, tasks)
    sched = spread(store, manager)

    first = sched.run_pass(now=0)
    named = tasks_by_scenario(store, job.id)
    a, b = named["A"], named["B"]
    assert first.placed == {a.id: "n2"}
    assert b.state is RunState.PENDING
    assert b.pending_reason == f"colocated with A: waits until its task {a.id} (A) is placed"

    second = sched.run_pass(now=1)
    b = tasks_by_scenario(store, job.id)["B"]
    assert second.placed == {b.id: "n2"}
    assert b.explain[1:] == ["colocated with A on n2: placed there", "n1: colocated with A on n2"]


def test_a_colocated_scenario_waits_while_its_partners_node_cannot_hold_it(
    store: ClusterStore, manager: PluginManager, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    tasks = pipeline_tasks(compiled(tmp_path / "p", COLOCATED))
    tasks[1] = tasks[1].model_copy(update={"resources": Amount(cpu=3)})
    job = life.submit_pipeline("h", PIPELINE, tasks)
    named = tasks_by_scenario(store, job.id)
    change(store, named["A"], node="n2", states=[RunState.RUNNING])
    sched = spread(store, manager)

    assert sched.run_pass(now=0).placed == {}
    b = tasks_by_scenario(store, job.id)["B"]
    assert b.pending_reason == "colocated with A on n2: n2: cpu 3 > free 2 [resource-fit]"
    assert "n1: colocated with A on n2" in b.explain

    # A ended there: its node is free again, and B still goes where A was
    change(store, tasks_by_scenario(store, job.id)["A"], states=[RunState.SUCCEEDED])
    assert sched.run_pass(now=1).placed == {b.id: "n2"}
    assert "colocated with A on n2 (where it ended SUCCEEDED): placed there" in store.task("h", b.id).record.explain


def test_a_colocated_scenario_whose_partners_node_died_waits_saying_so(
    store: ClusterStore, manager: PluginManager, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    job = life.submit_pipeline("h", PIPELINE, pipeline_tasks(compiled(tmp_path / "p", COLOCATED)))
    change(store, tasks_by_scenario(store, job.id)["A"], node="n2", states=[RunState.RUNNING, RunState.SUCCEEDED])
    store.update(keys.node("n2"), NodeRecord, lambda n: n.model_copy(update={"ready": False}))
    assert spread(store, manager).run_pass(now=0).placed == {}
    b = tasks_by_scenario(store, job.id)["B"]
    assert (
        b.pending_reason == "colocated with A on n2 (where it ended SUCCEEDED): n2 is not ready (its heartbeat stopped)"
    )


def test_a_scenario_colocated_with_one_that_never_ran_is_skipped(
    store: ClusterStore, manager: PluginManager, tmp_path: Path
) -> None:
    life = Lifecycle(store)
    tasks = [
        PipelineTask(scenario="a"),
        PipelineTask(scenario="b", after=["a"]),
        PipelineTask(scenario="c", colocate_with="b"),
    ]
    job = life.submit_pipeline("h", PIPELINE, tasks)
    named = tasks_by_scenario(store, job.id)
    change(store, named["a"], node="n1", states=[RunState.RUNNING, RunState.FAILED])
    sched = spread(store, manager)
    sched.run_pass(now=0)  # b is SKIPPED (its upstream failed) ...
    sched.run_pass(now=1)  # ... so c, which could only go where b went, is SKIPPED too
    named = tasks_by_scenario(store, job.id)
    assert named["b"].state is RunState.SKIPPED
    assert named["c"].state is RunState.SKIPPED
    assert named["c"].transitions[-1].reason == (
        f"colocated with b, whose task {named['b'].id} ended (SKIPPED) on no node"
    )
    assert store.job(job.id).record.state is RunState.FAILED


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            [PipelineTask(scenario="a", colocate_with="ghost")],
            f"pipeline {PIPELINE}: scenario 'a': colocate_with 'ghost' is no scenario of this submission",
        ),
        (
            [PipelineTask(scenario="a", colocate_with="a")],
            f"pipeline {PIPELINE}: scenario 'a': colocate_with 'a' is itself",
        ),
        (
            [PipelineTask(scenario="a", colocate_with="b"), PipelineTask(scenario="b", after=["a"])],
            f"pipeline {PIPELINE}: scenarios wait on each other for ever (after, colocate_with): a -> b -> a",
        ),
        (
            [PipelineTask(scenario="a"), PipelineTask(scenario="b", local_input=LocalInput(scenario="a", path="/m"))],
            f"pipeline {PIPELINE}: scenario 'b': local_input from 'a', not a scenario it comes after",
        ),
    ],
)
def test_a_constraint_that_can_never_hold_is_refused_in_one_line(
    store: ClusterStore, tasks: list[PipelineTask], message: str
) -> None:
    with pytest.raises(Refused) as refused:
        Lifecycle(store).submit_pipeline("h", PIPELINE, tasks)
    assert str(refused.value) == message
    assert store.jobs() == []


def test_scenarios_colocated_in_a_chain_are_accepted(store: ClusterStore) -> None:
    tasks = [
        PipelineTask(scenario="a", colocate_with="c"),  # names one later in the submission: fine
        PipelineTask(scenario="b", colocate_with="a"),
        PipelineTask(scenario="c"),
    ]
    job = Lifecycle(store).submit_pipeline("h", PIPELINE, tasks)
    named = tasks_by_scenario(store, job.id)
    assert [n.task for n in named["a"].near] == [named["c"].id]
    assert [n.task for n in named["b"].near] == [named["a"].id]
