"""The live table of `runink run` on a terminal: while a scenario runs, how much of its source
is read and, at its pace so far, the time left (where its storage driver knows the share)."""

from __future__ import annotations

import io

from rich.console import Console

from runink.core.agent.scenarios import ScenarioRun
from runink.core.cli.run_cmd import _how_far, _table
from runink.core.model import ScenarioState
from runink.core.runner import RunResult


def running(read: float | None, elapsed: float) -> ScenarioRun:
    run = ScenarioRun("Load", state=ScenarioState.RUNNING, rows_in=1000, read=read)
    run.started = 1000.0
    run.finished = 1000.0 + elapsed  # (elapsed is measured to `finished` when set)
    return run


def test_percent_read_and_time_left_at_the_pace_so_far() -> None:
    assert _how_far(running(0.25, 30)) == ("25%", "1m30s")
    assert _how_far(running(0.5, 7200)) == ("50%", "2h00m")
    assert _how_far(running(0.9, 9)) == ("90%", "1s")
    assert _how_far(running(0.005, 30)) == ("0%", None)  # too early to tell
    assert _how_far(running(1.0, 30)) == ("100%", None)  # all read: the last batches go through the steps
    assert _how_far(running(None, 30)) == (None, None)  # a driver that does not say
    ended = running(0.5, 30)
    ended.state = ScenarioState.SUCCEEDED
    assert _how_far(ended) == (None, None)


def test_the_live_table_has_done_and_left_the_summary_not() -> None:
    result = RunResult("20261205-000000-abcdef", "p", "default", [running(0.25, 30)], 0.0)
    for live, wanted in ((True, True), (False, False)):
        out = io.StringIO()
        Console(file=out, width=200).print(_table(result, live=live))
        text = out.getvalue()
        assert ("DONE" in text and "25%" in text and "1m30s" in text) is wanted, text
