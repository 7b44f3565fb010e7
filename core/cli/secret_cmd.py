"""`runink secret set|list|delete`: a herd's secrets on the cluster. Values go in (from a file,
or standard input so they stay out of the shell's history) and never come back: the cluster
answers names and versions only, and gives values to the herd's slices alone."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import sys
from pathlib import Path

import typer

from runink.core.cli.cluster_client import part
from runink.core.cli.jobs_cmd import JSON, SERVER, _client
from runink.core.cli.output import print_json, print_table
from runink.core.errors import RuninkError
from runink.core.interfaces.secrets import MAX_SECRET_BYTES

secret_app = typer.Typer(
    help="A herd's secrets: set, list (names and versions), delete. Slices get them with @secrets.",
    no_args_is_help=True,
)


def _read_value(from_file: Path | None) -> str:
    """The value: the file's content, else standard input's (asked for, unechoed, on a
    terminal); at most MAX_SECRET_BYTES, UTF-8 text. One trailing newline is dropped."""
    if from_file is not None:
        try:
            fd = os.open(from_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise RuninkError(f"--from-file {from_file}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
        where = f"--from-file {from_file}"
    elif sys.stdin.isatty():
        data = getpass.getpass("value: ").encode()
        where = "the value typed"
    else:
        data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)
        where = "standard input"
    if len(data) > MAX_SECRET_BYTES:
        raise RuninkError(f"{where}: more than {MAX_SECRET_BYTES} bytes (a secret is at most that)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RuninkError(f"{where}: not UTF-8 text (secrets are text; base64-encode binary ones)") from None
    return text[:-1] if text.endswith("\n") else text


@secret_app.command("set")
def secret_set(
    ctx: typer.Context,
    herd: str = typer.Argument(..., metavar="HERD"),
    name: str = typer.Argument(..., metavar="NAME", help="The secret's name (letters, digits, '.', '_', '-')."),
    from_file: Path | None = typer.Option(
        None, "--from-file", help="Read the value from this file (default: standard input, unechoed on a terminal)."
    ),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """Store a new version of a herd's secret: slices started from now on get it."""
    value = _read_value(from_file)
    with _client(ctx, server) as client:
        answer = client.call("PUT", f"/v1/herds/{part(herd)}/secrets/{part(name)}", {"value": value})
    print_json(answer) if json_output else print(f"secret {name} of herd {herd}: version {answer['version']}")


@secret_app.command("list")
def secret_list(
    ctx: typer.Context,
    herd: str = typer.Argument(..., metavar="HERD"),
    server: str | None = SERVER,
    json_output: bool = JSON,
) -> None:
    """A herd's secrets: names, versions and when each was set (never a value)."""
    with _client(ctx, server) as client:
        answer = client.call("GET", f"/v1/herds/{part(herd)}/secrets")
    if json_output:
        print_json(answer["secrets"])
        return
    rows = [(s["name"], str(s["version"]), _when(s["updated"])) for s in answer["secrets"]]
    print_table(f"secrets of herd {herd}", ["NAME", "VERSION", "SET"], rows)


@secret_app.command("delete")
def secret_delete(
    ctx: typer.Context,
    herd: str = typer.Argument(..., metavar="HERD"),
    name: str = typer.Argument(..., metavar="NAME"),
    server: str | None = SERVER,
) -> None:
    """Delete a herd's secret (jobs asking for it are refused from now on)."""
    with _client(ctx, server) as client:
        client.call("DELETE", f"/v1/herds/{part(herd)}/secrets/{part(name)}")
    print(f"secret {name} of herd {herd}: deleted")


@secret_app.command("rotate-master-key")
def rotate_master_key(
    ctx: typer.Context,
    key: Path = typer.Option(..., "--key", help="The master key the servers use now (their --secrets-key)."),
    new_key: Path = typer.Option(..., "--new-key", help="The new master key (`runink secret new-key FILE` makes one)."),
    barn: str = typer.Option(..., "--barn", help="The Barn's members' HTTP addresses, HOST:PORT,..."),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", help="A certificate the Barn takes (a server's: both usages; `runink server --init`)."
    ),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Its private key."),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="The cluster CA (a Barn started with --tls-*)."),
) -> None:
    """Re-wrap every herd's data key under a new master key, in the Barn itself (run it where
    the Barn is reachable). Then restart every server with --secrets-key NEW; the secrets'
    ciphertext does not change, and the old key opens nothing once they have."""
    from runink.core.drivers import load_driver
    from runink.core.interfaces.barn import BarnBackend
    from runink.core.interfaces.secrets import SecretBackend
    from runink.core.masterkey import key_id, master_key_of

    state = ctx.obj
    manager = state.plugins()
    from runink.core.server.tls import TlsFiles

    tls = TlsFiles.given(tls_cert, tls_key, tls_ca)
    found = {"endpoints": barn, **(tls.barn_options() if tls else {})}
    store: BarnBackend = load_driver(BarnBackend, "raft", found, manager=manager, origin="--barn")
    try:
        new = master_key_of(str(new_key), manager.hooks.master_key)
        options = {"barn": store, "master_key": master_key_of(str(key), manager.hooks.master_key)}
        backend = load_driver(SecretBackend, "barn", options, manager=manager, origin="--key")
        count = backend.rotate_master_key(new)
    finally:
        store.close()
    print(f"{count} herd data key(s) re-wrapped under master key {key_id(new)}: restart every server with it")


@secret_app.command("new-key")
def new_master_key(
    path: Path = typer.Argument(..., metavar="FILE", help="Where to write it (never overwritten)."),
) -> None:
    """Make a new random master key file (mode 0600) for the servers' --secrets-key."""
    from runink.core.masterkey import create_master_key

    print(f"master key {create_master_key(path)} written to {path}")


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at).isoformat(" ", "seconds") if at else "-"


def register(app: typer.Typer) -> None:
    app.add_typer(secret_app, name="secret")
