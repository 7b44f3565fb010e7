"""The lineage page in a real browser: Debian's chromium driven by playwright against a real
`runink server` whose catalog a real `runink run` filled. The graph's nodes and edges are
there, a run opens its page, a dataset its own graph, the graph pans, and without a token the
page asks for one (the data comes from the API, as RBAC allows)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from barn_cluster import free_ports
from fixture_types import CliRunner
from runink_processes import cluster_auth, ready, start_runink

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")


@pytest.fixture
def served(tmp_path: Path, run_cli: CliRunner, orders: Path) -> Iterator[dict[str, Any]]:
    """examples/orders run once into a data folder, and a server reading that catalog."""
    data = tmp_path / "data"
    assert run_cli("run", "orders.dsl", cwd=orders, env={"RUNINK_DATA_DIR": str(data)}).returncode == 0
    api, grpc = free_ports(2)
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "RUNINK_DATA_DIR": str(data)}
    server = start_runink(
        ["server", "--api", f"127.0.0.1:{api}", "--agents", f"127.0.0.1:{grpc}", *cluster_auth(tmp_path, env)],
        tmp_path / "s.log",
        env,
    )
    try:
        ready(server, tmp_path / "s.log")
        # the catalog answers with the herds the caller may read: the pipeline's herd must exist
        assert run_cli("herd", "create", "finance", env={**env, "RUNINK_SERVER": f"127.0.0.1:{api}"}).returncode == 0
        yield {"base": f"http://127.0.0.1:{api}", "token": env["RUNINK_TOKEN"], "orders": orders}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        # --no-sandbox: chromium's own sandbox refuses to run as root (the tests run as root)
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _ready(page: Any) -> str:
    page.wait_for_selector("body[data-ready]", timeout=15_000)
    return str(page.get_attribute("body", "data-ready"))


def test_the_lineage_page_shows_the_graph_and_clicks_through_to_runs(served: dict[str, Any], browser: Any) -> None:
    context = browser.new_context(viewport={"width": 700, "height": 700})
    context.add_init_script(f"sessionStorage.setItem('runink-token', {json.dumps(served['token'])})")
    page = context.new_page()
    silver = served["orders"] / "out" / "silver" / "orders.parquet"
    page.goto(served["base"] + "/ui/lineage" + str(silver))
    assert _ready(page) == "yes", page.inner_text("#status")
    nodes = page.eval_on_selector_all("g.node", "gs => gs.map(g => [g.id, g.getAttribute('class'), g.textContent])")
    assert len(nodes) == 5  # orders.csv -> Validate orders -> orders.parquet -> Large orders -> large_orders.csv
    assert sum("run" in kind for _, kind, _ in nodes) == 2
    edges = page.eval_on_selector_all("path.edge", "es => es.map(e => [e.dataset.from, e.dataset.to])")
    ids = {node for node, _, _ in nodes}
    assert len(edges) == 4 and all(a in ids and b in ids for a, b in edges)
    assert "amount_eur" in page.inner_text("main")  # the dataset's schema below the graph
    # the graph pans when dragged
    box = page.locator("#graph").bounding_box()
    below = box["y"] + box["height"] - 8  # (the margin under the nodes: a node is a link)
    page.mouse.move(box["x"] + 600, below)
    page.mouse.down()
    page.mouse.move(box["x"] + 100, below, steps=5)
    page.mouse.up()
    assert page.eval_on_selector("#graph", "g => g.scrollLeft") > 0
    # a run opens its page: what it did, and what it read and wrote
    page.locator("g.node.run", has_text="Validate orders").click()
    assert _ready(page) == "yes", page.inner_text("#status")
    assert "/ui/runs/" in page.url
    text = page.inner_text("main")
    assert "Validate orders" in text and "SUCCEEDED" in text and "980" in text and "1000" in text
    # ... and a dataset it wrote opens that dataset's graph
    page.get_by_role("link", name=f"jsonl://{served['orders']}/out/dlq/orders.jsonl").click()
    assert _ready(page) == "yes", page.inner_text("#status")
    assert "dlq/orders.jsonl" in page.inner_text("#title")
    context.close()


def test_without_a_token_the_page_asks_for_one(served: dict[str, Any], browser: Any) -> None:
    page = browser.new_page()
    page.goto(served["base"] + "/ui/lineage" + str(served["orders"] / "data" / "orders.csv"))
    assert _ready(page) == "error" and page.inner_text("#status") == "sign in first"
    assert page.locator("g.node").count() == 0  # no data without a token
    page.fill("#token", served["token"])
    page.click("#login button")
    assert _ready(page) == "yes" and page.locator("g.node").count() == 6  # orders.csv -> Validate -> 2 outputs ...
    assert page.locator("g.node.run").count() == 2  # ... and on to Large orders and its output
    page.close()
