"""Metrics: the catalog (runink.core.metrics) is what docs/operations.md lists; the Prometheus
exporter serves it in Prometheus's format; a real Prometheus (Debian's package, which .ci/run
installs) scrapes a `runink up` cluster and answers PromQL about a pipeline run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixture_types import CliRunner
from runink_processes import up_cluster

from runink.core import metrics
from runink.core.model import MetricSample
from runink.plugins.observability import prometheus
from runink.plugins.observability.prometheus import PrometheusExporter

REPO = Path(__file__).resolve().parent.parent


def _scrape(address: tuple[str, int] | str) -> str:
    where = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
    with urllib.request.urlopen(f"http://{where}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def _value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rpartition(" ")[2])
    return None


@pytest.fixture
def exporter() -> Iterator[PrometheusExporter]:
    found = PrometheusExporter()
    found.serve("127.0.0.1", 0)
    yield found
    found.runink_unconfigure()


def test_the_exporter_serves_counters_gauges_histograms_and_state(exporter: PrometheusExporter) -> None:
    where = {"herd": "lab", "pipeline": "orders", "scenario": "Validate"}
    exporter.runink_export_metrics(
        [
            metrics.sample("runink_rows_in_total", 1000, **where),
            metrics.sample("runink_rows_in_total", 500, **where),  # a counter's samples add up
            metrics.sample("runink_scheduler_pending_tasks", 4, herd="lab"),
            metrics.sample("runink_scheduler_pending_tasks", 1, herd="lab"),  # a gauge's the last
            metrics.sample("runink_api_request_seconds", 0.004, route="/v1/jobs", method="POST"),
            MetricSample("myplugin_things_total", 2, "counter", {"kind": "a"}),  # a plugin's own
        ]
    )

    def broken() -> list[MetricSample]:
        raise RuntimeError("gone")

    dropped = metrics.sample("runink_exporter_dropped_total", 3, exporter="catalog")  # (a component's total)
    sources = [
        metrics.register_gauges(lambda: [metrics.sample("runink_barn_term", 7), dropped]),
        metrics.register_gauges(broken),
    ]
    try:
        text = _scrape(exporter.address or ("", 0))
    finally:
        for unregister in sources:
            unregister()
    labels = 'herd="lab",pipeline="orders",scenario="Validate"'
    assert _value(text, f"runink_rows_in_total{{{labels}}}") == 1500
    assert _value(text, 'runink_scheduler_pending_tasks{herd="lab"}') == 1
    assert _value(text, 'runink_api_request_seconds_bucket{le="0.005",method="POST",route="/v1/jobs"}') == 1
    assert _value(text, 'runink_api_request_seconds_bucket{le="0.0025",method="POST",route="/v1/jobs"}') == 0
    assert _value(text, 'myplugin_things_total{kind="a"}') == 2
    assert _value(text, "runink_barn_term") == 7  # read at the scrape (the broken source skipped)
    assert "# HELP runink_rows_in_total Rows a scenario read from its source." in text
    assert "_created" not in text
    assert _value(text, 'runink_exporter_dropped_total{exporter="catalog"}') == 3
    assert "# TYPE runink_exporter_dropped_total counter" in text
    kinds = re.findall(r"^# TYPE (\S+) ", text, re.M)  # one family per name (Prometheus refuses repeats)
    assert len(kinds) == len(set(kinds)), sorted(k for k in kinds if kinds.count(k) > 1)


def test_a_metric_takes_a_bounded_number_of_label_sets(
    exporter: PrometheusExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prometheus, "MAX_SERIES", 3)
    exporter.runink_export_metrics(
        [metrics.sample("runink_scheduler_placements_total", 1, herd=f"h{n}") for n in range(5)]
    )
    text = _scrape(exporter.address or ("", 0))
    assert len(re.findall(r"^runink_scheduler_placements_total\{", text, re.M)) == 3
    assert _value(text, 'runink_exporter_dropped_total{exporter="prometheus"}') == 2


def test_without_an_address_nothing_is_served_nor_imported() -> None:
    """Every command loads the plugin; only a process given --metrics pays for it."""
    code = (
        "import sys\n"
        "from runink.core.cli.state import CliState\n"
        "manager = CliState().plugins()\n"
        "assert manager.pm.get_plugin('prometheus') is not None\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_metric_is_documented_and_every_documented_one_exists() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(runink_[a-z_]+)` \|", text, re.M))
    assert documented == set(metrics.METRICS)
    for spec in metrics.METRICS.values():  # with its labels, as the catalog has them
        row = next(line for line in text.splitlines() if line.startswith(f"| `{spec.name}` |"))
        assert all(f"`{label}`" in row for label in spec.labels), row


def test_the_grafana_dashboard_asks_for_metrics_that_exist() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {re.sub(r"_(bucket|sum|count)$", "", n) for e in expressions for n in re.findall(r"runink_[a-z_]+", e)}
    assert expressions and named <= set(metrics.METRICS), named - set(metrics.METRICS)


# --- a real Prometheus ----------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.skip("no prometheus binary (Debian's `prometheus` package; .ci/run installs it)")
    return found


def _query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_prometheus_scrapes_a_cluster_and_answers_about_a_pipeline_run(
    run_cli: CliRunner, tmp_path: Path, prometheus_binary: str
) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "in.csv").write_text("id,name\n" + "".join(f"{i},n{i}\n" for i in range(100)) + "x,bad,row\n")
    (project / "p.dsl").write_text(
        "Feature: Metered\n"
        "  Scenario: Copy\n"
        '    @source("csv://in.csv")\n'
        '    @sink("csv://out.csv")\n'
        '    @sink("jsonl://dlq.jsonl", when="invalid")\n'
    )
    with up_cluster(run_cli, tmp_path, servers=1, agents=1) as up:
        targets = up.started["metrics"]
        assert set(targets) == {"s0", "s0-barn", "agent-0"}
        port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: runink\n    static_configs:\n"
            f"      - targets: {json.dumps(sorted(targets.values()))}\n"
        )
        server = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("w"),
        )
        try:
            out = run_cli("submit", str(project / "p.dsl"), "--wait", "--json", env=up.env)
            assert out.returncode == 0, out.stderr
            base = f"http://127.0.0.1:{port}"
            wanted = {
                'up{job="runink"}': lambda r: len(r) == 3 and all(x["value"][1] == "1" for x in r),
                'runink_rows_out_total{scenario="Copy",pipeline="Metered",herd="default"}': lambda r: (
                    [x["value"][1] for x in r] == ["100"]
                ),
                'runink_rows_invalid_total{scenario="Copy"}': lambda r: [x["value"][1] for x in r] == ["1"],
                'runink_scenario_runs_total{state="SUCCEEDED"}': lambda r: len(r) == 1,
                'runink_api_requests_total{route="/v1/pipelines",method="POST",status="201"}': lambda r: len(r) == 1,
                'runink_api_requests_total{route="/v1/jobs/{job_id}",method="GET"}': lambda r: len(r) >= 1,
                "sum(runink_barn_leader)": lambda r: [x["value"][1] for x in r] == ["1"],
                'runink_node_cpus{node="agent-0"}': lambda r: len(r) == 1 and float(r[0]["value"][1]) > 0,
                'runink_slices_ended_total{node="agent-0",herd="default",state="SUCCEEDED"}': lambda r: len(r) == 1,
                "runink_scheduler_placements_total": lambda r: len(r) == 1,
                "runink_barn_proposals_total": lambda r: len(r) >= 1,
            }
            deadline = time.monotonic() + 60
            missing = dict(wanted)
            while missing and time.monotonic() < deadline:
                for promql, holds in list(missing.items()):
                    try:
                        if holds(_query(base, promql)):
                            del missing[promql]
                    except OSError:  # (Prometheus still starting)
                        break
                time.sleep(0.5)
            assert not missing, f"not answered as expected: {sorted(missing)}"
            # labels stay bounded: no job, task or run id anywhere
            series = _query(base, '{__name__=~"runink_.+"}')
            assert series and not any({"job_id", "task_id", "run_id", "run"} & set(s["metric"]) for s in series)
        finally:
            server.terminate()
            server.wait(30)


def test_an_embedded_run_serves_metrics_while_it_runs(run_cli: CliRunner, tmp_path: Path) -> None:
    """`runink run --metrics-port`: its slice is seen running, and its start timed, by a scrape
    made while it runs (a step waits for the test to let it go)."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "in.csv").write_text("id\n1\n2\n")
    release = project / "release"
    (project / "steps.py").write_text(
        "import pathlib, time\n"
        "def wait(batch):\n"
        "    deadline = time.monotonic() + 30\n"
        f"    while not pathlib.Path({str(release)!r}).exists() and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    return batch\n"
    )
    (project / "p.dsl").write_text(
        'Feature: Slow\n  Scenario: Wait\n    @source("csv://in.csv")\n    @step("steps:wait")\n'
        '    @sink("csv://out.csv")\n'
    )
    port = _free_port()
    command = [sys.executable, "-m", "runink", "run", "p.dsl", "--metrics-port", str(port), "--set"]
    running = subprocess.Popen(
        [*command, "executor.driver=process"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            try:
                text = _scrape(f"127.0.0.1:{port}")
            except OSError:
                time.sleep(0.1)
                continue
            if _value(text, 'runink_slices_running{herd="default",node="local"}') == 1:
                break
            time.sleep(0.1)
        assert _value(text, 'runink_slices_running{herd="default",node="local"}') == 1, text[-2000:]
        assert (_value(text, 'runink_slice_start_seconds_count{node="local"}') or 0) >= 1
    finally:
        release.write_text("go")
        _, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert (project / "out.csv").read_text().splitlines()[1:] == ["1", "2"]


def test_a_metrics_address_that_is_not_one_is_refused_in_one_line(run_cli: CliRunner, tmp_path: Path) -> None:
    member = ["barn", "serve", "--name", "a", "--raft", "127.0.0.1:1", "--http", "127.0.0.1:2", "--plaintext"]
    for command in (
        ["agent", "--servers", "127.0.0.1:1", "--metrics", "nope"],
        [*member, "--data-dir", str(tmp_path / "barn"), "--metrics", "127.0.0.1:99999"],
    ):
        out = run_cli(*command)
        assert out.returncode == 2 and "expected HOST:PORT" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and "OverflowError" not in out.stderr


def test_only_the_serving_commands_take_the_configured_metrics_address(run_cli: CliRunner, tmp_path: Path) -> None:
    """One config file for every command: `runink jobs list` or `config show` never binds (or
    fights for) the address a server's, an agent's or a run's metrics are served on."""
    import socket

    with socket.socket() as held:  # the port is taken, as a running server would hold it
        held.bind(("127.0.0.1", 0))
        held.listen()
        config = tmp_path / "runink.toml"
        config.write_text(f'[metrics]\naddress = "127.0.0.1:{held.getsockname()[1]}"\n')
        shown = run_cli("--config", str(config), "plugins", "list", "--json")
        assert shown.returncode == 0 and "prometheus" not in shown.stderr, shown.stderr
        (listed,) = [p for p in json.loads(shown.stdout) if p["name"] == "prometheus"]
        assert listed["status"] != "failed", listed
        # a run does try (and says so); a two-row pipeline, so that the run gets as far as its plugins
        (tmp_path / "in.csv").write_text("id\n1\n2\n")
        (tmp_path / "p.dsl").write_text(
            'Feature: F\n  Scenario: S\n    @source("csv://in.csv")\n    @sink("csv://out.csv")\n'
        )
        taken = run_cli("--config", str(config), "run", "p.dsl")
        assert "plugin prometheus failed" in taken.stderr


def test_step_metrics_name_only_the_steps_a_scenario_has(tmp_path: Path) -> None:
    """A slice writes its own report: 1,000 made-up step names a run filled the node's series
    cap, and other herds' step metrics were dropped. Names the scenario does not have are
    counted under ``other``."""
    from runink.core.agent.scenarios import PipelineRun, ScenarioRun, _scenario_samples
    from runink.core.config import RuninkConfig
    from runink.core.interfaces.executor import TaskState
    from runink.core.pipeline.compile import compile_pipeline
    from runink.core.pipeline.dsl import parse_file

    (tmp_path / "in.csv").write_text("id\n1\n")
    (tmp_path / "steps.py").write_text("def keep(batch):\n    return batch\n")
    dsl = 'Feature: p\n  Scenario: s\n    @source("in.csv")\n    @step("steps:keep")\n    @sink("out/s.csv")\n'
    (tmp_path / "p.dsl").write_text(dsl)
    compiled = compile_pipeline(parse_file(tmp_path / "p.dsl"), config=RuninkConfig(data_dir=tmp_path / "data"))
    item = compiled.scenarios[0]
    forged = {f"made-up-{n}": 1 for n in range(1000)}
    run = ScenarioRun(item.name, steps={"steps:keep": 5, **forged})
    pipeline_run = PipelineRun(compiled, "r1", "lab", tmp_path / "work", (tmp_path,), {item.name: run})
    samples = _scenario_samples(pipeline_run, item, run, TaskState.SUCCEEDED)
    steps = {s.labels["step"]: s.value for s in samples if s.name == "runink_step_rows_total"}
    assert steps == {"steps:keep": 5, "other": 1000}
