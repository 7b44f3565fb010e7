"""A lineage graph drawn as SVG, for a person to look at: datasets (boxes: URI, herd, rows) and
step runs (rounded: scenario, state, rows in/out; failed ones red), left to right from what a
dataset was made from to what was made from it.

The layout is layered: a node's column is its distance from the root in hops (runs between
datasets), negative upstream, positive downstream; within a column nodes are ordered by name.
Lineage graphs are DAGs drawn around one dataset, which makes this enough (no crossing
minimisation). Every node is a link (``href_of``): the page of a run or a dataset.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from xml.sax.saxutils import escape, quoteattr

from runink.plugins.lineage.catalog.queries import LineageGraph

WIDTH, HEIGHT = 260, 58  # one node's box
COLUMN_GAP, ROW_GAP, MARGIN = 70, 22, 20
FAILED = "#c62828"
GREEN = "#2e7d32"


def columns(graph: LineageGraph) -> dict[str, int]:
    """Each node's column: its signed distance (in edges) from the root dataset."""
    root = f"d:{graph.root}"
    forward: dict[str, list[str]] = {}
    backward: dict[str, list[str]] = {}
    for start, end in graph.edges:
        forward.setdefault(start, []).append(end)
        backward.setdefault(end, []).append(start)
    placed = {root: 0}
    for links, sign in ((backward, -1), (forward, 1)):
        queue = deque([root])
        while queue:
            node = queue.popleft()
            for nxt in links.get(node, ()):
                if nxt not in placed:
                    placed[nxt] = placed[node] + sign
                    queue.append(nxt)
    return placed


def to_svg(graph: LineageGraph, href_of: Callable[[str], str | None] = lambda node: None) -> str:
    """The graph as a standalone SVG document."""
    placed = columns(graph)
    by_column: dict[int, list[str]] = {}
    for node, column in placed.items():
        by_column.setdefault(column, []).append(node)
    first = min(by_column)
    where: dict[str, tuple[int, int]] = {}
    for column, nodes in by_column.items():
        for row, node in enumerate(sorted(nodes, key=lambda n: (_label(graph, n)[0], n))):
            where[node] = (MARGIN + (column - first) * (WIDTH + COLUMN_GAP), MARGIN + row * (HEIGHT + ROW_GAP))
    width = MARGIN * 2 + len(by_column) * (WIDTH + COLUMN_GAP) - COLUMN_GAP
    height = MARGIN * 2 + max(len(n) for n in by_column.values()) * (HEIGHT + ROW_GAP) - ROW_GAP
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="runink-lineage" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#777"/></marker></defs>',
    ]
    for start, end in sorted(graph.edges):
        if start not in where or end not in where:
            continue
        (x1, y1), (x2, y2) = where[start], where[end]
        x1, y1, y2 = x1 + WIDTH, y1 + HEIGHT // 2, y2 + HEIGHT // 2  # from the right side to the left
        bend = COLUMN_GAP // 2
        out.append(
            f'<path class="edge" data-from={quoteattr(start)} data-to={quoteattr(end)} fill="none" stroke="#777" '
            f'marker-end="url(#arrow)" d="M {x1} {y1} C {x1 + bend} {y1}, {x2 - bend} {y2}, {x2} {y2}"/>'
        )
    for node in sorted(where):
        out.append(_node(graph, node, where[node], node == f"d:{graph.root}", href_of(node)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _label(graph: LineageGraph, node: str) -> tuple[str, str, str | None]:
    """(title, detail, colour) of a node."""
    if node.startswith("d:"):
        data = graph.datasets[int(node[2:])]
        rows = "" if data["rows"] is None else f" · {data['rows']:,} rows"
        return data["uri"], f"herd {data['herd']}{rows}", None
    run = graph.runs[node[2:]]
    rows_in, rows_out = (_count(run[k]) for k in ("rows_in", "rows_out"))
    counts = "" if run["rows_in"] is None and run["rows_out"] is None else f" · in {rows_in} out {rows_out}"
    colour = GREEN if run["state"] == "SUCCEEDED" else None if run["state"] == "RUNNING" else FAILED
    return run["scenario"], f"{run['state']}{counts}", colour


def _count(rows: int | None) -> str:
    return "?" if rows is None else f"{rows:,}"  # (one count may be unknown: an event without it)


def _node(graph: LineageGraph, node: str, at: tuple[int, int], root: bool, href: str | None) -> str:
    title, detail, colour = _label(graph, node)
    x, y = at
    kind = "dataset" if node.startswith("d:") else "run"
    stroke = colour or "#455a64"
    shape = (
        f'<rect x="{x}" y="{y}" width="{WIDTH}" height="{HEIGHT}" rx="{4 if kind == "dataset" else 18}" '
        f'fill="{"#eceff1" if kind == "dataset" else "#ffffff"}" stroke="{stroke}" '
        f'stroke-width="{3 if root else 1.5}"/>'
    )
    fits = (WIDTH - 20) // 7  # characters of the bold title that fit its box
    shown = title if len(title) <= fits else "…" + title[-(fits - 1) :]
    text = (
        f'<text x="{x + 10}" y="{y + 22}" font-weight="bold" fill="{colour or "#212121"}">{escape(shown)}</text>'
        f'<text x="{x + 10}" y="{y + 42}" fill="#546e7a">{escape(detail)}</text>'
    )
    tooltip = f"<title>{escape(title)}: {escape(detail)}</title>"
    state = f" data-state={quoteattr(graph.runs[node[2:]]['state'])}" if kind == "run" else ""
    group = f'<g class="node {kind}" id={quoteattr(node)}{state}>'
    body = f"{tooltip}{shape}{text}"
    if href:
        body = f"<a href={quoteattr(href)}>{body}</a>"
    return f"{group}{body}</g>"
