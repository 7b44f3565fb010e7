"""``runink plugins``: what is installed, what loaded, what failed and why."""

from __future__ import annotations

import inspect
import time
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer

from runink.core.cli import plugin_index
from runink.core.cli.output import print_json, print_table
from runink.core.cli.state import CliState
from runink.core.errors import RuninkError

if TYPE_CHECKING:  # (imported by the full check only: a listing from the index needs neither)
    from runink.core.plugins import PluginRecord

app = typer.Typer(help="List installed plugins and hooks.", no_args_is_help=True)


def all_records(state: CliState) -> list[PluginRecord]:
    from runink.core.drivers import list_drivers

    manager = state.plugins()
    # A plugin whose commands fail to build is failed: the CLI builds them only when one is
    # run, so build them here, to report it.
    from runink.core.cli.app import plugin_commands

    plugin_commands(manager)
    return manager.records() + [_with_capabilities(state, r) for r in list_drivers(manager)]


def _with_capabilities(state: CliState, record: PluginRecord) -> PluginRecord:
    """Executors say what they enforce here and what they cannot (nothing runs unconfined silently)."""
    from runink.core.drivers import load_driver
    from runink.core.interfaces import Executor
    from runink.core.plugins import describe_exception

    if record.group != Executor.GROUP or record.status != "loaded":
        return record
    config = state.config()
    options = config.executor.options if config.executor.driver == record.name else {}
    try:
        caps = load_driver(Executor, record.name, options, manager=state.plugins()).capabilities()
    except Exception as exc:  # a driver that cannot start here is listed, not fatal
        return replace(record, status="failed", error=f"cannot start here: {describe_exception(exc)}")
    details = {"isolation": caps.isolation, "enforced": list(caps.enforced), "unenforced": dict(caps.unenforced)}
    return replace(record, details={**record.details, **details})


def checked(state: CliState, refresh: bool) -> tuple[dict[str, Any], bool]:
    """The rows, hook names, driver groups and check time (plugin_index.load's form), from the
    plugin index while it holds (then True), else from loading everything now (and indexed)."""
    key = plugin_index.fingerprint(state.config_path, state.overrides)
    found = None if refresh else plugin_index.load(key)
    if found is not None:
        return found, True
    from runink.core.drivers import DRIVER_GROUPS
    from runink.core.plugins import hook_names

    state.config()  # an invalid config is reported, not silently replaced by defaults
    records = [record.to_json() for record in all_records(state)]
    found = {"records": records, "hooks": list(hook_names()), "groups": list(DRIVER_GROUPS), "checked": time.time()}
    plugin_index.save(key, found)
    return found, False


def _status(record: dict[str, Any]) -> str:
    return f"{record['status']}: {record['error']}" if record["error"] else record["status"]


@app.command("list")
def list_plugins(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    hook: str | None = typer.Option(None, "--hook", help="Only hook plugins implementing this hook."),
    group: str | None = typer.Option(None, "--group", help="Only drivers of this entry-point group."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Load every plugin and driver now, not the last check's index."
    ),
) -> None:
    """List every hook plugin and driver: package, version, source and load status.

    The status is the last full check's while nothing it depended on has changed (packages,
    config, RUNINK_* variables, the plugins' own files); --refresh checks again now."""
    state: CliState = ctx.obj
    found, indexed = checked(state, refresh)
    if hook is not None and hook not in found["hooks"]:
        raise RuninkError(f"--hook: unknown hook {hook!r}; hooks: {', '.join(found['hooks'])}")
    if group is not None and group not in found["groups"]:
        raise RuninkError(f"--group: unknown driver group {group!r}; groups: {', '.join(found['groups'])}")
    records = found["records"]
    if hook is not None:
        records = [r for r in records if hook in r["hooks"]]
    if group is not None:
        records = [r for r in records if r["group"] == group]
    if json_output:
        print_json(records)
        return
    rows = [
        (
            r["name"],
            "hook plugin" if r["kind"] == "hook" else "driver",
            r["package"] or "-",
            r["version"] or "-",
            r["source"],
            ", ".join(r["hooks"]) if r["kind"] == "hook" else r["group"],
            _status(r),
        )
        for r in records
    ]
    print_table(None, ["NAME", "KIND", "PACKAGE", "VERSION", "SOURCE", "HOOKS/GROUP", "STATUS"], rows)
    for r in records:
        details = r.get("details", {})
        if details.get("unenforced"):
            gaps = ", ".join(sorted(details["unenforced"]))
            isolation = details.get("isolation")
            typer.echo(f"executor {r['name']} ({isolation}) does not enforce here: {gaps} (see runink doctor)")
    if indexed:
        when = datetime.fromtimestamp(found["checked"]).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"(status as checked at {when}, nothing changed since; --refresh checks again now)")


@app.command("hooks")
def list_hooks(ctx: typer.Context, json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every hook with its one-line summary and the plugins implementing it."""
    from runink.core import hookspecs
    from runink.core.plugins import hook_names

    state: CliState = ctx.obj
    manager = state.plugins()
    rows = []
    for name in hook_names():
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        rows.append(
            {"hook": name, "summary": doc.splitlines()[0] if doc else "", "plugins": manager.implementers(name)}
        )
    if json_output:
        print_json(rows)
        return
    print_table(
        None, ["HOOK", "SUMMARY", "PLUGINS"], [(r["hook"], r["summary"], ", ".join(r["plugins"])) for r in rows]
    )


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="plugins")
