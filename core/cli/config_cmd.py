"""``runink config``: the effective configuration and where each value came from."""

from __future__ import annotations

from typing import Any

import typer

from runink.core.cli.output import print_json, print_table
from runink.core.cli.state import CliState

app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)


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
    """Print every setting with its value and source (file:line, $VARIABLE or default)."""
    state: CliState = ctx.obj
    config = state.config()
    data = config.model_dump(mode="json")
    if json_output:
        print_json({"file": str(config.file) if config.file else None, "config": data, "sources": config.sources})
        return
    rows = [(key, value, config.source_of(key)) for key, value in _leaves(data)]
    print_table(f"config file: {config.file or '(none)'}", ["KEY", "VALUE", "SOURCE"], rows)


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="config")
