"""`runink plugins list` answers from the last full check while nothing it depended on has
changed (core/cli/plugin_index.py), and checks again when something did or when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import CliRunner, FakeDist

# a hook plugin that fails to load while a flag file exists: a change the index cannot see
FRAGILE = """
    import os
    from runink.core import hookimpl

    if os.path.exists({flag!r}):
        raise ImportError("the flag file is there")

    @hookimpl
    def runink_admit(job, identity):
        return None
"""


def rows(out: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout)}


def test_a_second_listing_loads_no_plugin_and_lists_the_same(tmp_path: Path) -> None:
    code = """
import contextlib, io, json, sys
from runink.core.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
loaded = [m for m in ("runink.core.config", "runink.core.plugins", "runink.core.drivers", "pluggy",
                      "pyarrow", "grpc", "pydantic") if m in sys.modules]
print(json.dumps({"out": out.getvalue(), "loaded": loaded}))
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "200"}

    def run(*args: str) -> dict[str, object]:
        result = subprocess.run(
            [sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    first, second = run("plugins", "list", "--json"), run("plugins", "list", "--json")
    assert {"runink.core.config", "runink.core.drivers", "pluggy"} <= set(first["loaded"])  # checked in full
    assert second["loaded"] == []
    assert second["out"] == first["out"]
    listed = {r["name"]: r for r in json.loads(str(second["out"]))}
    assert listed["linux"]["status"] == "loaded" and listed["opa"]["hooks"] == ["runink_authorize", "runink_configure"]
    table = run("plugins", "list")
    assert table["loaded"] == [] and "(status as checked at " in str(table["out"])
    refreshed = run("plugins", "list", "--json", "--refresh")
    assert "runink.core.drivers" in refreshed["loaded"] and refreshed["out"] == first["out"]


def test_what_the_listing_depends_on_changes_it_at_once(
    run_cli: CliRunner, fake_dist: FakeDist, tmp_path: Path
) -> None:
    site = tmp_path / "site"  # (fake_dist's site dir: on the import path before any package is in it)
    site.mkdir(exist_ok=True)
    assert "fragile" not in rows(run_cli("plugins", "list", "--json", pythonpath=site))  # indexed without it

    flag = tmp_path / "flag"
    fake_dist(
        "fragile",
        "1.0",
        {"runink": {"fragile": "fragile_plugin"}},
        {"fragile_plugin.py": FRAGILE.format(flag=str(flag))},
    )
    listed = rows(run_cli("plugins", "list", "--json", pythonpath=site))  # installed: a new dist in the folder
    assert listed["fragile"]["status"] == "loaded" and listed["fragile"]["hooks"] == ["runink_admit"]

    time.sleep(0.01)  # (a new mtime, whatever the filesystem's tick)
    source = (site / "fragile_plugin.py").read_text()
    (site / "fragile_plugin.py").write_text(
        source.replace("def runink_admit(job, identity)", "def runink_score_nodes(request, nodes)")
    )
    listed = rows(run_cli("plugins", "list", "--json", pythonpath=site))  # edited in place
    assert listed["fragile"]["hooks"] == ["runink_score_nodes"]

    out = run_cli("plugins", "list", "--json", pythonpath=site, env={"RUNINK_PLUGINS__DISABLE": '["fragile"]'})
    assert rows(out)["fragile"]["status"] == "disabled"
    (tmp_path / "runink.toml").write_text('[plugins]\ndisable = ["opa"]\n')
    listed = rows(run_cli("plugins", "list", "--json", pythonpath=site))
    assert listed["opa"]["status"] == "disabled" and listed["fragile"]["status"] == "loaded"

    flag.write_text("")  # nothing the index follows changed: the last check's status stands ...
    assert rows(run_cli("plugins", "list", "--json", pythonpath=site))["fragile"]["status"] == "loaded"
    out = run_cli("plugins", "list", "--json", "--refresh", pythonpath=site)  # ... until checked again
    assert rows(out)["fragile"]["status"] == "failed" and "the flag file is there" in rows(out)["fragile"]["error"]
    assert rows(run_cli("plugins", "list", "--json", pythonpath=site))["fragile"]["status"] == "failed"


def test_a_broken_index_or_an_invalid_config_is_not_answered_from_it(run_cli: CliRunner, tmp_path: Path) -> None:
    index = tmp_path / "xdg-cache" / "runink" / "plugins.json"
    expected = rows(run_cli("plugins", "list", "--json"))
    fingerprints = json.loads(index.read_text())["fingerprints"]
    details = json.loads(index.read_text())["fingerprints"]  # (its details of another type: it crashed)
    for entry in fingerprints.values():
        entry["entries"]["records"][0]["hooks"] = "not a list"
    for entry in details.values():
        entry["entries"]["records"][0]["details"] = {"unenforced": 5}
    damaged = (json.dumps({"fingerprints": fingerprints}), json.dumps({"fingerprints": details}))
    for damage in ("{not json", *damaged, "x" * (2 << 20)):
        index.write_text(damage)
        out = run_cli("plugins", "list", "--json")
        assert rows(out) == expected and "Traceback" not in out.stderr
    (tmp_path / "runink.toml").write_text("[executor]\ndriver = 3\n")
    out = run_cli("plugins", "list")
    assert out.returncode != 0 and "executor.driver" in out.stderr and "Traceback" not in out.stderr
