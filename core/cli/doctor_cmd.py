"""``runink doctor``: what this machine lets Runink enforce, and what the configured executor cannot."""

from __future__ import annotations

import os
import platform
from typing import Any

import typer

import runink
from runink.core.cli.output import print_json, print_table
from runink.core.cli.state import CliState
from runink.core.drivers import auto_executor, configured_driver


def collect(state: CliState) -> dict[str, Any]:
    from runink.plugins.executors.linux.cgroups import detect
    from runink.plugins.executors.linux.namespaces import probe_all

    config = state.config()
    manager = state.plugins()
    checks: list[dict[str, Any]] = []

    def check(area: str, name: str, ok: bool, detail: str) -> None:
        checks.append({"area": area, "check": name, "ok": ok, "detail": detail})

    check("host", "kernel", platform.system() == "Linux", f"{platform.system()} {platform.release()}")
    check(
        "host",
        "root",
        os.geteuid() == 0,
        "running as root"
        if os.geteuid() == 0
        else f"uid {os.geteuid()}: cgroups and most namespaces need root or delegation",
    )
    try:
        layout = detect()
        check("cgroups", "version", True, f"cgroup v{layout.version}")
        for controller, path in sorted(layout.own.items()):
            writable = os.access(path, os.W_OK)
            check("cgroups", controller, writable, str(path) if writable else f"{path} is not writable")
        for controller, reason in sorted(layout.missing.items()):
            check("cgroups", controller, False, reason)
    except OSError as exc:
        check("cgroups", "detect", False, f"cannot read cgroup mounts: {exc}")
    for name, refusal in probe_all().items():
        check("namespaces", name, refusal is None, "permitted" if refusal is None else refusal)
    if config.executor.driver == "auto":
        linux, config, note = auto_executor(config, manager)
        executor = linux if linux is not None else configured_driver(config, "executor", manager)
        check("executor", "auto", linux is not None, f"chose {config.executor.driver}" + (f"; {note}" if note else ""))
    else:
        executor = configured_driver(config, "executor", manager)
    caps = executor.capabilities()
    fingerprint = executor.fingerprint()
    check(
        "executor",
        config.executor.driver,
        fingerprint.healthy,
        f"isolation {caps.isolation}; {fingerprint.health_description or 'healthy'}",
    )
    if caps.enforced:
        check("executor", f"{config.executor.driver}: enforces", True, ", ".join(caps.enforced))
    for limit, reason in sorted(caps.unenforced.items()):
        check("executor", f"{config.executor.driver}: {limit}", False, f"not enforced: {reason}")
    if config.executor.driver == "linux":
        from runink.plugins.executors.linux.launcher import INIT_BINARY, native_init_available

        built = native_init_available()
        detail = str(INIT_BINARY) if built else "not built (no C compiler at install): each sandbox costs one more fork"
        check("executor", "linux: runink-init", built, detail)
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
