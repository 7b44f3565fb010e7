"""``runink contract``: show a contract's fields and hash; diff two versions of a contract."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runink.core.cli.output import print_error, print_json, print_table
from runink.core.errors import RuninkError

if TYPE_CHECKING:  # contracts import pyarrow: only when a contract command runs
    from runink.core.contracts import Contract

app = typer.Typer(help="Inspect and compare contracts.", no_args_is_help=True)


def load_contract(ref: str) -> type[Contract]:
    """``contracts:Order`` (module on the path or in the current folder) or ``path/to/file.py:Order``."""
    from runink.core.contracts import Contract

    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name:
        raise RuninkError(f"contract {ref!r}: expected MODULE:Class or FILE.py:Class")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise RuninkError(f"contract {ref!r}: file {target} does not exist")
            spec = importlib.util.spec_from_file_location(f"_runink_contract_{abs(hash(path))}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            # its folder first on the path while it runs: a contract importing a module beside
            # it loads from any directory, as it does in its pipeline's slice
            sys.path.insert(0, str(path.parent))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
    except RuninkError:
        raise
    except Exception as exc:
        raise RuninkError(f"contract {ref!r}: cannot import {target}: {type(exc).__name__}: {exc}") from None
    contract = getattr(module, name, None)
    if not (isinstance(contract, type) and issubclass(contract, Contract)):
        raise RuninkError(f"contract {ref!r}: {target} has no Contract subclass named {name!r}")
    return contract


@app.command("show")
def show(
    ref: str = typer.Argument(..., metavar="REF", help="MODULE:Class or FILE.py:Class"),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print a contract's fields, types, constraints and stable hash."""
    contract = load_contract(ref)
    described = {
        **contract.describe(),
        "hash": contract.contract_hash(),
        "arrow_schema": {f.name: str(f.type) for f in contract.schema()},
    }
    if json_output:
        print_json(described)
        return
    rows = []
    for field in described["fields"]:
        constraints = ", ".join(f"{k}={v}" for k, v in field.items() if k not in {"name", "type", "required"})
        rows.append((field["name"], field["type"], "yes" if field["required"] else "no", constraints or "-"))
    print_table(f"{described['name']} (hash {described['hash']})", ["FIELD", "TYPE", "REQUIRED", "CONSTRAINTS"], rows)


@app.command("diff")
def diff(
    old: str = typer.Argument(..., metavar="OLD", help="The old contract: MODULE:Class or FILE.py:Class"),
    new: str = typer.Argument(..., metavar="NEW", help="The new contract"),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Field-level changes from OLD to NEW; exits 1 when a change is breaking, 2 when a contract
    cannot be loaded (as diff(1): a script tells a breaking change from a typo)."""
    from runink.core.contracts import contract_diff

    try:
        before, after = load_contract(old), load_contract(new)
    except RuninkError as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None
    changes = contract_diff(before, after)
    breaking = any(c["breaking"] for c in changes)
    if json_output:
        print_json(
            {"old": before.contract_hash(), "new": after.contract_hash(), "breaking": breaking, "changes": changes}
        )
    else:
        rows: list[tuple[Any, ...]] = [
            (c["field"], c["change"], "yes" if c["breaking"] else "no", c["summary"]) for c in changes
        ]
        print_table(f"{old} -> {new}", ["FIELD", "CHANGE", "BREAKING", "DETAIL"], rows)
        if not changes:
            typer.echo("no changes")
    if breaking:
        raise typer.Exit(1)


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="contract")
