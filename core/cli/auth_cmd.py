"""`runink login`, `runink whoami`, `runink token create`, `runink rbac bind|unbind|list|role`: who
the CLI is to the cluster, and who may do what there."""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from runink.core.cli import roles_cmd
from runink.core.cli.cluster_client import MAX_TOKEN, given_token, one_token, part, token_file
from runink.core.cli.jobs_cmd import JSON, SERVER, _client, nodes_app
from runink.core.cli.output import print_json, print_table

# runink.core.security.CLUSTER, spelled out: importing security loads the model (~15 ms of
# every cluster command's start, as jobs_cmd imports this module for `nodes token`)
CLUSTER = "*"

rbac_app = typer.Typer(help="Role bindings: who holds which role in a herd, or in the cluster.", no_args_is_help=True)
token_app = typer.Typer(help="Service-account tokens the cluster signs.", no_args_is_help=True)


def _duration(text: str) -> float:
    """Seconds of ``30m``, ``1h``, ``7d`` or a plain number of seconds (the DSL's durations)."""
    from runink.core.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ttl") from None


def _subject(user: str | None, group: str | None, service_account: str | None) -> tuple[str, str]:
    given = [(kind, name) for kind, name in (("user", user), ("group", group), ("sa", service_account)) if name]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --user, --group and --service-account")
    return given[0]


def _bindings_path(herd: str) -> str:
    return "/v1/rbac" if herd == CLUSTER else f"/v1/herds/{part(herd)}/rbac"


def login_command(
    token: str | None = typer.Option(
        None, "--token", help="The token (default: read from standard input, so it stays out of the shell history)."
    ),
    issuer: str | None = typer.Option(
        None, "--issuer", help="Log in at this OIDC provider instead, with a device code (you enter it in a browser)."
    ),
    client_id: str = typer.Option("runink", "--client-id", help="With --issuer: the CLI's client id there."),
) -> None:
    """Store the token every CLI command sends (`$RUNINK_TOKEN` overrides it): a pasted one, or
    with --issuer one your identity provider gives after you enter a device code (RFC 8628)."""
    if issuer is not None:
        from runink.core.cli.device_login import device_login

        token = device_login(issuer, client_id, show=lambda line: print(line, file=sys.stderr, flush=True))
    text = one_token(token if token is not None else sys.stdin.read(MAX_TOKEN + 1), "login")
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # (a file that was there keeps its mode through O_CREAT)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    print(f"token stored in {path}")


def whoami_command(ctx: typer.Context, server: str | None = SERVER, json_output: bool = JSON) -> None:
    """Who the cluster takes you for, and your cluster roles."""
    with _client(ctx, server) as client:
        answer = client.call("GET", "/v1/whoami")
    if json_output:
        print_json(answer)
        return
    roles = ", ".join(answer["cluster_roles"]) or "none"
    print(f"{answer['subject']} (by {answer['authenticated_by']}); cluster roles: {roles}")


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: str = typer.Option(..., "--name", help="The service account's name (the token's subject is sa:NAME)."),
    role: str = typer.Option(
        ..., "--role", help="viewer, runner, editor or admin (with --herd); cluster-viewer or cluster-admin."
    ),
    herd: str | None = typer.Option(None, "--herd", help="The herd the role is held in (none: a cluster role)."),
    ttl: str = typer.Option("1h", "--ttl", help="How long the token lasts: 30m, 1h, 7d (1 minute to 90 days)."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Mint a short-lived token for a CI system or a script; printed once, kept nowhere."""
    path = f"/v1/herds/{part(herd)}/tokens" if herd else "/v1/tokens"
    body = {"name": name, "role": role, "ttl": _duration(ttl)}

    def about(answer: dict[str, Any]) -> str:
        expires = dt.datetime.fromtimestamp(answer["expires"], dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return f"{answer['subject']}, {role} in {f'herd {herd}' if herd else 'the cluster'}, until {expires}"

    mint_token(ctx, server, path, body, json_output, about)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    token: str | None = typer.Argument(
        None, metavar="[TOKEN]", help="The token itself (- reads it from stdin); an admin of its herds may revoke it."
    ),
    from_file: Path | None = typer.Option(None, "--token-file", help="Read the token from this file."),
    jti: str | None = typer.Option(
        None, "--jti", help="The token's id (`token create --json` prints it); cluster admins."
    ),
    subject: str | None = typer.Option(
        None,
        "--subject",
        help="Every token of this subject issued up to now, e.g. sa:ci or node:agent-1; cluster admins.",
    ),
    herd: str | None = typer.Option(
        None, "--herd", help="Every token holding a role in this herd, issued up to now; its admins."
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Revoke a token the cluster signed before it expires: every server refuses it within a
    second (an agent's stream using it ends)."""
    if token is not None and from_file is not None:
        raise typer.BadParameter("give the token one way: TOKEN, - (stdin) or --token-file FILE", param_hint="TOKEN")
    token = given_token(token, from_file)
    given = {k: v for k, v in {"token": token, "jti": jti, "subject": subject, "herd": herd}.items() if v is not None}
    if len(given) != 1:
        raise typer.BadParameter("give one of TOKEN (or --token-file), --jti, --subject and --herd", param_hint="TOKEN")
    _revoke(ctx, server, given, json_output)


def _revoke(ctx: typer.Context, server: str | None, body: dict[str, str], json_output: bool) -> None:
    with _client(ctx, server) as client:
        if "herd" in body:
            answer = client.call("POST", f"/v1/herds/{part(body['herd'])}/tokens/revoke")
        else:
            answer = client.call("POST", "/v1/tokens/revoke", body)
    if json_output:
        print_json(answer)
        return
    revoked = answer["revoked"]
    if "herd" in revoked:
        print(f"revoked every token this cluster signed with a role in herd {revoked['herd']} up to now")
    elif "jti" in revoked:
        print(f"revoked token {revoked['jti']}" + (f" of {revoked['subject']}" if revoked.get("subject") else ""))
    else:  # (an identity provider's tokens are not the cluster's to revoke: said, not implied)
        print(
            f"revoked every token this cluster signed for {revoked['subject']} up to now "
            "(an identity provider's tokens are revoked at the provider; remove the subject's bindings)"
        )


def mint_token(
    ctx: typer.Context,
    server: str | None,
    path: str,
    body: dict[str, Any],
    json_output: bool,
    about: Callable[[dict[str, Any]], str],
) -> None:
    """POST ``body`` to a route that mints a token; print its answer (``--json``), else the
    token alone on stdout (for a file or a pipe) and ``about`` it as a comment on stderr."""
    with _client(ctx, server) as client:
        answer = client.call("POST", path, body)
    if json_output:
        print_json(answer)
        return
    print(f"# {about(answer)}", file=sys.stderr)
    print(answer["token"])


@rbac_app.command("bind")
def rbac_bind(
    ctx: typer.Context,
    herd: str = typer.Argument(..., metavar="HERD", help="The herd, or '*' for a cluster role."),
    role: str = typer.Argument(
        ...,
        metavar="ROLE",
        help="viewer, runner, editor, admin or a custom role (`runink rbac role list`); cluster-viewer, cluster-admin.",
    ),
    user: str | None = typer.Option(None, "--user", help="A user (the subject their identity provider names)."),
    group: str | None = typer.Option(None, "--group", help="A group (from the identity provider's groups claim)."),
    service_account: str | None = typer.Option(None, "--service-account", help="A service account's name."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Give a subject a role in a herd (replacing the one it held there)."""
    kind, subject = _subject(user, group, service_account)
    with _client(ctx, server) as client:
        answer = client.call("POST", _bindings_path(herd), {"kind": kind, "subject": subject, "role": role})
    print_json(answer) if json_output else print(
        f"{kind} {subject}: {role} in {'the cluster' if herd == CLUSTER else herd}"
    )


@rbac_app.command("unbind")
def rbac_unbind(
    ctx: typer.Context,
    herd: str = typer.Argument(..., metavar="HERD", help="The herd, or '*' for the cluster."),
    user: str | None = typer.Option(None, "--user"),
    group: str | None = typer.Option(None, "--group"),
    service_account: str | None = typer.Option(None, "--service-account"),
    server: str | None = SERVER,
) -> None:
    """Take a subject's role in a herd away."""
    kind, subject = _subject(user, group, service_account)
    with _client(ctx, server) as client:
        client.call("POST", _bindings_path(herd) + "/unbind", {"kind": kind, "subject": subject})
    print(f"{kind} {subject}: no role in {'the cluster' if herd == CLUSTER else herd} now")


@rbac_app.command("list")
def rbac_list(
    ctx: typer.Context,
    herd: str = typer.Argument(..., metavar="HERD", help="The herd, or '*' for the cluster's bindings."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """The role bindings of a herd (or of the cluster)."""
    with _client(ctx, server) as client:
        answer = client.call("GET", _bindings_path(herd))
    if json_output:
        print_json(answer["bindings"])
        return
    rows = [(b["kind"], b["subject"], b["role"], b["by"]) for b in answer["bindings"]]
    print_table(
        f"role bindings of {'the cluster' if herd == CLUSTER else 'herd ' + herd}",
        ["KIND", "SUBJECT", "ROLE", "BOUND BY"],
        rows,
    )


@nodes_app.command("token")
def node_token(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="The node's id (its agent's --node-id)."),
    ttl: str = typer.Option("30d", "--ttl", help="How long the token lasts: 1h, 30d (1 minute to 90 days)."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Mint the token a node's agent connects with (`runink agent --token-file FILE`)."""
    path, hint = f"/v1/nodes/{part(node)}/token", f"node {node}: give it to its agent as --token-file"
    mint_token(ctx, server, path, {"ttl": _duration(ttl)}, json_output, lambda _: hint)


@nodes_app.command("revoke")
def node_revoke(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="The node's id (its agent's --node-id)."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Revoke every token minted for a node so far, and every certificate issued to it: its
    agent's stream ends and it cannot connect again until given a new token (`runink nodes
    token NODE`) or certificate (`runink nodes join-token NODE`)."""
    _revoke(ctx, server, {"subject": f"node:{node}"}, json_output)


def audit_command(
    ctx: typer.Context,
    day: str | None = typer.Option(None, "--day", help="The day, YYYY-MM-DD (UTC; default: today)."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="The last this many decisions."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Authorization decisions about changes, allowed or not (cluster admins)."""
    with _client(ctx, server) as client:
        records = client.call("GET", "/v1/audit", day=day, limit=limit)["records"]
    if json_output:
        print_json(records)
        return
    rows = [
        (
            dt.datetime.fromtimestamp(r["at"], dt.UTC).strftime("%H:%M:%S.%f")[:-3],
            r["subject"],
            r["action"],
            r["herd"],
            r["resource"],
            "allowed" if r["allowed"] else "DENIED",
            r["reason"],
        )
        for r in records
    ]
    print_table("audit", ["AT (UTC)", "WHO", "ACTION", "HERD", "RESOURCE", "DECISION", "WHY"], rows)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
    app.command("login")(login_command)
    app.command("whoami")(whoami_command)
    app.add_typer(token_app, name="token")
    app.add_typer(rbac_app, name="rbac")
    roles_cmd.register(rbac_app)
