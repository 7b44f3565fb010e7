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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runink.core.cli.output import console, print_json, print_table
from runink.core.errors import RuninkError
from runink.core.hookspecs import hookimpl
from runink.core.interfaces.annotator import Annotation
from runink.plugins.lineage.catalog import MAX_LISTED

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


@dataclass(frozen=True)
class _Target:
    """The dataset annotated, wherever its catalog is: the local one or the cluster's."""

    uri: str
    herd: str
    pii: frozenset[str]
    local: Any = None  # the local catalog's row (None: the cluster's)


def register(app: typer.Typer, plugin: AnnotationCommands) -> None:
    cluster_help = "Use the cluster's catalog (found as `runink jobs` finds it) instead of the local one."
    server_help = "Use this cluster's API (HOST:PORT) instead of the local catalog."

    @app.command("annotate")
    def annotate_command(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., help="Its URI (runink catalog list) or its path."),
        note: list[str] = typer.Option(
            [], "--note", help="KEY=VALUE: a person's annotation, no model asked (repeat for more)."
        ),
        column: str | None = typer.Option(None, "--column", help="With --note: of this column."),
        record: str | None = typer.Option(None, "--record", help="With --note: of this record."),
        confidence: float = typer.Option(1.0, "--confidence", min=0.0, max=1.0, help="With --note: how sure."),
        model: str | None = typer.Option(None, "--model", help="The model (default: [annotator] options.model)."),
        sample: int = typer.Option(5, "--sample", min=0, max=1000, help="How many rows the model sees."),
        herd: list[str] = typer.Option([], "--herd", help="Look in this herd only (repeat for more)."),
        cluster: bool = typer.Option(False, "--cluster", help=cluster_help),
        server: str | None = typer.Option(None, "--server", help=server_help),
        as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
    ) -> None:
        """Annotate a dataset, its columns or records: with --note, as you; else ask the annotator
        for descriptions and tags (PII candidates) from its schema and first rows. Stored in the
        catalog, the cluster's with --cluster or --server (the rows are read here)."""
        state: CliState = ctx.obj
        remote = cluster or server is not None
        if (column or record) and not note:
            raise RuninkError("--column and --record name what a --note is about: give --note KEY=VALUE")
        if column and record:
            raise RuninkError("--column and --record: give one (a note is about a column or a record)")
        target = _find(ctx, plugin, dataset, herd, server, remote)
        usage = None
        if note:
            about = f"column:{column}" if column else f"record:{record}" if record else "dataset"
            notes = [Annotation(about, *_key_value(text), confidence) for text in note]
            made_by: dict[str, Any] = {"model": None, "prompt_path": None, "prompt_hash": None}
        else:
            config = plugin.config or state.config()
            manager = state.plugins()
            schema, rows = read_sample(target.uri, sample, manager)
            annotator = build_annotator(config, manager, model)
            try:
                notes = annotator.annotate(target.uri, schema, masked(rows, target.pii))
            finally:
                close = getattr(annotator, "close", None)
                if callable(close):
                    close()
            made_by = {
                "model": str(getattr(annotator, "model", "") or config.annotator.driver or "openai"),
                "prompt_path": getattr(annotator, "prompt_path", None),
                "prompt_hash": getattr(annotator, "prompt_hash", None),
            }
            usage = getattr(annotator, "usage", None)
        if remote:
            _store_on_cluster(ctx, server, target, notes, made_by)
        else:
            config = plugin.config or state.config()
            from runink.plugins.lineage.catalog.annotations import add_annotations

            engine = catalog_engine(config, state.plugins())
            add_annotations(
                engine,
                target.local,
                notes,
                model=made_by["model"] or "",
                prompt_path=made_by["prompt_path"],
                prompt_hash=made_by["prompt_hash"],
                author=_user(),
            )
        _print_stored(target, notes, made_by["model"], usage, as_json)
        failed = [n for n in notes if n.extra.get("failed")]
        if failed:
            reason = failed[0].extra.get("error") or "the model's answer did not parse"
            raise RuninkError(f"{dataset}: {reason}; stored as failed (runink annotations {dataset} shows it)")

    @app.command("annotations")
    def annotations_command(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., help="Its URI (runink catalog list) or its path."),
        record: str | None = typer.Option(None, "--record", help="Only this record's."),
        limit: int = typer.Option(MAX_LISTED, "--limit", min=1, max=MAX_LISTED, help="At most this many."),
        after: int = typer.Option(
            0, "--after", min=0, max=2**31 - 1, help="Those after this id (the last one listed)."
        ),
        herd: list[str] = typer.Option([], "--herd", help="Look in this herd only (repeat for more)."),
        cluster: bool = typer.Option(False, "--cluster", help="Ask the cluster instead of the local catalog."),
        server: str | None = typer.Option(None, "--server", help="Ask this cluster's API (HOST:PORT)."),
        as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
    ) -> None:
        """What models and people said about a dataset, its columns and records, oldest first, a
        page at a time (--after the last id for the next)."""
        page: dict[str, Any]
        if cluster or server:
            from runink.plugins.lineage.catalog.cli import as_server_sees, ask_cluster

            where = {"uri": as_server_sees(dataset), "herd": herd or None, "record": record}
            page = ask_cluster(ctx, server, "/v1/catalog/annotations", **where, after=after, limit=limit)
        else:
            from runink.plugins.lineage.catalog.annotations import list_annotations
            from runink.plugins.lineage.catalog.queries import find_dataset

            state: CliState = ctx.obj
            engine = catalog_engine(plugin.config or state.config(), state.plugins())
            found = find_dataset(engine, dataset, herd or None)
            notes = list_annotations(engine, found, record=record, after=after, limit=limit)
            more = notes[-1]["id"] if len(notes) == limit else None
            page = {"dataset": found.uri, "herd": found.herd, "annotations": notes, "next": more}
        if as_json:
            print_json(page)
            return
        print_table(
            f"{page['dataset']} ({page['herd']})",
            ("id", "target", "key", "value", "confidence", "by", "failed", "created"),
            [
                (
                    n["id"],
                    n["target"],
                    n["key"],
                    n["value"],
                    n["confidence"],
                    n["model"] or n["author"] or "",
                    "failed" if n["failed"] else "",
                    n["created"][:19],
                )
                for n in page["annotations"]
            ],
        )
        if page["next"] is not None:
            console(stderr=True).print(f"more: --after {page['next']}", highlight=False, markup=False)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RuninkError(f"--note {text!r}: expected KEY=VALUE")
    return key.strip(), value


def _find(
    ctx: typer.Context, plugin: AnnotationCommands, dataset: str, herd: list[str], server: str | None, remote: bool
) -> _Target:
    if remote:
        from runink.plugins.lineage.catalog.cli import as_server_sees, ask_cluster

        where = {"uri": as_server_sees(dataset), "herd": herd or None, "runs": 1}
        detail = ask_cluster(ctx, server, "/v1/catalog/dataset", **where)
        return _Target(detail["uri"], detail["herd"], frozenset(detail.get("pii") or ()))
    from runink.plugins.lineage.catalog.queries import find_dataset

    state: CliState = ctx.obj
    engine = catalog_engine(plugin.config or state.config(), state.plugins())
    found = find_dataset(engine, dataset, herd or None)
    pii = frozenset(json.loads(found.pii_json)) if found.pii_json else frozenset()
    return _Target(found.uri, found.herd, pii, found)


def _store_on_cluster(
    ctx: typer.Context, server: str | None, target: _Target, notes: list[Annotation], made_by: dict[str, Any]
) -> None:
    """POST the annotations, as the CLI's identity (their author), a thousand at a time."""
    from runink.plugins.lineage.catalog.cli import post_cluster

    for start in range(0, len(notes), MAX_LISTED):
        body = {
            "uri": target.uri,
            "herd": target.herd,
            **{key: value for key, value in made_by.items() if value is not None},
            "annotations": [
                {
                    "target": n.target,
                    "key": n.key,
                    "value": (n.value or (str(n.extra.get("error") or "") if n.extra.get("failed") else ""))[:20_000],
                    "confidence": n.confidence,
                    "failed": bool(n.extra.get("failed", False)),
                    "raw": None if n.extra.get("raw") is None else str(n.extra["raw"])[:20_000],
                }
                for n in notes[start : start + MAX_LISTED]
            ],
        }
        post_cluster(ctx, server, "/v1/catalog/annotations", body)


def _print_stored(target: _Target, notes: list[Annotation], model: str | None, usage: Any, as_json: bool) -> None:
    failed = [n for n in notes if n.extra.get("failed")]
    if as_json:
        print_json(
            {
                "dataset": target.uri,
                "herd": target.herd,
                "model": model,
                "stored": len(notes),
                "failed": len(failed),
                "usage": usage.to_json() if usage is not None and hasattr(usage, "to_json") else None,
                "annotations": [
                    {"target": n.target, "key": n.key, "value": n.value, "confidence": n.confidence} for n in notes
                ],
            }
        )
        return
    print_table(
        f"{target.uri} ({target.herd})",
        ("target", "key", "value", "confidence"),
        [(n.target, n.key, n.value, n.confidence) for n in notes],
    )
    if usage is not None:
        console(stderr=True).print(
            f"{model}: {usage.requests} request(s), {usage.prompt_tokens} prompt + "
            f"{usage.completion_tokens} completion tokens, cost {usage.cost:.6f}",
            highlight=False,
            markup=False,
        )


def catalog_engine(config: RuninkConfig, manager: PluginManager) -> Engine:
    """The catalog the ``catalog`` plugin opened (its [plugin.catalog] url), else one opened here."""
    from runink.plugins.lineage.catalog.sink import CatalogSink

    sink = manager.pm.get_plugin("catalog")
    if not isinstance(sink, CatalogSink):
        sink = CatalogSink()
        sink.runink_configure(config)
    return sink.engine()  # type: ignore[no-any-return]


def masked(rows: list[dict[str, Any]], hidden: frozenset[str]) -> list[dict[str, Any]]:
    """The sample with the columns a contract marked pii or mask masked (the catalog keeps
    which, from the runs that read the dataset with its contract): they never reach a model."""
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
