"""``runink annotate DATASET`` and ``runink annotations DATASET``: a model's descriptions and
tags (PII candidates) of a catalog dataset and its columns, stored in the catalog and read back.

``annotate`` reads the dataset's schema and first rows through its storage driver (the one its
catalog URI's format names), sends them to the annotator (masked fields masked), and stores
what comes back, failed answers included (with the raw text), as the command's user.

The annotator is the ``[annotator]`` section's driver built with its ``options`` (the
convention of every driver section), ``openai`` when the section names none::

    [annotator]
    driver = "openai"
    options = { model = "gpt-4o-mini", base_url = "http://127.0.0.1:8000/v1", max_in_flight = 8 }

It is found through the driver loader (entry-point group ``runink.annotators``), never
imported: plugins do not import each other (the llm plugin ships the ``openai`` driver). This
module is the hook plugin (``AnnotationCommands``); nothing here imports SQLAlchemy or a driver
until a command runs.
"""

from __future__ import annotations

import contextlib
import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runink.core.cli.output import console, print_json, print_table
from runink.core.errors import RuninkError
from runink.core.hookspecs import hookimpl

#: what a masked value is sent as
MASKED = "[masked]"

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from runink.core.cli.state import CliState
    from runink.core.config import RuninkConfig
    from runink.core.interfaces.annotator import Annotator
    from runink.core.plugins import PluginManager


class AnnotationCommands:
    """The hook plugin: keeps the config, adds the two commands."""

    def __init__(self) -> None:
        self.config: RuninkConfig | None = None

    @hookimpl
    def runink_configure(self, config: RuninkConfig) -> None:
        self.config = config

    @hookimpl
    def runink_cli_commands(self, app: typer.Typer) -> None:
        register(app, self)


def register(app: typer.Typer, plugin: AnnotationCommands) -> None:
    @app.command("annotate")
    def annotate_command(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., help="Its URI (runink catalog list) or its path."),
        model: str | None = typer.Option(None, "--model", help="The model (default: [annotator] options.model)."),
        sample: int = typer.Option(5, "--sample", min=0, max=1000, help="How many rows the model sees."),
        herd: list[str] = typer.Option([], "--herd", help="Look in this herd only (repeat for more)."),
        as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
    ) -> None:
        """Ask the annotator for descriptions and tags of a dataset and its columns; store them."""
        from runink.plugins.lineage.catalog.annotations import add_annotations
        from runink.plugins.lineage.catalog.queries import find_dataset

        state: CliState = ctx.obj
        config = plugin.config or state.config()
        manager = state.plugins()
        engine = catalog_engine(config, manager)
        found = find_dataset(engine, dataset, herd or None)
        schema, rows = read_sample(found.uri, sample, manager)
        rows = masked(rows, found)
        annotator = build_annotator(config, manager, model)
        try:
            notes = annotator.annotate(found.uri, schema, rows)
        finally:
            close = getattr(annotator, "close", None)
            if callable(close):
                close()
        model_name = str(getattr(annotator, "model", "") or config.annotator.driver or "openai")
        add_annotations(
            engine,
            found,
            notes,
            model=model_name,
            prompt_path=getattr(annotator, "prompt_path", None),
            prompt_hash=getattr(annotator, "prompt_hash", None),
            author=_user(),
        )
        usage = getattr(annotator, "usage", None)
        failed = [n for n in notes if n.extra.get("failed")]
        if as_json:
            print_json(
                {
                    "dataset": found.uri,
                    "herd": found.herd,
                    "model": model_name,
                    "stored": len(notes),
                    "failed": len(failed),
                    "usage": usage.to_json() if usage is not None and hasattr(usage, "to_json") else None,
                    "annotations": [
                        {"target": n.target, "key": n.key, "value": n.value, "confidence": n.confidence} for n in notes
                    ],
                }
            )
        else:
            print_table(
                f"{found.uri} ({found.herd})",
                ("target", "key", "value", "confidence"),
                [(n.target, n.key, n.value, n.confidence) for n in notes],
            )
            if usage is not None:
                console(stderr=True).print(
                    f"{model_name}: {usage.requests} request(s), {usage.prompt_tokens} prompt + "
                    f"{usage.completion_tokens} completion tokens, cost {usage.cost:.6f}",
                    highlight=False,
                    markup=False,
                )
        if failed:
            reason = failed[0].extra.get("error") or "the model's answer did not parse"
            raise RuninkError(f"{dataset}: {reason}; stored as failed (runink annotations {dataset} shows it)")

    @app.command("annotations")
    def annotations_command(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., help="Its URI (runink catalog list) or its path."),
        herd: list[str] = typer.Option([], "--herd", help="Look in this herd only (repeat for more)."),
        cluster: bool = typer.Option(False, "--cluster", help="Ask the cluster instead of the local catalog."),
        server: str | None = typer.Option(None, "--server", help="Ask this cluster's API (HOST:PORT)."),
        as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
    ) -> None:
        """What models and people said about a dataset, its columns and records."""
        if cluster or server:
            from runink.plugins.lineage.catalog.cli import as_server_sees, ask_cluster

            where = {"uri": as_server_sees(dataset), "herd": herd or None, "runs": 1}
            detail = ask_cluster(ctx, server, "/v1/catalog/dataset", **where)
            uri, owner, notes = detail["uri"], detail["herd"], detail["annotations"]
        else:
            from runink.plugins.lineage.catalog.annotations import list_annotations
            from runink.plugins.lineage.catalog.queries import find_dataset

            state: CliState = ctx.obj
            config = plugin.config or state.config()
            engine = catalog_engine(config, state.plugins())
            found = find_dataset(engine, dataset, herd or None)
            uri, owner, notes = found.uri, found.herd, list_annotations(engine, found)
        if as_json:
            print_json(notes)
            return
        print_table(
            f"{uri} ({owner})",
            ("target", "key", "value", "confidence", "by", "failed", "created"),
            [
                (
                    n["target"],
                    n["key"],
                    n["value"],
                    n["confidence"],
                    n["model"] or n["author"] or "",
                    "failed" if n["failed"] else "",
                    n["created"][:19],
                )
                for n in notes
            ],
        )


def catalog_engine(config: RuninkConfig, manager: PluginManager) -> Engine:
    """The catalog the ``catalog`` plugin opened (its [plugin.catalog] url), else one opened here."""
    from runink.plugins.lineage.catalog.sink import CatalogSink

    sink = manager.pm.get_plugin("catalog")
    if not isinstance(sink, CatalogSink):
        sink = CatalogSink()
        sink.runink_configure(config)
    return sink.engine()  # type: ignore[no-any-return]


def masked(rows: list[dict[str, Any]], dataset: Any) -> list[dict[str, Any]]:
    """The sample with the columns a contract marked pii or mask masked (the catalog keeps
    which, from the runs that read the dataset with its contract): they never reach a model."""
    hidden = set(json.loads(dataset.pii_json)) if dataset.pii_json else set()
    return [{key: MASKED if key in hidden and value is not None else value for key, value in r.items()} for r in rows]


def read_sample(
    uri: str, rows: int, manager: PluginManager | None = None
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """A dataset's ``{column: Arrow type}`` and its first ``rows`` rows, through the storage
    driver its URI's format names."""
    from runink.core.datasets import resolve_dataset
    from runink.core.drivers import load_driver
    from runink.core.interfaces.storage import Storage

    ref = resolve_dataset(uri, Path.cwd())
    storage = load_driver(Storage, ref.format, manager=manager)
    schema: dict[str, str] | None = None
    sample: list[dict[str, Any]] = []
    try:
        with contextlib.closing(storage.read(ref.path)) as reading:  # type: ignore[type-var]
            for read in reading:
                if schema is None:
                    schema = {f.name: str(f.type) for f in read.batch.schema}
                sample.extend(read.batch.slice(0, rows - len(sample)).to_pylist())
                if len(sample) >= rows:
                    break
    except (OSError, ValueError) as exc:
        raise RuninkError(f"dataset {uri}: cannot read it: {exc}") from None
    if schema is None:
        raise RuninkError(f"dataset {uri}: it has no rows to read a schema from")
    return schema, sample


def build_annotator(config: RuninkConfig, manager: PluginManager, model: str | None) -> Annotator:
    """The ``[annotator]`` section's driver with its options (``--model`` over its model); with no
    driver named, the ``openai`` driver."""
    from runink.core.drivers import load_driver
    from runink.core.interfaces.annotator import Annotator

    options: dict[str, Any] = dict(config.annotator.options)
    if model is not None:
        options["model"] = model
    name = config.annotator.driver
    if name is None:
        return load_driver(Annotator, "openai", options, manager=manager)
    origin = config.source_of("annotator.driver")
    return load_driver(Annotator, name, options, manager=manager, origin=f"{origin}: annotator.driver")


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None
