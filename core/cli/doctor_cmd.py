"""``runink doctor``: what this machine lets Runink enforce, and what the configured executor cannot.

Every executor driver is asked through its interface (``Executor.diagnose()``): the one in use
gives all its checks (its health decides the exit status); the other installed ones give the
host probes they make (cgroups, namespaces...), so the report says why ``auto`` chose as it did.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from typing import Any

import typer

import runink
from runink.core.cli.output import print_json, print_table
from runink.core.cli.state import CliState
from runink.core.drivers import auto_executor, configured_driver, driver_names, load_driver
from runink.core.errors import RuninkError
from runink.core.interfaces.executor import Check, Executor
from runink.core.plugins import describe_exception


def _other_probes(name: str, manager: Any) -> list[Check]:
    """The host probes of the installed executor drivers other than ``name`` (not their health:
    they are not in use)."""
    checks: list[Check] = []
    for other in driver_names(Executor, manager):
        if other == name:
            continue
        try:
            executor = load_driver(Executor, other, manager=manager)
        except RuninkError as exc:
            checks.append(Check("executor", f"{other}: load", False, str(exc)))
            continue
        try:
            checks += [c for c in executor.diagnose() if c.area != "executor"]
        except Exception as exc:  # a third party's bug: one line, the report goes on
            checks.append(Check("executor", f"{other}: diagnose", False, describe_exception(exc)))
        finally:
            executor.close()
    return checks


def collect(state: CliState) -> dict[str, Any]:
    config = state.config()
    manager = state.plugins()
    uid = os.geteuid()
    host = [
        Check("host", "kernel", platform.system() == "Linux", f"{platform.system()} {platform.release()}"),
        Check(
            "host",
            "root",
            uid == 0,
            "running as root" if uid == 0 else f"uid {uid}: cgroups and most namespaces need root or delegation",
        ),
    ]
    chosen: list[Check] = []
    if config.executor.driver == "auto":
        isolating, config, note = auto_executor(config, manager)
        executor: Executor = isolating if isolating is not None else configured_driver(config, "executor", manager)
        detail = f"chose {config.executor.driver}" + (f"; {note}" if note else "")
        chosen.append(Check("executor", "auto", isolating is not None, detail))
    else:
        executor = configured_driver(config, "executor", manager)
    try:
        chosen += executor.diagnose()
    finally:
        executor.close()
    probes = [c for c in chosen if c.area != "executor"] + _other_probes(config.executor.driver, manager)
    seen: set[tuple[str, str]] = set()
    checks = []
    for check in [*host, *probes, *(c for c in chosen if c.area == "executor")]:
        if (check.area, check.check) not in seen:  # two drivers may probe the same thing
            seen.add((check.area, check.check))
            checks.append(dataclasses.asdict(check))
    return {"runink": runink.__version__, "python": platform.python_version(), "checks": checks}


def doctor_command(ctx: typer.Context, json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check what this machine and the configured executor can enforce (cgroups, namespaces, limits)."""
    report = collect(ctx.obj)
    if json_output:
        print_json(report)
    else:
        rows = [(c["area"], c["check"], "ok" if c["ok"] else "NO", c["detail"]) for c in report["checks"]]
        print_table(f"runink {report['runink']} on Python {report['python']}", ["AREA", "CHECK", "", "DETAIL"], rows)
    executor_ok = all(c["ok"] for c in report["checks"] if c["area"] == "executor" and ":" not in c["check"])
    if not executor_ok:
        raise typer.Exit(1)
