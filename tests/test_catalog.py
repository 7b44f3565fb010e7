"""The lineage catalog: fed by runs with no user code, read by `runink catalog` and `runink
lineage`; its schema made and changed only by alembic migrations, on SQLite and on a real
PostgreSQL (Debian's, started here as the postgres user)."""

from __future__ import annotations

import getpass
import json
import subprocess
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import pytest
from fixture_types import CliRunner
from sqlalchemy import text

from runink.core.model import LineageEvent
from runink.plugins.lineage.catalog.models import CatalogTable
from runink.plugins.lineage.catalog.queries import CatalogError, find_dataset, lineage, list_datasets
from runink.plugins.lineage.catalog.store import MIGRATIONS, engine_for, migrate
from runink.plugins.lineage.catalog.writer import HEAD_REVISION, CatalogWriter
from runink.testing.postgres import PostgresUnavailable, temporary_postgres

REPO = Path(__file__).resolve().parent.parent
SVG = "{http://www.w3.org/2000/svg}"


def _json(out: subprocess.CompletedProcess[str]) -> object:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_run_fills_the_catalog_and_the_cli_reads_it(run_cli: CliRunner, orders: Path) -> None:
    for _ in range(2):
        assert run_cli("run", "orders.dsl", cwd=orders).returncode == 0
    datasets = _json(run_cli("catalog", "list", "--json", cwd=orders))
    assert isinstance(datasets, list)
    by_path = {d["uri"].partition("://")[2].removeprefix(str(orders) + "/"): d for d in datasets}
    assert sorted(by_path) == [
        "data/orders.csv",
        "out/dlq/orders.jsonl",
        "out/gold/large_orders.csv",
        "out/silver/orders.parquet",
    ]
    assert {d["herd"] for d in datasets} == {"finance"}
    assert by_path["out/silver/orders.parquet"]["rows"] == 980 and by_path["out/dlq/orders.jsonl"]["rows"] == 20
    assert by_path["data/orders.csv"]["rows"] == 1000 and by_path["data/orders.csv"]["contract"] == "Order"

    shown = _json(run_cli("catalog", "show", "out/silver/orders.parquet", "--json", cwd=orders))
    assert isinstance(shown, dict)
    assert ("amount_eur", "decimal128(14, 2)") in [tuple(c) for c in shown["schema"]]  # money: exact
    assert [(r["scenario"], r["direction"], r["state"], r["rows"]) for r in shown["runs"]] == [
        ("Large orders", "read", "SUCCEEDED", 980),
        ("Validate orders", "wrote", "SUCCEEDED", 980),
    ] * 2  # two runs, newest first
    source = _json(run_cli("catalog", "show", "data/orders.csv", "--json", cwd=orders))
    assert isinstance(source, dict) and [v["contract"] for v in source["contract_versions"]] == ["Order"]

    graph = _json(run_cli("lineage", "out/gold/large_orders.csv", "--upstream", "--depth", "5", "--json", cwd=orders))
    assert isinstance(graph, dict)
    names = {d["id"]: d["uri"].rpartition("/")[2] for d in graph["datasets"]}
    runs = {r["id"]: r["scenario"] for r in graph["runs"]}
    edges = {(names.get(e["from"]) or runs[e["from"]], names.get(e["to"]) or runs[e["to"]]) for e in graph["edges"]}
    assert edges == {
        ("orders.csv", "Validate orders"),
        ("Validate orders", "orders.parquet"),
        ("orders.parquet", "Large orders"),
        ("Large orders", "large_orders.csv"),
    }
    assert len(graph["runs"]) == 4  # both runs of both scenarios
    one_hop = _json(run_cli("lineage", "out/gold/large_orders.csv", "--upstream", "--depth", "1", "--json", cwd=orders))
    assert isinstance(one_hop, dict) and sorted(d["uri"].rpartition("/")[2] for d in one_hop["datasets"]) == [
        "large_orders.csv",
        "orders.parquet",
    ]
    tree = run_cli("lineage", "data/orders.csv", "--downstream", cwd=orders)
    assert tree.returncode == 0 and "Validate orders" in tree.stdout and "large_orders.csv" in tree.stdout
    dot = run_cli("lineage", "data/orders.csv", "--format", "dot", cwd=orders)
    assert (
        dot.returncode == 0 and dot.stdout.startswith("digraph lineage {") and dot.stdout.count("->") == 10
    )  # 2 runs x (3 edges of Validate, 2 of Large)


def test_a_person_annotates_a_dataset_its_columns_and_records(run_cli: CliRunner, orders: Path) -> None:
    assert run_cli("run", "orders.dsl", cwd=orders).returncode == 0
    out = "out/silver/orders.parquet"
    for where in ([], ["--column", "amount_eur"], ["--record", "7"]):
        noted = run_cli("annotate", out, "--note", "owner=finance team", "--note", "checked=yes", *where, cwd=orders)
        assert noted.returncode == 0, noted.stderr
    page = _json(run_cli("annotations", out, "--json", cwd=orders))
    assert isinstance(page, dict) and page["next"] is None
    assert [(n["target"], n["key"], n["value"], n["model"]) for n in page["annotations"]] == [
        (target, key, value, None)
        for target in ("dataset", "column:amount_eur", "record:7")
        for key, value in (("owner", "finance team"), ("checked", "yes"))
    ]
    assert {n["author"] for n in page["annotations"]} == {getpass.getuser()}  # who ran the command
    one = _json(run_cli("annotations", out, "--record", "7", "--limit", "1", "--json", cwd=orders))
    assert isinstance(one, dict) and [n["key"] for n in one["annotations"]] == ["owner"] and one["next"]
    shown = _json(run_cli("catalog", "show", out, "--json", cwd=orders))
    assert isinstance(shown, dict) and len(shown["annotations"]) == 4 and shown["record_annotations"] == 2
    for args, why in (
        (["--note", "owner"], "--note 'owner': expected KEY=VALUE"),
        (["--column", "x"], "--column and --record name what a --note is about"),
        (["--note", "a=b", "--column", "x", "--record", "1"], "give one"),
    ):
        bad = run_cli("annotate", out, *args, cwd=orders)
        assert bad.returncode != 0 and why in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_queries_answer_only_with_the_herds_asked_for(run_cli: CliRunner, orders: Path) -> None:
    assert run_cli("run", "orders.dsl", cwd=orders).returncode == 0
    assert _json(run_cli("catalog", "list", "--herd", "other", "--json", cwd=orders)) == []
    refused = run_cli("lineage", "out/silver/orders.parquet", "--herd", "other", cwd=orders)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "dataset 'out/silver/orders.parquet': not in the catalog" in refused.stderr
    bad = run_cli("lineage", "out/silver/orders.parquet", "--format", "png", cwd=orders)
    assert bad.returncode == 2 and "'png': expected one of tree, json, dot, svg" in bad.stderr


def test_failed_runs_and_drift_are_recorded(run_cli: CliRunner, tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    contract = "from runink.core.contracts import Contract, Field\n\nclass Row(Contract):\n    id: int = Field(ge=0)\n"
    (project / "contracts.py").write_text(contract + "    name: str\n")
    (project / "steps.py").write_text("def boom(batch):\n    raise ValueError('cursed')\n")
    (project / "in.csv").write_text("id,name,extra\n1,a,x\n")
    dsl = """
        Feature: p
          Scenario: a
            @source("in.csv", contract="contracts:Row")
            @sink("out/a.csv")
          Scenario: b
            @source("out/a.csv")
            @step("steps:boom")
            @sink("out/b.csv")
    """
    (project / "p.dsl").write_text(textwrap.dedent(dsl))
    out = run_cli("run", "p.dsl", cwd=project)
    assert out.returncode == 1
    source = _json(run_cli("catalog", "show", "in.csv", "--json", cwd=project))
    assert isinstance(source, dict) and [d["message"] for d in source["drift"]] == [
        "column 'extra' is not in the contract"
    ]
    failed = _json(run_cli("catalog", "show", "out/b.csv", "--json", cwd=project))
    assert isinstance(failed, dict) and failed["rows"] is None  # never written
    (run,) = failed["runs"]
    assert run["state"] == "FAILED" and "cursed" in run["error"]
    dot = run_cli("lineage", "out/a.csv", "--format", "dot", cwd=project).stdout
    assert "color=red" in dot  # the failed run stands out
    svg = ElementTree.fromstring(run_cli("lineage", "out/a.csv", "--format", "svg", cwd=project).stdout)
    nodes = {g.get("id"): g for g in svg.iter(f"{SVG}g") if "node" in (g.get("class") or "")}
    states = {n.get("data-state") for n in nodes.values() if "run" in (n.get("class") or "")}
    assert states == {"SUCCEEDED", "FAILED"} and len(nodes) == 5  # in.csv -> a -> a.csv -> b -> b.csv
    failed = next(n for n in nodes.values() if n.get("data-state") == "FAILED")
    assert failed.find(f".//{SVG}rect").get("stroke") == "#c62828"  # drawn red
    edges = [(e.get("data-from"), e.get("data-to")) for e in svg.iter(f"{SVG}path") if e.get("class") == "edge"]
    assert len(edges) == 4 and all(a in nodes and b in nodes for a, b in edges)


def test_pii_marks_of_a_dataset_add_up_over_the_contracts_that_read_it(run_cli: CliRunner, tmp_path: Path) -> None:
    """Two contracts read one file, each marking another column pii: the second run once
    replaced the first's marks, and `runink annotate` then sent that column to the model."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "people.csv").write_text("id,email,phone\n1,alice@example.com,+33123456789\n")
    header = "from runink.core.contracts import Contract, Field\n\n"
    (project / "contracts.py").write_text(
        header
        + "class ByEmail(Contract):\n    id: int\n    email: str = Field(pii=True)\n    phone: str\n\n"
        + "class ByPhone(Contract):\n    id: int\n    email: str\n    phone: str = Field(pii=True)\n"
    )
    for name, contract in (("a", "ByEmail"), ("b", "ByPhone")):
        dsl = f"""
            Feature: {name}
              Scenario: read {name}
                @source("people.csv", contract="contracts:{contract}")
                @sink("out/{name}.csv")
        """
        (project / f"{name}.dsl").write_text(textwrap.dedent(dsl))
        assert run_cli("run", f"{name}.dsl", cwd=project).returncode == 0
    shown = _json(run_cli("catalog", "show", "people.csv", "--json", cwd=project))
    assert isinstance(shown, dict) and shown["pii"] == ["email", "phone"]
    # and on what each run wrote: `runink annotate` of an output sent its pii columns unmasked
    written = _json(run_cli("catalog", "show", "out/a.csv", "--json", cwd=project))
    assert isinstance(written, dict) and written["pii"] == ["email"]


def test_a_dataset_name_with_markup_is_shown_as_it_is(run_cli: CliRunner, tmp_path: Path) -> None:
    """Anyone who names a dataset chooses its characters: `[/]` in one made `catalog show`
    crash for the whole herd (rich markup)."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "in.csv").write_text("id\n1\n")
    dsl = """
        Feature: p
          Scenario: odd name
            @source("in.csv")
            @sink("out/x[/]y[bold].csv")
    """
    (project / "p.dsl").write_text(textwrap.dedent(dsl))
    assert run_cli("run", "p.dsl", cwd=project).returncode == 0
    shown = run_cli("catalog", "show", "out/x[/]y[bold].csv", cwd=project)
    assert shown.returncode == 0, shown.stderr
    assert "x[/]y[bold].csv" in shown.stdout


def test_a_disabled_catalog_records_nothing(run_cli: CliRunner, orders: Path, data_home: Path) -> None:
    (orders / "runink.toml").write_text("[plugin.catalog]\nenabled = false\n")
    assert run_cli("run", "orders.dsl", cwd=orders).returncode == 0
    assert not (data_home / "catalog.db").exists()
    (orders / "runink.toml").write_text('[plugin.catalog]\nurl = "catalog.db"\n')
    out = run_cli("catalog", "list", cwd=orders)
    assert "[plugin.catalog] url: expected a database URL" in out.stderr and "Traceback" not in out.stderr


# --- migrations ------------------------------------------------------------------------------


def _revisions() -> list[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return [s.revision for s in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]


def _model_drift(url: str) -> list[object]:
    """What alembic's autogenerate would change to make the database match the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = engine_for(url)
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), CatalogTable.metadata))


def _check_migrations(url: str) -> None:
    engine = engine_for(url)
    migrate(engine)  # from an empty database
    assert _model_drift(url) == []  # the migrations make exactly the tables the models describe
    migrate(engine)  # at the newest already: nothing to do
    revisions = _revisions()
    assert revisions[0] == "0001" and revisions[-1] == HEAD_REVISION  # (migrate skips alembic at HEAD_REVISION)
    # from each version to the next, holding data: a dataset written at the first is still
    # there, whole, at the newest (its new columns empty), and today's writer works on it
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
    migrate(engine, revisions[0])
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO datasets (herd, uri, rows, updated) VALUES ('h', 'csv:///old.csv', 7, '2026-01-01')")
        )
    for revision in revisions[1:]:
        migrate(engine, revision)
        with engine.connect() as connection:  # (plain SQL: the models describe the newest tables)
            assert connection.execute(text("SELECT uri, rows FROM datasets")).all() == [("csv:///old.csv", 7)]
    (old,) = list_datasets(engine, None)
    assert (old["uri"], old["rows"]) == ("csv:///old.csv", 7)
    _feed(url, "run-now")
    assert len(list_datasets(engine, None)) == 3  # and the newest writes beside it
    engine.dispose()


def _feed(url: str, run: str) -> None:
    start = LineageEvent("START", f"{run}/a", "a", "h", ("csv:///in.csv",), (f"parquet:///{run}.parquet",))
    end = LineageEvent(
        "COMPLETE", f"{run}/a", "a", "h", ("csv:///in.csv",), (f"parquet:///{run}.parquet",), facets={"rows_out": 3}
    )
    writer = CatalogWriter(url)
    writer.record(start)
    writer.record(end)
    writer.close()


def test_migrations_on_sqlite(tmp_path: Path) -> None:
    _check_migrations(f"sqlite:///{tmp_path / 'catalog.db'}")


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own (Debian's postgresql package, which .ci/run installs)."""
    try:
        with temporary_postgres() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def test_migrations_on_postgresql(postgres: str) -> None:
    _check_migrations(postgres)


def test_a_lineage_query_on_postgresql(postgres: str) -> None:
    """A chain of 6 runs over 7 datasets, in two herds; depth and herds are honoured."""
    engine = engine_for(postgres)
    migrate(engine)
    writer = CatalogWriter(postgres)
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for number in range(6):
        herd = "a" if number < 3 else "b"
        event = LineageEvent(
            "COMPLETE", f"chain/s{number}", f"s{number}", herd, (f"csv:///d{number}",), (f"csv:///d{number + 1}",),
            event_time=moment + timedelta(seconds=number), facets={"rows_out": number},
        )  # fmt: skip
        writer.record(event)
    writer.close()
    root = find_dataset(engine, "csv:///d3", ["a"])
    graph = lineage(engine, root, "upstream", 5, ["a"])
    assert sorted(d["uri"] for d in graph.datasets.values()) == ["csv:///d0", "csv:///d1", "csv:///d2", "csv:///d3"]
    graph = lineage(engine, root, "upstream", 2, ["a"])
    assert sorted(d["uri"] for d in graph.datasets.values()) == ["csv:///d1", "csv:///d2", "csv:///d3"]
    with pytest.raises(CatalogError, match="not in the catalog"):
        find_dataset(engine, "csv:///d5", ["a"])  # herd b's
    engine.dispose()


def test_a_lineage_graph_is_bounded_to_its_most_recent_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runink.plugins.lineage.catalog import queries

    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = engine_for(url)
    migrate(engine)
    writer = CatalogWriter(url)
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for number in range(5):  # five daily runs writing the same dataset
        day = moment + timedelta(days=number)
        event = LineageEvent(
            "COMPLETE", f"day-{number}/s", "s", "h", ("csv:///in.csv",), ("csv:///out.csv",),
            event_time=day, facets={"started": day.timestamp()},
        )  # fmt: skip
        writer.record(event)
    writer.close()
    root = find_dataset(engine, "csv:///out.csv", None)
    assert not lineage(engine, root, "both", 5, None).truncated
    monkeypatch.setattr(queries, "MAX_RUNS", 3)
    graph = lineage(engine, root, "both", 5, None)
    assert graph.truncated and sorted(graph.runs) == ["day-2/s", "day-3/s", "day-4/s"]  # the most recent
    assert all(a[2:] in graph.runs or b[2:] in graph.runs for a, b in graph.edges)
    assert graph.to_json()["truncated"] is True
    engine.dispose()


def test_record_annotations_are_upserted_as_they_come_and_go_with_a_failed_run(tmp_path: Path) -> None:
    _check_record_annotations(f"sqlite:///{tmp_path / 'catalog.db'}")


def test_record_annotations_on_postgresql(postgres: str) -> None:
    _check_record_annotations(postgres)


def _check_record_annotations(url: str) -> None:
    """OTHER events carry record annotations while a scenario runs: each record's keys are
    stored once however often a chunk comes (a resend, a retried attempt), on the valid output
    only; a run that fails takes its records' annotations with it (its output was not
    published), and its end recorded again keeps what COMPLETE kept."""
    from runink.plugins.lineage.catalog.annotations import list_annotations

    engine = engine_for(url)
    migrate(engine)
    writer = CatalogWriter(url)
    outputs = ("parquet:///out.parquet", "jsonl:///dlq.jsonl")
    facets = {"invalid_outputs": ["jsonl:///dlq.jsonl"]}

    def event(kind: str, run: str, **more: object) -> LineageEvent:
        return LineageEvent(kind, run, "s", "h", ("csv:///in.csv",), outputs, facets={**facets, **more})  # type: ignore[arg-type]

    def chunk(first: int, value: str) -> dict[str, object]:
        records = [{"record": str(n), "failed": False, "fields": {"summary": f"{value}{n}"}} for n in range(first, 5)]
        records.append({"record": "9", "failed": True, "error": "parse", "raw": "not json"})
        if value == "a":  # the first attempt failed on record 4 ...
            records[-2] = {"record": "4", "failed": True, "error": "request", "raw": ""}
        else:  # ... and record 9 parsed the second time
            records[-1] = {"record": "9", "failed": False, "fields": {"summary": "b9"}}
        return {"model": "m", "prompt_path": "p.txt", "prompt_hash": "h", "records": records}

    summary = [{"model": "m", "records": 6, "failed": 1, "tokens": 10, "requests": 1, "cost": 0.5}]
    for run in ("good/s", "bad/s"):
        writer.record(event("START", run))
        writer.record(event("OTHER", run, record_annotations=chunk(0, "a")))
        writer.record(event("OTHER", run, record_annotations=chunk(0, "a")))  # delivered twice
        writer.record(event("OTHER", run, record_annotations=chunk(2, "b")))  # records 2-4 and 9 again
    writer.record(event("COMPLETE", "good/s", annotations=summary))
    writer.record(event("COMPLETE", "good/s", annotations=summary))  # recorded again
    writer.record(event("FAIL", "bad/s", annotations=summary))
    writer.close()
    notes = list_annotations(engine, find_dataset(engine, "parquet:///out.parquet", None))
    assert {n["run"] for n in notes} == {"good/s"}
    values = sorted((n["target"], n["key"], n["value"]) for n in notes)
    assert values == [
        ("dataset", "annotated", "6 records, 1 failed; 10 tokens, 1 requests, cost 0.5"),
        ("record:0", "summary", "a0"),
        ("record:1", "summary", "a1"),
        ("record:2", "summary", "b2"),
        ("record:3", "summary", "b3"),
        ("record:4", "summary", "b4"),
        ("record:9", "summary", "b9"),
    ]
    assert not list_annotations(engine, find_dataset(engine, "jsonl:///dlq.jsonl", None))
    engine.dispose()


def test_a_step_run_with_one_count_unknown_is_drawn_with_a_question_mark() -> None:
    # an event may carry rows_out and no rows_in (the catalog keeps NULL): the SVG answered 500
    from runink.plugins.lineage.catalog.queries import LineageGraph
    from runink.plugins.lineage.catalog.svg import to_svg

    graph = LineageGraph(
        root=1,
        datasets={1: {"uri": "csv:///team/out.csv", "herd": "team", "rows": None}},
        runs={"7": {"scenario": "s", "state": "SUCCEEDED", "rows_in": None, "rows_out": 5}},
        edges={("r:7", "d:1")},
    )
    drawn = ElementTree.fromstring(to_svg(graph))
    assert "in ? out 5" in "".join(drawn.itertext())
