"""``runink run``: compile a .dsl pipeline and run it on the embedded default (no server)."""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runink.core.cli.output import console, print_error, print_json, print_table
from runink.core.cli.state import CliState
from runink.core.config import RuninkConfig
from runink.core.errors import RuninkError
from runink.core.pipeline.compile import CompiledPipeline, compile_pipeline
from runink.core.pipeline.dsl import parse_file

if TYPE_CHECKING:  # the runner (the lifecycle, the agent) is imported by the commands that run
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from runink.core.golden import GoldenResult
    from runink.core.runner import RunResult

#: the index of good code checks of `--dry-run` (index_store.cache_file(CODE_CHECKS))
CODE_CHECKS = "code-checks"
STATE_STYLE = {"SUCCEEDED": "green", "RUNNING": "cyan", "PENDING": "dim", "SKIPPED": "yellow"}
PROGRESS_EVERY = 5.0  # seconds between a running scenario's progress lines when stderr is not a terminal


def parse_sets(values: list[str]) -> dict[str, str]:
    overrides = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise RuninkError(f"--set {item!r}: expected KEY=VALUE (e.g. --set executor.driver=process)")
        overrides[key.strip()] = value
    return overrides


def load_pipeline(path: Path, config: RuninkConfig | None = None) -> CompiledPipeline:
    return compile_pipeline(parse_file(path), config=config)


def plan_json(compiled: CompiledPipeline) -> dict[str, Any]:
    return {
        "pipeline": compiled.pipeline.name,
        "herd": compiled.pipeline.herd,
        "levels": [list(level) for level in compiled.levels],
        "scenarios": [
            {
                "scenario": item.name,
                "source": item.source.canonical(),
                "contract": item.scenario.source.contract if item.scenario.source else None,
                "steps": [s.ref for s in item.scenario.steps],
                "sinks": [{"dataset": s.ref.canonical(), "when": s.when} for s in item.sinks],
                "upstream": list(item.upstream),
                "requires": vars(item.scenario.requires),
                "retries": item.scenario.retries,
            }
            for item in compiled.scenarios
        ],
    }


def _table(result: RunResult, *, live: bool = False) -> Table:
    """The run's table; ``live`` (while it runs): with each running scenario's share of its
    source read and the time left, where its storage driver knows the share."""
    from rich.markup import escape
    from rich.table import Table

    title = escape(f"{result.pipeline} (herd {result.herd}, run {result.run_id})")  # (a name's [markup] is text)
    table = Table(title=title, title_justify="left")
    numeric = {"IN", "VALID", "INVALID", "OUT", "ROWS/S", "TIME", "DONE", "LEFT"}
    columns = ["SCENARIO", "STATE", "IN", "VALID", "INVALID", "STEPS (rows out)", "OUT", "ROWS/S", "TIME"]
    for column in columns + (["DONE", "LEFT"] if live else []):
        table.add_column(column, justify="right" if column in numeric else "left")
    for run in result.scenarios:
        style = STATE_STYLE.get(run.state, "red")
        steps = " > ".join(f"{ref.rsplit(':', 1)[-1]} {rows:,}" for ref, rows in run.steps.items()) or "-"
        row = [
            escape(run.name),
            f"[{style}]{run.state}[/]",
            f"{run.rows_in:,}",
            f"{run.rows_valid:,}",
            f"{run.rows_invalid:,}",
            escape(steps),
            f"{run.rows_out:,}",
            f"{_rate(run):,.0f}" if run.rows_in else "-",
            f"{run.elapsed:.1f}s",
        ]
        if live:
            done, left = _how_far(run)
            row += [done or "-", left or "-"]
        table.add_row(*row)
    return table


def _rate(run: Any) -> float:
    """Rows read per second so far."""
    return run.rows_in / run.elapsed if run.elapsed > 0 else 0.0


def _how_far(run: Any) -> tuple[str | None, str | None]:
    """A running scenario's share of its source read (``42%``) and the time left at its pace
    so far (``1m05s``), when its storage driver says how much it read; the time left once a
    percent is read (before, the slice's start would weigh too much in it)."""
    if run.state != "RUNNING" or run.read is None:
        return None, None
    done = f"{run.read * 100:.0f}%"
    if not 0.01 <= run.read < 1 or run.elapsed <= 0:  # (all read: what is left is the last batches' steps)
        return done, None
    seconds = round(run.elapsed * (1 - run.read) / run.read)
    hours, rest = divmod(seconds, 3600)
    left = f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"
    return done, left


def _shown(path: str) -> str:
    """A dataset's path as the person typed it: relative to the current folder when under it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def where_rows_went(run: Any) -> str | None:
    """``NAME: 980 valid rows -> out/x.parquet; 20 dead letters -> out/dlq.jsonl``, for a
    scenario that wrote its outputs."""
    if run.state != "SUCCEEDED":
        return None
    valid = [_shown(p) for p in run.outputs if p not in run.dead_letters]
    parts = [f"{run.rows_out:,} valid rows -> {', '.join(valid)}"] if valid else []
    if run.dead_letters:
        parts.append(f"{run.rows_invalid:,} dead letters -> {', '.join(_shown(p) for p in run.dead_letters)}")
    return f"{run.name}: {'; '.join(parts)}" if parts else None


def run_command(
    ctx: typer.Context,
    pipeline: Path = typer.Argument(..., metavar="PIPELINE", help="The pipeline's .dsl file."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set executor.driver=process."),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="Serve /metrics (Prometheus) on 127.0.0.1:PORT while the run lasts.",
    ),
    fail_on_invalid: float | None = typer.Option(
        None,
        "--fail-on-invalid",
        min=0,
        max=100,
        metavar="PCT",
        help="Fail a scenario whose invalid rows pass PCT percent of its rows (its outputs not published).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and print the plan; run nothing."),
    json_output: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout."),
) -> None:
    """Run a pipeline on this machine: each scenario as a slice, in dependency order."""
    state: CliState = ctx.obj
    parse_sets(set_)  # validates the syntax; the values were applied when the CLI started
    config = state.config()
    if fail_on_invalid is not None:
        if not math.isfinite(fail_on_invalid):  # (click's range check lets NaN through)
            raise typer.BadParameter(f"{fail_on_invalid}: a percentage from 0 to 100", param_hint="--fail-on-invalid")
        config = config.model_copy(update={"run": config.run.model_copy(update={"fail_on_invalid": fail_on_invalid})})
    compiled = load_pipeline(pipeline, config)
    if dry_run:
        problems = _dry_run_problems(config, compiled, state)
        if problems:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            raise typer.Exit(2)
        plan = plan_json(compiled)
        if json_output:
            print_json(plan)
        else:
            rows = [
                (
                    s["scenario"],
                    " -> ".join([s["source"], *s["steps"]]),
                    ", ".join(f"{k['dataset']}{' (invalid)' if k['when'] == 'invalid' else ''}" for k in s["sinks"]),
                    ", ".join(s["upstream"]) or "-",
                )
                for s in plan["scenarios"]
            ]
            print_table(
                f"{plan['pipeline']} (herd {plan['herd']}): plan",
                ["SCENARIO", "READS -> STEPS", "WRITES", "AFTER"],
                rows,
            )
        return
    manager = state.plugins()
    from runink.core.drivers import pipeline_executor

    executor = pipeline_executor(config, compiled.limits_asked(), manager)
    executor.prepare(len(compiled.scenarios))  # (its helper starts while the runner is set up)
    from runink.core.cli import prestart

    prestart.remember(state, executor)  # (the next run with this config starts it sooner)
    from rich.markup import escape

    from runink.core.runner import LocalRunner

    err = console(stderr=True)
    live: Live | None = None
    last_print: dict[str, str] = {}
    last_progress: dict[str, float] = {}

    def on_update(result: RunResult) -> None:
        if live is not None:
            live.update(_table(result, live=True))
            return
        now = time.monotonic()
        for run in result.scenarios:  # not a terminal: a line per state change, progress every few seconds
            stamp = time.strftime("%H:%M:%S")
            if last_print.get(run.name) != run.state:
                last_print[run.name] = run.state
                last_progress[run.name] = now
                if run.state != "PENDING":
                    err.print(f"{stamp} {escape(run.name)}: {run.state.lower()}", highlight=False)
            elif run.state == "RUNNING" and now - last_progress.get(run.name, now) >= PROGRESS_EVERY:
                last_progress[run.name] = now
                counts = f"rows in {run.rows_in:,}, out {run.rows_out:,}, invalid {run.rows_invalid:,}"
                done, left = _how_far(run)
                pace = f"{_rate(run):,.0f} rows/s"
                pace += (f"; {done} read" if done else "") + (f", {left} left" if left else "")
                err.print(f"{stamp} {escape(run.name)}: {counts} ({pace})", highlight=False)

    runner = LocalRunner(config, manager, executor, on_update=on_update)
    if err.is_terminal and not json_output:
        from rich.live import Live  # (only for a terminal: ~10 ms of imports a script's run does without)

        live = Live(console=err, refresh_per_second=4, transient=True)
    result_box: dict[str, Any] = {}
    # (waited on after Ctrl-C, not the thread: on 3.11 a join that an interrupt cut short
    # leaves the thread marked stopped, and the next join returns at once while it runs on)
    ran = threading.Event()

    def target() -> None:
        try:
            result_box["result"] = runner.run(compiled)
        except BaseException as exc:  # re-raised on the main thread
            result_box["error"] = exc
        finally:
            ran.set()

    worker = threading.Thread(target=target, daemon=True)
    terminated = _cancel_on_sigterm()
    if not state.debug:  # each failure is printed once, below; --debug shows the runner's records too
        _hide_runner_errors_on_stderr()
    try:
        if live is not None:
            live.start()
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:
        runner.cancel()
        ran.wait(30)
        if "result" in result_box:  # (what it did is told: it had published some outputs)
            _say_published(result_box["result"])
            if json_output:  # (a script reads what it did, ok false: it was cancelled)
                print_json(result_box["result"].to_json())
        if terminated.is_set():
            print_error("terminated (SIGTERM): the run was cancelled and its slices stopped")
            raise typer.Exit(128 + signal.SIGTERM) from None
        print_error("interrupted: the run was cancelled and its slices stopped")
        raise typer.Exit(128 + signal.SIGINT) from None
    finally:
        if live is not None:
            live.stop()
        executor.close()  # ends any slice still running (the launcher kills them at its stdin's end)
        _restore_sigterm()
    if "error" in result_box:
        raise result_box["error"]
    result: RunResult = result_box["result"]
    if json_output:
        print_json(result.to_json())
    else:
        console().print(_table(result))
        for run in result.scenarios:
            if (went := where_rows_went(run)) is not None:
                console().print(escape(went), highlight=False, soft_wrap=True)
            if run.error:
                err.print(f"[red]{escape(run.name)}[/]: {escape(failure_line(run))}", highlight=False, soft_wrap=True)
            for message in run.drift:
                err.print(f"[yellow]{escape(run.name)}[/]: schema drift: {escape(message)}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def _say_published(result: RunResult) -> None:
    """After a cancel: the scenarios whose outputs went into place before it reached them."""
    from rich.markup import escape

    for run in result.scenarios:
        if run.published:
            said = f"{run.name}: its outputs were published before the cancel reached it: {', '.join(run.outputs)}"
            console(stderr=True).print(f"[yellow]{escape(said)}[/]", highlight=False, soft_wrap=True)


def failure_line(run: Any) -> str:
    """A failed scenario in one line: its error (step, exception type and message) and its log.

    Printed after the scenario's name, so the error's own ``scenario 'NAME': `` prefix goes.
    """
    error = str(run.error).removeprefix(f"scenario {run.name!r}: ")
    if not run.log_dir:
        return error
    log = Path(run.log_dir) / "stderr.log"
    return f"{error} (log: {log if log.exists() else run.log_dir})"


class _RunnerErrorFilter(logging.Filter):
    """Drops the runner's error records (``[runner] scenario ... failed``) from the console:
    ``runink run`` prints each failure itself, once. Other handlers (files, journald) keep them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "runink.export"
            and record.levelno >= logging.ERROR
            and isinstance(record.args, tuple)
            and record.args[:1] == ("runner",)
        )


def _hide_runner_errors_on_stderr() -> None:
    for handler in logging.getLogger().handlers:
        if (
            type(handler) is logging.StreamHandler
            and getattr(handler, "stream", None) in (sys.stderr, sys.__stderr__)
            and not any(isinstance(f, _RunnerErrorFilter) for f in handler.filters)
        ):
            handler.addFilter(_RunnerErrorFilter())


_PREVIOUS_SIGTERM: list[Any] = []


def _cancel_on_sigterm() -> threading.Event:
    """SIGTERM (a service manager, `kill`) cancels the run as Ctrl-C does: running slices are
    stopped, outputs stay unpublished, the exit status is 143. Set once it came."""
    terminated = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return terminated  # only the main thread may set handlers (the CLI runs there)

    def on_sigterm(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cancellation runs once
        terminated.set()
        raise KeyboardInterrupt

    _PREVIOUS_SIGTERM.append(signal.signal(signal.SIGTERM, on_sigterm))
    return terminated


def _restore_sigterm() -> None:
    if _PREVIOUS_SIGTERM:
        signal.signal(signal.SIGTERM, _PREVIOUS_SIGTERM.pop())


def _dry_run_problems(config: RuninkConfig, compiled: CompiledPipeline, state: CliState) -> list[str]:
    """Everything --dry-run can check without running the pipeline (see runink.core.dryrun)."""
    from runink.core import dryrun
    from runink.core.cli import index_store
    from runink.core.drivers import pipeline_executor

    drivers = dryrun.check_drivers(config, state.plugins)
    isolated = config.executor.driver != "process"  # ("auto": isolating where it can)
    problems = [*drivers.values(), *dryrun.check_sources(compiled, isolated), *dryrun.check_sinks(compiled, isolated)]
    if "executor" in drivers:  # the step modules are imported in a slice: it needs the executor
        return problems
    # A good check is kept (the index CODE_CHECKS) while nothing it depended on changed: the
    # files of the modules it imported outside site-packages and the standard library, the
    # pipeline's folder (a module added there), the refs, the executor's settings, the config,
    # the installed packages and runink's version. The slice costs ~0.5 s of a ~1 s dry run.
    base = str(compiled.pipeline.base_dir.resolve())
    key = index_store.fingerprint(
        state.config_path,
        state.overrides,
        "RUNINK_",
        base=base,
        refs=sorted(dryrun.code_refs(compiled)),
        executor=config.executor.model_dump(mode="json"),
        limits=config.limits.model_dump(mode="json"),
    )
    if index_store.load(CODE_CHECKS, key) is not None:
        if config.plugin:  # (the plugins' own tables are checked as their manager is built: it says so)
            state.plugins()
        return problems
    executor = pipeline_executor(config, compiled.limits_asked(), state.plugins(), quiet=True)
    try:
        found = dryrun.check_code(compiled, executor, config)
    finally:
        executor.close()
    if not found.problems and found.files is not None:
        files = {*found.files, base}
        if all(index_store.mtime(f) is not None for f in files):  # (a file only the slice saw: not kept)
            index_store.save(CODE_CHECKS, key, True, files)
    return problems + found.problems


def golden_test_command(
    ctx: typer.Context,
    path: Path = typer.Argument(Path("."), metavar="PATH", help="A .dsl file, or a folder searched for .dsl files."),
    update: bool = typer.Option(False, "--update", help="Rewrite the expected outputs from this run."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key."),
    json_output: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Run every @golden scenario on its recorded input and diff its outputs with the expected ones."""
    from runink.core import golden
    from runink.core.drivers import pipeline_executor
    from runink.core.runner import LocalRunner

    state: CliState = ctx.obj
    parse_sets(set_)  # validates the syntax; the values were applied when the CLI started
    config = state.config()
    files = golden.find_pipelines(path)
    if not files:
        raise RuninkError(f"no .dsl files in {path}")
    manager = state.plugins()
    results = []
    out = console()  # (the results are the command's output: they went to stderr, stdout empty: a review)
    for file in files:
        try:
            compiled = golden.load(file, config)
        except RuninkError as exc:
            if len(files) == 1:
                raise
            # (one pipeline of a folder that does not compile: said, and the others tested)
            outcomes = [golden.GoldenResult(str(file), "", "error", [str(exc)])]
            _print_outcomes(out, file, outcomes, json_output)
            results.extend(outcomes)
            continue
        scenarios = golden.golden_scenarios(compiled)
        if not scenarios:
            continue
        executor = pipeline_executor(config, compiled.limits_asked(), manager, quiet=True)
        runner = LocalRunner(config, manager, executor)
        outcomes = []
        try:
            for item in scenarios:
                try:
                    outcomes.append(golden.run_golden(runner, compiled, item, update=update))
                except RuninkError as exc:
                    outcomes.append(golden.GoldenResult(compiled.pipeline.name, item.name, "error", [str(exc)]))
        finally:
            executor.close()
        _print_outcomes(out, file, outcomes, json_output)
        results.extend(outcomes)
    if json_output:
        print_json([r.to_json() for r in results])
    if not results:
        raise RuninkError(f"no scenario with @golden in {path}")
    failed = [r for r in results if r.status in ("failed", "error")]
    if not json_output:
        out.print(f"{len(results) - len(failed)} passed, {len(failed)} failed", highlight=False)
    if failed:
        raise typer.Exit(1)


def _print_outcomes(out: Console, file: Path, outcomes: list[GoldenResult], json_output: bool) -> None:
    from rich.markup import escape

    if json_output:
        return
    for outcome in outcomes:
        colour = {"passed": "green", "updated": "cyan"}.get(outcome.status, "red")
        named = f"{file}: {outcome.scenario}" if outcome.scenario else str(file)
        out.print(f"[{colour}]{outcome.status.upper()}[/] {escape(named)}", highlight=False)
        for line in outcome.differences:
            out.print(f"    {escape(line)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("test")(golden_test_command)
