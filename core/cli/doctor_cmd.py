"""``runink doctor``: what this machine lets Runink enforce, and what the configured executor cannot.

Every executor driver is asked through its interface (``Executor.diagnose()``): the one in use
gives all its checks (its health decides the exit status); the other installed ones give the
host probes they make (cgroups, namespaces...), so the report says why ``auto`` chose as it did.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
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


def collect_cluster(state: CliState, server: str | None, herd: str, timeout: float = 30.0) -> dict[str, Any]:
    """A running cluster end to end: each server ready (its /readyz: the Barn answers), its
    nodes ready, and a job (`/bin/true` in ``herd``) placed, run and seen SUCCEEDED."""
    from runink.core.cli.cluster_client import ClusterClient, ClusterError, cluster_ca, server_addresses

    config = state.try_config()
    addresses = server_addresses(server, config.cluster.server if config else None)
    ca = cluster_ca(config.cluster.ca if config else None)
    checks: list[Check] = []
    for address in addresses:
        one = ClusterClient([address], ca=ca)
        try:
            answer = one.call("GET", "/readyz")
            checks.append(Check("cluster", f"server {address}", True, f"ready (Barn revision {answer['revision']})"))
        except ClusterError as exc:
            checks.append(Check("cluster", f"server {address}", False, str(exc)))
        finally:
            one.close()
    client = ClusterClient(addresses, ca=ca)
    try:
        working = True  # (no node takes work: the job is not tried, it would only wait)
        try:
            nodes = client.call("GET", "/v1/nodes")["nodes"]
            check = _nodes(nodes)
            working = check.ok
            checks.append(check)
        except ClusterError as exc:
            checks.append(Check("cluster", "nodes", False, str(exc)))
        if working:
            checks.append(_a_job_runs(client, herd, timeout))
        else:
            checks.append(Check("cluster", "a job runs", False, "not tried: no node takes work"))
    finally:
        client.close()
    return {
        "runink": runink.__version__,
        "python": platform.python_version(),
        "checks": [dataclasses.asdict(c) for c in checks],
    }


def _nodes(nodes: list[dict[str, Any]]) -> Check:
    """The nodes: how many take work (ready, neither cordoned nor draining, not unfit), and
    why each other one does not (an unfit node's own reason: a full disk, say)."""
    taking: list[str] = []
    others: list[str] = []
    for node in nodes:
        why = (
            "down"
            if not node.get("ready")
            else "draining"
            if node.get("draining")
            else "cordoned"
            if node.get("cordoned")
            else f"unfit ({node['unfit']})"
            if node.get("unfit")
            else ""
        )
        (others if why else taking).append(f"{node['id']} {why}".strip())
    detail = f"{len(taking)} of {len(nodes)} ready" + (f": {', '.join(taking[:10])}" if taking else "")
    if others:
        detail += f"; not taking work: {'; '.join(others[:10])}"
    return Check("cluster", "nodes", bool(taking), detail)


def _a_job_runs(client: Any, herd: str, timeout: float) -> Check:
    from runink.core.cli.cluster_client import ClusterError, part
    from runink.core.cli.job_watch import FINAL

    began = time.monotonic()
    try:
        submitted = client.call("POST", "/v1/jobs", {"herd": herd, "command": ["/bin/true"]})
        job, revision, state = submitted["job"]["id"], int(submitted.get("revision") or 0), "PENDING"
        while time.monotonic() - began < timeout:
            answer = client.call("GET", f"/v1/jobs/{part(job)}", wait=2, after=revision)
            state, revision = answer["job"]["state"], answer["revision"]
            if state in FINAL:
                break
    except ClusterError as exc:
        return Check("cluster", "a job runs", False, f"/bin/true in herd {herd}: {exc}")
    took = time.monotonic() - began
    if state != "SUCCEEDED":
        return Check("cluster", "a job runs", False, f"/bin/true in herd {herd}: {state} after {took:.1f}s ({job})")
    return Check("cluster", "a job runs", True, f"/bin/true in herd {herd}: SUCCEEDED in {took * 1000:.0f} ms ({job})")


def doctor_command(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
    cluster: bool = typer.Option(
        False, "--cluster", help="Check the cluster instead: servers, nodes, a job end to end."
    ),
    server: str | None = typer.Option(None, "--server", help="With --cluster: that cluster's API (HOST:PORT,...)."),
    herd: str = typer.Option("default", "--herd", help="With --cluster: the herd the test job runs in."),
) -> None:
    """Check what this machine and the configured executor can enforce (cgroups, namespaces,
    limits); with --cluster, a running cluster end to end."""
    if cluster or server:
        report = collect_cluster(ctx.obj, server, herd)
        _show(report, json_output)
        if not all(c["ok"] for c in report["checks"]):
            raise typer.Exit(1)
        return
    report = collect(ctx.obj)
    _show(report, json_output)
    executor_ok = all(c["ok"] for c in report["checks"] if c["area"] == "executor" and ":" not in c["check"])
    if not executor_ok:
        raise typer.Exit(1)


def _show(report: dict[str, Any], json_output: bool) -> None:
    if json_output:
        print_json(report)
        return
    rows = [(c["area"], c["check"], "ok" if c["ok"] else "NO", c["detail"]) for c in report["checks"]]
    print_table(f"runink {report['runink']} on Python {report['python']}", ["AREA", "CHECK", "", "DETAIL"], rows)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
