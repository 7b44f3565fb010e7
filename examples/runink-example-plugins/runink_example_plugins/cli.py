"""A hook plugin adding ``runink example-costs`` to the CLI."""

from __future__ import annotations

import typer

from runink.core import hookimpl


@hookimpl
def runink_cli_commands(app: typer.Typer) -> None:
    @app.command("example-costs")
    def example_costs(node: list[str] = typer.Argument(None, help="NODE=COST pairs")) -> None:
        """Print node costs, cheapest first (from the runink-example-plugins package)."""
        pairs = sorted((float(cost), name) for name, cost in (item.split("=", 1) for item in node or []))
        for cost, name in pairs:
            typer.echo(f"{name}\t{cost:g}")
