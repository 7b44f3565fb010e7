"""`runink rbac role create|list|delete`: custom roles, sets of herd actions a cluster admin
names and herds then bind like the built-in ones (`runink rbac bind HERD ROLE ...`)."""

from __future__ import annotations

import typer

from runink.core.cli.cluster_client import part
from runink.core.cli.jobs_cmd import JSON, SERVER, _client
from runink.core.cli.output import print_json, print_table

role_app = typer.Typer(
    help="Custom roles: named sets of herd actions (RESOURCE.VERB), bound per herd like the built-in ones.",
    no_args_is_help=True,
)


@role_app.command("create")
def role_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The role's name (lower-case, like a herd's)."),
    allow: list[str] = typer.Option(
        ...,
        "--allow",
        help="An action it allows, RESOURCE.VERB (jobs.read) or RESOURCE.* (every herd verb); repeat it.",
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Define a custom role, or replace its definition (cluster admins; bindings follow within a second)."""
    with _client(ctx, server) as client:
        answer = client.call("PUT", f"/v1/roles/{part(name)}", {"allows": allow})
    print_json(answer) if json_output else print(f"role {answer['name']}: {', '.join(answer['allows'])}")


@role_app.command("list")
def role_list(
    ctx: typer.Context,
    herd: str | None = typer.Option(
        None, "--herd", help="A herd you hold a role in (without it: asked with your cluster roles)."
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """The built-in roles and the custom ones, with the actions each allows."""
    with _client(ctx, server) as client:
        answer = client.call("GET", "/v1/roles", herd=herd)
    if json_output:
        print_json(answer)
        return
    rows = [(r["name"], "built-in", r["where"], ", ".join(r["allows"]), "") for r in answer["built_in"]]
    rows += [(r["name"], "custom", r["where"], ", ".join(r["allows"]), r["by"]) for r in answer["custom"]]
    print_table("roles", ["ROLE", "KIND", "BOUND IN", "ALLOWS", "DEFINED BY"], rows)


@role_app.command("delete")
def role_delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., metavar="NAME", help="The custom role (refused while a herd binds it)."),
    server: str | None = SERVER,
) -> None:
    """Remove a custom role (cluster admins); unbind it everywhere first."""
    with _client(ctx, server) as client:
        client.call("DELETE", f"/v1/roles/{part(name)}")
    print(f"role {name}: deleted")


def register(rbac: typer.Typer) -> None:
    """Add `role` under the `rbac` command group (core/cli/auth_cmd.py's ``rbac_app``)."""
    rbac.add_typer(role_app, name="role")
