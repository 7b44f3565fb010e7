"""``runink config``: the effective configuration and where each value came from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import typer

from runink.core.cli.output import print_json, print_table
from runink.core.cli.state import CliState
from runink.core.logs import MASK, redact

app = typer.Typer(help="Show the effective configuration; trust a project's config file.", no_args_is_help=True)


# A setting whose name says it holds a credential (a plugin's secret_key, api_key, password,
# token...) is shown masked, and so is the password of a URL: the output goes to terminals,
# tickets and CI logs. Where each came from is still shown.
_SECRET_KEY = re.compile(r"secret|passw|token|credential|private|api_?key|access_?key|auth", re.IGNORECASE)


def masked(data: Any, key: str = "") -> Any:
    """``data`` with what looks like a credential masked (_SECRET_KEY; a URL's password: logs.redact)."""
    if isinstance(data, dict):
        return {k: masked(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(v, key) for v in data]
    if data not in (None, "", False) and _SECRET_KEY.search(key) and not isinstance(data, bool | int | float):
        return MASK
    return redact(data) if isinstance(data, str) else data


def _leaves(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not dotted.endswith(("options", "weights")):
            items.extend(_leaves(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


@app.command("show")
def show(ctx: typer.Context, json_output: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Print every setting with its value and source (file:line, $VARIABLE or default);
    credentials (a secret_key, password, token... or a URL's password) show masked."""
    state: CliState = ctx.obj
    config = state.config()
    data = masked(config.model_dump(mode="json"))
    if json_output:
        print_json({"file": str(config.file) if config.file else None, "config": data, "sources": config.sources})
        return
    rows = [(key, value, config.source_of(key)) for key, value in _leaves(data)]
    print_table(f"config file: {config.file or '(none)'}", ["KEY", "VALUE", "SOURCE"], rows)


@app.command("trust")
def trust(
    file: Path = typer.Argument(Path("runink.toml"), help="The project's config file (./runink.toml)."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Trust a project's config file as it is now: read it first. A ./runink.toml (one that came
    with a project) is read only once trusted, and again after each change: it can choose how
    isolated the project's code runs, which paths it may write and where your token goes."""
    from runink.core.config_trust import trust as record

    sha256 = record(file)
    where = os.path.abspath(file)  # (as found: what is trusted, see config_trust)
    if json_output:
        print_json({"file": where, "sha256": sha256})
    else:
        print(f"trusted {where} as it is now (sha256 {sha256[:16]}...)")


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="config")
