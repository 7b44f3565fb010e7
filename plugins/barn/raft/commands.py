"""``runink barn``: run a Barn server, show a Barn group's health, change its membership.

The raft plugin adds these commands to the ``runink`` CLI (``runink_cli_commands``, see
``cli.py``). ``serve`` is the one parser of a server's options: ``python -m
runink.plugins.barn.raft.server`` runs the same command (``server.main``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from runink.core.cli.output import print_json, print_table
from runink.core.cli.state import host_port
from runink.core.errors import BarnError

app = typer.Typer(help="Run and inspect the Barn (the Raft-replicated state store).", no_args_is_help=True)
member_app = typer.Typer(help="Add or remove a server of a running Barn group.", no_args_is_help=True)
app.add_typer(member_app, name="member")

ENDPOINTS = typer.Option(
    ..., "--endpoints", "-e", envvar="RUNINK_BARN_ENDPOINTS", help="HTTP host:port of servers, comma-separated"
)


CLIENT_CA = typer.Option(
    None, "--tls-ca", envvar="RUNINK_BARN_TLS_CA", help="the cluster CA (servers started with --tls-*: HTTPS)"
)
CLIENT_CERT = typer.Option(
    None, "--tls-cert", envvar="RUNINK_BARN_TLS_CERT", help="a client certificate of that CA (those servers want one)"
)
CLIENT_KEY = typer.Option(None, "--tls-key", envvar="RUNINK_BARN_TLS_KEY", help="its private key")


def _client(endpoints: str, tls: tuple[Path | None, Path | None, Path | None], timeout: float = 5.0) -> Any:
    from runink.plugins.barn.raft.client import RaftBarn

    ca, cert, key = (None if path is None else str(path) for path in tls)
    try:
        token = os.environ.get("RUNINK_TOKEN") or None  # (a cluster admin's: with TLS and no certificate)
        return RaftBarn(endpoints=endpoints, timeout=timeout, tls_ca=ca, tls_cert=cert, tls_key=key, token=token)
    except BarnError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("serve")
def serve_command(  # noqa: PLR0917 (typer options)
    ctx: typer.Context,
    name: str = typer.Option(..., help="this server's name in the group"),
    raft: str = typer.Option(..., help="host:port of its Raft transport"),
    http: str = typer.Option(..., help="host:port of its client API"),
    peer: list[str] = typer.Option([], help="another server: name=raft_host:port,http_host:port (repeat)"),
    data_dir: Path = typer.Option(..., help="where its journal and snapshots live"),
    fsync: bool = typer.Option(
        True,
        "--fsync/--no-fsync",
        help="sync the journal before acknowledging (--no-fsync: faster; a power loss can lose writes)",
    ),
    election_timeout: float = typer.Option(0.3, help="seconds (the minimum; the maximum is twice)"),
    compaction_entries: int = typer.Option(10_000, help="snapshot and compact the log past this many entries"),
    compaction_seconds: float = typer.Option(60.0, help="...at most this often"),
    compaction_mib: int = typer.Option(
        64, help="...or once this many MiB of commands came since the last snapshot (0: no bound by size)"
    ),
    history: int = typer.Option(100_000, help="changes kept for watches"),
    history_mib: int = typer.Option(256, help="...and at most this many MiB of their keys and values"),
    quota_mib: int = typer.Option(
        2048, help="live keys and values, at most: a write past it is refused (deletes go through); 0: no quota"
    ),
    max_connections: int | None = typer.Option(
        None, help="client connections served at once, more are refused (default: the descriptor limit less 256)"
    ),
    secret_file: Path | None = typer.Option(
        None, envvar="RUNINK_BARN_SECRET_FILE", help="the group's shared secret (same file content on every member)"
    ),
    tls_cert: Path | None = typer.Option(
        None, help="this server's certificate (usage both, signed by --tls-ca): mutual TLS to members and clients"
    ),
    tls_key: Path | None = typer.Option(None, help="its private key"),
    tls_ca: Path | None = typer.Option(None, help="the cluster CA: members and clients must present its certificates"),
    plaintext: bool = typer.Option(
        False, "--plaintext", help="no TLS: anyone who reaches the HTTP API may read and write (development only)"
    ),
    auth_key: list[Path] = typer.Option(
        [],
        "--auth-key",
        help="with --tls-*: the cluster's token key (`runink server`'s): a client without a certificate may use "
        "the HTTP API with a token granting cluster-admin",
    ),
    metrics: str | None = typer.Option(
        None,
        "--metrics",
        help="HOST:PORT to serve /metrics on, for Prometheus (plain HTTP: keep it on loopback)",
    ),
) -> None:
    """Run one Barn server until SIGTERM/SIGINT."""
    from runink.core.processes import die_with_parent_from_env, parent_beat_from_env

    die_with_parent_from_env()  # (a `runink server`'s own member: it dies with that server)
    try:
        served = parent_beat_from_env()  # (...and it stops leading when that server is paused)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    from runink.plugins.barn.raft import server  # pysyncobj, uvloop...: only for this command

    positive = {
        "--election-timeout": election_timeout,
        "--compaction-seconds": compaction_seconds,
        "--compaction-entries": compaction_entries,
        "--history": history,
        "--history-mib": history_mib,
        "--max-connections": max_connections,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise typer.BadParameter(f"{flag} must be positive, got {value}")
    if quota_mib < 0:
        raise typer.BadParameter(f"--quota-mib must be 0 (no quota) or positive, got {quota_mib}")
    if compaction_mib < 0:
        raise typer.BadParameter(f"--compaction-mib must be 0 (no bound) or positive, got {compaction_mib}")
    if metrics is not None and host_port(metrics) is None:  # (a valid one was applied before the plugins loaded)
        raise typer.BadParameter(f"--metrics {metrics!r}: expected HOST:PORT")
    try:
        peers = [server.parse_member(item) for item in peer]
        secret = server.read_secret(secret_file) if secret_file is not None else None
        tls = server.tls_files(tls_cert, tls_key, tls_ca)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if tls is not None and plaintext:
        raise typer.BadParameter("--plaintext and --tls-* contradict each other: give one")
    if auth_key and tls is None:
        raise typer.BadParameter("--auth-key goes with --tls-* (tokens are taken only over TLS)")
    if tls is None and not plaintext:
        raise typer.BadParameter(
            "no TLS: give --tls-cert, --tls-key and --tls-ca (`runink server --init` makes them), "
            "or --plaintext (development only)"
        )
    config = server.ServerConfig(
        server.Member(name, raft, http),
        peers,
        data_dir,
        fsync=fsync,
        election_timeout=election_timeout,
        history=history,
        history_bytes=history_mib << 20,
        quota_bytes=(quota_mib << 20) or None,
        compaction_entries=compaction_entries,
        compaction_seconds=compaction_seconds,
        compaction_bytes=compaction_mib << 20,
        secret=secret,
        tls=tls,
        auth_keys=list(auth_key),
        max_connections=max_connections,
    )
    # (the plugins of `runink barn serve`, configured with --metrics before this ran; none when
    # run as its own program)
    state = ctx.obj if ctx is not None else None
    manager = state.plugins() if state is not None and hasattr(state, "plugins") else None
    raise typer.Exit(server.run_server(config, manager, served=served))


def run_serve(argv: list[str], prog_name: str) -> int:
    """``serve`` alone, as its own program (``python -m runink.plugins.barn.raft.server``):
    the exit status, with a usage error shown as click shows it (status 2)."""
    alone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    alone.command()(serve_command)
    try:
        outcome = typer.main.get_command(alone).main(args=argv, prog_name=prog_name, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return 130
    except typer.TyperException as exc:  # usage errors: click's message and usage line
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 2))
    return outcome if isinstance(outcome, int) else 0


@app.command("status")
def status_command(
    endpoints: str = ENDPOINTS,
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
    tls_ca: Path | None = CLIENT_CA,
    tls_cert: Path | None = CLIENT_CERT,
    tls_key: Path | None = CLIENT_KEY,
) -> None:
    """Leader, term, commit index and each server's health, as every reachable server sees it."""
    addresses = [e.strip() for e in endpoints.split(",") if e.strip()]
    seen: list[dict[str, Any]] = []
    for address in addresses:
        client = _client(address, (tls_ca, tls_cert, tls_key), timeout=2.0)
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


def _change(  # noqa: PLR0917 (the commands pass theirs on)
    action: str, endpoints: str, name: str, raft: str, http: str, tls: tuple[Path | None, ...], *, json_output: bool
) -> None:
    client = _client(endpoints, (tls[0], tls[1], tls[2]))
    try:
        answer = client.call(f"/v1/members/{action}", {"name": name, "raft": raft, "http": http})
    finally:
        client.close()
    if json_output:
        print_json(answer)
    else:
        typer.echo(f"{action} {name}: members now {', '.join(answer['members'])}")


@member_app.command("add")
def member_add(  # noqa: PLR0917 (typer options)
    name: str = typer.Argument(..., metavar="NAME", help="the new server's name"),
    raft: str = typer.Argument(..., metavar="RAFT", help="its Raft host:port"),
    http: str = typer.Argument(..., metavar="HTTP", help="its HTTP host:port"),
    endpoints: str = ENDPOINTS,
    json_output: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    tls_ca: Path | None = CLIENT_CA,
    tls_cert: Path | None = CLIENT_CERT,
    tls_key: Path | None = CLIENT_KEY,
) -> None:
    """Add a server (start it with the current members as --peer first)."""
    _change("add", endpoints, name, raft, http, (tls_ca, tls_cert, tls_key), json_output=json_output)


@member_app.command("remove")
def member_remove(  # noqa: PLR0917 (typer options)
    name: str = typer.Argument(..., metavar="NAME", help="the server's name"),
    raft: str = typer.Argument("", metavar="RAFT", help="its Raft host:port (default: the address the group knows)"),
    endpoints: str = ENDPOINTS,
    json_output: bool = typer.Option(False, "--json", help="print the answer as JSON"),
    tls_ca: Path | None = CLIENT_CA,
    tls_cert: Path | None = CLIENT_CERT,
    tls_key: Path | None = CLIENT_KEY,
) -> None:
    """Remove a server from the group."""
    _change("remove", endpoints, name, raft, "", (tls_ca, tls_cert, tls_key), json_output=json_output)
