"""``runink barn``: run a Barn server, show a Barn group's health, change its membership."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from runink.core.cli.output import print_json, print_table
from runink.core.errors import BarnError

app = typer.Typer(help="Run and inspect the Barn (the Raft-replicated state store).", no_args_is_help=True)
member_app = typer.Typer(help="Add or remove a server of a running Barn group.", no_args_is_help=True)
app.add_typer(member_app, name="member")

ENDPOINTS = typer.Option(
    ..., "--endpoints", "-e", envvar="RUNINK_BARN_ENDPOINTS", help="HTTP host:port of servers, comma-separated"
)


def _client(endpoints: str, timeout: float = 5.0) -> Any:
    from runink.plugins.barn.raft.client import RaftBarn

    return RaftBarn(endpoints=endpoints, timeout=timeout)


@app.command("serve")
def serve_command(  # noqa: PLR0917 (typer options)
    name: str = typer.Option(..., help="this server's name in the group"),
    raft: str = typer.Option(..., help="host:port of its Raft transport"),
    http: str = typer.Option(..., help="host:port of its client API"),
    peer: list[str] = typer.Option([], help="another server: name=raft_host:port,http_host:port (repeat)"),
    data_dir: Path = typer.Option(..., help="where its journal and snapshots live"),
    no_fsync: bool = typer.Option(False, help="do not sync the journal (faster; a power loss can lose writes)"),
    election_timeout: float = typer.Option(0.3, help="seconds (the minimum; the maximum is twice)"),
    compaction_entries: int = typer.Option(10_000, help="snapshot and compact the log past this many entries"),
    compaction_seconds: float = typer.Option(60.0, help="...at most this often"),
    history: int = typer.Option(100_000, help="changes kept for watches"),
    max_connections: int | None = typer.Option(
        None, help="client connections served at once, more are refused (default: the descriptor limit less 256)"
    ),
    secret_file: Path | None = typer.Option(
        None, envvar="RUNINK_BARN_SECRET_FILE", help="the group's shared secret (same file content on every member)"
    ),
) -> None:
    """Run one Barn server until SIGTERM/SIGINT."""
    from runink.plugins.barn.raft import server

    argv = ["--name", name, "--raft", raft, "--http", http, "--data-dir", str(data_dir)]
    argv += ["--election-timeout", str(election_timeout)] + (["--no-fsync"] if no_fsync else [])
    argv += ["--compaction-entries", str(compaction_entries), "--compaction-seconds", str(compaction_seconds)]
    argv += ["--history", str(history)]
    if max_connections is not None:
        argv += ["--max-connections", str(max_connections)]
    for item in peer:
        argv += ["--peer", item]
    if secret_file is not None:
        argv += ["--secret-file", str(secret_file)]
    raise typer.Exit(server.main(argv))


@app.command("status")
def status_command(
    endpoints: str = ENDPOINTS, json_output: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Leader, term, commit index and each server's health, as every reachable server sees it."""
    addresses = [e.strip() for e in endpoints.split(",") if e.strip()]
    seen: list[dict[str, Any]] = []
    for address in addresses:
        client = _client(address, timeout=2.0)
        try:
            seen.append({"endpoint": address, **client.status()})
        except BarnError as exc:
            seen.append({"endpoint": address, "error": str(exc)})
        finally:
            client.close()
    if json_output:
        print_json(seen)
    else:
        rows = []
        for s in seen:
            if "error" in s:
                rows.append((s["endpoint"], "-", "UNREACHABLE", "-", "-", "-", "-", s["error"][:60]))
                continue
            peers = ", ".join(f"{n}:{'up' if p['connected'] else 'DOWN'}" for n, p in sorted(s["peers"].items()))
            where = (s["endpoint"], s["name"], s["state"], s["leader"] or "-")
            rows.append((*where, s["term"], s["commit_index"], s["revision"], peers))
        print_table("Barn", ["ENDPOINT", "NAME", "STATE", "LEADER", "TERM", "COMMIT", "REVISION", "PEERS"], rows)
    if not any(s.get("state") == "leader" for s in seen) or any("error" in s for s in seen):
        raise typer.Exit(1)


def _change(action: str, endpoints: str, name: str, raft: str, http: str, *, json_output: bool) -> None:
    client = _client(endpoints)
    try:
        answer = client.call(f"/v1/members/{action}", {"name": name, "raft": raft, "http": http})
    finally:
        client.close()
    if json_output:
        print_json(answer)
    else:
        typer.echo(f"{action} {name}: members now {', '.join(answer['members'])}")


@member_app.command("add")
def member_add(
    name: str = typer.Argument(..., help="the new server's name"),
    raft: str = typer.Argument(..., help="its Raft host:port"),
    http: str = typer.Argument(..., help="its HTTP host:port"),
    endpoints: str = ENDPOINTS,
    json_output: bool = typer.Option(False, "--json", help="print the answer as JSON"),
) -> None:
    """Add a server (start it with the current members as --peer first)."""
    _change("add", endpoints, name, raft, http, json_output=json_output)


@member_app.command("remove")
def member_remove(
    name: str = typer.Argument(..., help="the server's name"),
    raft: str = typer.Argument("", help="its Raft host:port (default: the address the group knows)"),
    endpoints: str = ENDPOINTS,
    json_output: bool = typer.Option(False, "--json", help="print the answer as JSON"),
) -> None:
    """Remove a server from the group."""
    _change("remove", endpoints, name, raft, "", json_output=json_output)
