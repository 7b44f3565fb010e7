"""``runink catalog list|show`` and ``runink lineage``: the local catalog, read by the CLI
(the embedded run's identity reads every herd; ``--herd`` narrows)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from runink.core.cli.output import console, print_json, print_table

if TYPE_CHECKING:
    from runink.plugins.lineage.catalog.queries import Direction, LineageGraph
    from runink.plugins.lineage.catalog.sink import CatalogSink

FORMATS = ("tree", "json", "dot", "svg")


def register(app: typer.Typer, sink: CatalogSink) -> None:
    catalog = typer.Typer(
        help="The catalog of datasets and runs that lineage feeds (docs/lineage.md).", no_args_is_help=True
    )
    cluster_help = "Ask the cluster (found as `runink jobs` finds it) instead of the local catalog."
    server_help = "Ask this cluster's API (HOST:PORT) instead of the local catalog."

    @catalog.command("list")
    def list_command(
        ctx: typer.Context,
        herd: list[str] = typer.Option([], "--herd", help="Only this herd's datasets (repeat for more)."),
        cluster: bool = typer.Option(False, "--cluster", help=cluster_help),
        server: str | None = typer.Option(None, "--server", help=server_help),
        as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
    ) -> None:
        """Every dataset a run read or wrote: herd, URI, contract, rows, last run."""
        if cluster or server:
            found, after = [], 0
            while True:  # a page at a time
                page = ask_cluster(ctx, server, "/v1/catalog/datasets", herd=herd or None, after=after)
                found += page["datasets"]
                if not page.get("next"):
                    break
                after = page["next"]
            found.sort(key=lambda d: (d["herd"], d["uri"]))
        else:
            from runink.plugins.lineage.catalog.queries import list_datasets

            found = list_datasets(sink.engine(), herd or None)
        if as_json:
            print_json(found)
            return
        rows = [
            (d["herd"], d["uri"], d["contract"] or "", d["rows"], d["last_run"] or "", d["updated"][:19]) for d in found
        ]
        print_table(None, ("herd", "dataset", "contract", "rows", "last run", "updated"), rows)

    @catalog.command("show")
    def show_command(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., help="Its URI (runink catalog list) or its path."),
        herd: list[str] = typer.Option([], "--herd", help="Look in this herd only (repeat for more)."),
        runs: int = typer.Option(20, "--runs", min=1, max=1000, help="How many recent runs to show."),
        cluster: bool = typer.Option(False, "--cluster", help=cluster_help),
        server: str | None = typer.Option(None, "--server", help=server_help),
        as_json: bool = typer.Option(False, "--json", help="JSON for scripts."),
    ) -> None:
        """One dataset: schema, contract versions, recent runs with row counts, drift, annotations."""
        if cluster or server:
            detail = ask_cluster(
                ctx, server, "/v1/catalog/dataset", uri=as_server_sees(dataset), herd=herd or None, runs=runs
            )
        else:
            from runink.plugins.lineage.catalog.queries import dataset_detail, find_dataset

            engine = sink.engine()
            detail = dataset_detail(engine, find_dataset(engine, dataset, herd or None), runs)
        if as_json:
            print_json(detail)
            return
        _print_detail(detail)

    app.add_typer(catalog, name="catalog")

    @app.command("lineage")
    def lineage_command(
        ctx: typer.Context,
        dataset: str = typer.Argument(..., help="Its URI (runink catalog list) or its path."),
        upstream: bool = typer.Option(False, "--upstream", help="Only what it was made from."),
        downstream: bool = typer.Option(False, "--downstream", help="Only what was made from it."),
        depth: int = typer.Option(3, "--depth", min=1, max=50, help="Dataset hops to follow."),
        output: str = typer.Option("tree", "--format", help=f"One of {', '.join(FORMATS)}."),
        herd: list[str] = typer.Option([], "--herd", help="Look in this herd only (repeat for more)."),
        cluster: bool = typer.Option(False, "--cluster", help=cluster_help),
        server: str | None = typer.Option(None, "--server", help=server_help),
        as_json: bool = typer.Option(False, "--json", help="The same as --format json."),
    ) -> None:
        """The lineage graph around a dataset: the runs that wrote and read it, and their datasets."""
        from runink.plugins.lineage.catalog.queries import MAX_RUNS, LineageGraph, find_dataset, lineage

        if output not in FORMATS:
            raise typer.BadParameter(f"{output!r}: expected one of {', '.join(FORMATS)}", param_hint="--format")
        if upstream and downstream:
            raise typer.BadParameter("give --upstream or --downstream, not both (neither: both ways)")
        direction: Direction = "upstream" if upstream else "downstream" if downstream else "both"
        if cluster or server:
            where = {"uri": as_server_sees(dataset), "herd": herd or None, "direction": direction, "depth": depth}
            graph = LineageGraph.from_json(ask_cluster(ctx, server, "/v1/catalog/lineage", **where))
        else:
            engine = sink.engine()
            root = find_dataset(engine, dataset, herd or None)
            graph = lineage(engine, root, direction, depth, herd or None)
        if graph.truncated:
            console(stderr=True).print(
                f"lineage of {dataset}: over {MAX_RUNS} runs: the most recent shown (--depth smaller: fewer)",
                highlight=False,
                markup=False,
            )
        if as_json or output == "json":
            print_json(graph.to_json())
        elif output == "dot":
            print(to_dot(graph), end="")
        elif output == "svg":
            from runink.plugins.lineage.catalog.svg import to_svg

            print(to_svg(graph), end="")
        else:
            _print_tree(graph, direction)


def ask_cluster(ctx: typer.Context, server: str | None, path: str, **params: Any) -> Any:
    """A GET of the cluster's API (its address and CA found as the cluster commands find them)."""
    return _call_cluster(ctx, server, "GET", path, None, {k: v for k, v in params.items() if v is not None})


def post_cluster(ctx: typer.Context, server: str | None, path: str, body: Any) -> Any:
    """A POST of ``body`` (JSON) to the cluster's API."""
    return _call_cluster(ctx, server, "POST", path, body, {})


def _call_cluster(
    ctx: typer.Context, server: str | None, method: str, path: str, body: Any, params: dict[str, Any]
) -> Any:
    from runink.core.cli.cluster_client import ClusterClient, cluster_ca, server_addresses

    config = ctx.obj.try_config()
    configured = config.cluster.server if config is not None else None
    client = ClusterClient(server_addresses(server, configured), ca=cluster_ca(config.cluster.ca if config else None))
    try:
        return client.call(method, path, body, **params)
    finally:
        client.close()


def as_server_sees(dataset: str) -> str:
    """A dataset as a server takes it: a URI, or a path made absolute here."""
    from pathlib import Path

    return dataset if "://" in dataset else str(Path(dataset).resolve())


def to_dot(graph: LineageGraph) -> str:
    """The graph in Graphviz's language: datasets as boxes, runs as ellipses (failed ones red)."""

    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    lines = ["digraph lineage {", "  rankdir=LR;", "  node [fontname=Helvetica, fontsize=10];"]
    for number, data in sorted(graph.datasets.items()):
        label = f"{data['uri']}\nherd {data['herd']}" + (f" · {data['rows']} rows" if data["rows"] is not None else "")
        style = ", style=bold" if number == graph.root else ""
        lines.append(f"  {quoted(f'd:{number}')} [shape=box, label={quoted(label)}{style}];")
    for run_id, run in sorted(graph.runs.items()):
        label = f"{run['scenario']}\n{run['state']}" + (
            f" · {run['rows_out']} out" if run["rows_out"] is not None else ""
        )
        color = ", color=red, fontcolor=red" if run["state"] not in ("SUCCEEDED", "RUNNING") else ""
        lines.append(f"  {quoted(f'r:{run_id}')} [shape=ellipse, label={quoted(label)}{color}];")
    for start, end in sorted(graph.edges):
        lines.append(f"  {quoted(start)} -> {quoted(end)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _print_tree(graph: LineageGraph, direction: str) -> None:
    from rich.markup import escape
    from rich.tree import Tree

    def dataset_label(number: int) -> str:
        data = graph.datasets[number]
        rows = f" [dim]{data['rows']} rows[/]" if data["rows"] is not None else ""
        return f"[bold]{escape(data['uri'])}[/] [dim]({escape(data['herd'])})[/]{rows}"

    def run_label(run_id: str) -> str:
        run = graph.runs[run_id]
        color = "green" if run["state"] == "SUCCEEDED" else "yellow" if run["state"] == "RUNNING" else "red"
        counts = (
            f" in {run['rows_in']} out {run['rows_out']} invalid {run['rows_invalid']}"
            if run["rows_out"] is not None
            else ""
        )
        return f"{escape(run['scenario'])} [{color}]{run['state']}[/] [dim]{escape(run_id)}{counts}[/]"

    def grow(node: Tree, dataset: str, way: str, seen: set[str]) -> None:
        # upstream: the runs that wrote it, then what they read; downstream: the runs that read it, then what they wrote
        for run in sorted(
            a if way == "upstream" else b for a, b in graph.edges if (b if way == "upstream" else a) == dataset
        ):
            branch = node.add(run_label(run[2:]))
            for found in sorted(
                a if way == "upstream" else b for a, b in graph.edges if (b if way == "upstream" else a) == run
            ):
                if found in seen:
                    branch.add(dataset_label(int(found[2:])) + " [dim](above)[/]")
                    continue
                grow(branch.add(dataset_label(int(found[2:]))), found, way, seen | {found})

    root = f"d:{graph.root}"
    tree = Tree(dataset_label(graph.root))
    for way in ("upstream", "downstream") if direction == "both" else (direction,):
        grow(tree.add(f"[italic]{way}[/]"), root, way, {root})
    console().print(tree)


def _print_detail(detail: dict[str, Any]) -> None:
    from rich.markup import escape

    from runink.core.report import terminal_safe

    out = console()
    uri, herd, count, last = (escape(terminal_safe(str(detail[k]))) for k in ("uri", "herd", "rows", "last_run"))
    out.print(f"[bold]{uri}[/]  herd {herd}  rows {count}  last run {last}")  # (names are anyone's: never markup)
    if detail["schema"]:
        print_table("schema", ("column", "type"), detail["schema"])
    if detail["contract_versions"]:
        rows = [(v["contract"], v["hash"], v["first_seen"][:19], v["first_run"]) for v in detail["contract_versions"]]
        print_table("contract versions", ("contract", "hash", "first seen", "first run"), rows)
    if detail["runs"]:
        runs = [
            (
                r["run"],
                r["scenario"],
                r["direction"],
                r["state"],
                r["rows"],
                r["rows_in"],
                r["rows_invalid"],
                r["started"][:19],
            )
            for r in detail["runs"]
        ]
        print_table("recent runs", ("run", "scenario", "", "state", "rows", "rows in", "invalid", "started"), runs)
    if detail["drift"]:
        print_table(
            "schema drift",
            ("run", "drift", "seen"),
            [(d["run"], d["message"], d["seen"][:19]) for d in detail["drift"]],
        )
    if detail["annotations"]:
        notes = [
            (a["column"] or "", a["key"], a["value"], a["confidence"], a["model"] or a["author"] or "")
            for a in detail["annotations"]
        ]
        print_table("annotations", ("column", "key", "value", "confidence", "by"), notes)
    if detail.get("record_annotations"):
        line = f"{detail['record_annotations']} record annotations (runink annotations {detail['uri']})"
        console().print(line, highlight=False, markup=False)
