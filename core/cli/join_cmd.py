"""`runink nodes join-token NODE` and `runink node join TOKEN`: a new machine becomes a node of
the cluster with a one-time token, making its key itself (core/server/join.py says how the
server is trusted and what is signed)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from runink.core.cli.auth_cmd import _duration, mint_token
from runink.core.cli.jobs_cmd import JSON, SERVER, nodes_app
from runink.core.errors import RuninkError
from runink.core.fstree import private_folder

node_app = typer.Typer(help="This machine as a node of a cluster: `runink node join`.", no_args_is_help=True)


@nodes_app.command("join-token")
def node_join_token(
    ctx: typer.Context,
    node: str = typer.Argument(..., metavar="NODE", help="The node the new machine joins as (its agent's --node-id)."),
    ttl: str = typer.Option("1h", "--ttl", help="How long it can be used (once): 10m, 1h (at most 7d)."),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Mint a one-time token a new machine joins the cluster with (`runink node join TOKEN`)."""
    hint = f"node {node}: on the new machine, `runink node join --token-file FILE --server URL --dir DIR`"
    from runink.core.cli.cluster_client import part

    mint_token(ctx, server, f"/v1/nodes/{part(node)}/join-token", {"ttl": _duration(ttl)}, json_output, lambda _: hint)


@node_app.command("join")
def node_join(
    token: str | None = typer.Argument(
        None,
        metavar="[TOKEN]",
        help="A join token (`runink nodes join-token NODE`); - reads it from stdin. Other users of this "
        "machine can read a command's arguments: prefer --token-file or stdin.",
    ),
    token_file: Path | None = typer.Option(None, "--token-file", help="Read the join token from this file."),
    server: str = typer.Option(..., "--server", help="A server's API, https://HOST:PORT."),
    directory: Path = typer.Option(..., "--dir", help="Where to write this node's key, certificate and the CA."),
) -> None:
    """Get this node's certificate with a one-time token: the key is made here and stays here;
    the server is trusted only if its CA is the one the token names. Prints the agent's flags."""
    import ssl

    import httpx

    from runink.core.cli.cluster_client import given_token
    from runink.core.server import pki
    from runink.core.server.join import JoinToken, pinned_ca

    if (token is None) == (token_file is None):
        raise typer.BadParameter("give the token one way: --token-file FILE, TOKEN, or - (stdin)", param_hint="TOKEN")
    token = given_token(token, token_file)
    assert token is not None
    try:
        parsed = JoinToken.parse(token)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="TOKEN") from None
    base = server.rstrip("/")
    if not base.startswith("https://"):
        raise typer.BadParameter("the server's https:// address (a join needs TLS)", param_hint="--server")
    try:  # not verified yet: kept only if it is the CA the token names
        found = httpx.get(f"{base}/v1/cluster/ca", verify=False, timeout=10)
        found.raise_for_status()
        ca_pem = str(found.json()["ca"]).encode()
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise RuninkError(f"{base}: cannot read the cluster CA: {exc}") from None
    pinned = pinned_ca(ca_pem, parsed.ca_fingerprint)
    if pinned is None:
        raise RuninkError(f"{base}: its CA is not (only) the one the token names: refused (a server in the middle?)")
    ca_pem = pinned
    private_folder(directory, "--dir")  # (another user's folder: they could swap the CA it holds)
    key, cert, ca = directory / "node-key.pem", directory / "node.pem", directory / "ca.pem"
    there = [str(path) for path in (key, cert, ca) if path.exists() or path.is_symlink()]
    if there:  # (checked before the token is spent)
        raise RuninkError(f"--dir {directory}: {', '.join(there)} exist(s) already: give an empty folder")
    try:
        request = pki.new_request("node.joining", key)  # (the server names the certificate)
    except pki.PkiError as exc:
        raise RuninkError(f"--dir {directory}: {exc}") from None
    try:
        verified = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
        answer = httpx.post(
            f"{base}/v1/nodes/join", json={"token": token.strip(), "csr": request.decode()}, verify=verified, timeout=10
        )
        if answer.status_code != 200:
            raise RuninkError(f"{base}: join refused: {answer.status_code} {answer.json().get('detail', answer.text)}")
        joined = answer.json()
        pki.write_new(ca, ca_pem)
        pki.write_new(cert, str(joined["cert"]).encode())
    except BaseException:
        key.unlink(missing_ok=True)  # (nothing half made is left)
        raise
    print(f"node {joined['node']} joined; run its agent with:", file=sys.stderr)
    print(f"--node-id {joined['node']} --tls-cert {cert} --tls-key {key} --tls-ca {ca}")


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")  # (join-token is one of `runink nodes`, registered with it)
