"""``runink plugins``: what is installed, what loaded, what failed and why."""

from __future__ import annotations

import inspect
from dataclasses import replace

import typer

from runink.core import hookspecs
from runink.core.cli.output import print_json, print_table
from runink.core.cli.state import CliState
from runink.core.drivers import DRIVER_GROUPS, list_drivers, load_driver
from runink.core.errors import RuninkError
from runink.core.interfaces import Executor
from runink.core.plugins import PluginRecord, describe_exception, hook_names

app = typer.Typer(help="List installed plugins and hooks.", no_args_is_help=True)


def all_records(state: CliState) -> list[PluginRecord]:
    manager = state.plugins()
    # A plugin whose commands fail to build is failed: the CLI builds them only when one is
    # run, so build them here, to report it.
    manager.hooks.cli_commands(typer.Typer())
    return manager.records() + [_with_capabilities(state, r) for r in list_drivers(manager)]


def _with_capabilities(state: CliState, record: PluginRecord) -> PluginRecord:
    """Executors say what they enforce here and what they cannot (nothing runs unconfined silently)."""
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


def _status(record: PluginRecord) -> str:
    return f"{record.status}: {record.error}" if record.error else record.status


@app.command("list")
def list_plugins(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    hook: str | None = typer.Option(None, "--hook", help="Only hook plugins implementing this hook."),
    group: str | None = typer.Option(None, "--group", help="Only drivers of this entry-point group."),
) -> None:
    """List every hook plugin and driver: package, version, source and load status."""
    state: CliState = ctx.obj
    state.config()  # an invalid config is reported, not silently replaced by defaults
    if hook is not None and hook not in hook_names():
        raise RuninkError(f"--hook: unknown hook {hook!r}; hooks: {', '.join(hook_names())}")
    if group is not None and group not in DRIVER_GROUPS:
        raise RuninkError(f"--group: unknown driver group {group!r}; groups: {', '.join(DRIVER_GROUPS)}")
    records = all_records(state)
    if hook is not None:
        records = [r for r in records if hook in r.hooks]
    if group is not None:
        records = [r for r in records if r.group == group]
    if json_output:
        print_json([record.to_json() for record in records])
        return
    rows = [
        (
            r.name,
            "hook plugin" if r.kind == "hook" else "driver",
            r.package or "-",
            r.version or "-",
            r.source,
            ", ".join(r.hooks) if r.kind == "hook" else r.group,
            _status(r),
        )
        for r in records
    ]
    print_table(None, ["NAME", "KIND", "PACKAGE", "VERSION", "SOURCE", "HOOKS/GROUP", "STATUS"], rows)
    for r in records:
        if r.details.get("unenforced"):
            gaps = ", ".join(sorted(r.details["unenforced"]))
            isolation = r.details["isolation"]
            typer.echo(f"executor {r.name} ({isolation}) does not enforce here: {gaps} (see runink doctor)")


@app.command("hooks")
def list_hooks(ctx: typer.Context, json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List every hook with its one-line summary and the plugins implementing it."""
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
