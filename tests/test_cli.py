"""The CLI, run for real in a subprocess: tables, JSON, one-line errors, broken plugins tolerated."""

from __future__ import annotations

import json
from pathlib import Path

from fixture_types import CliRunner, FakeDist

import runink

BROKEN = {"runink": {"broken": "broken_plugin"}}
BROKEN_MODULES = {"broken_plugin.py": "raise RuntimeError('cannot reach the license server')\n"}


def test_version(run_cli: CliRunner) -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"runink {runink.__version__}"


def test_plugins_list_table_and_json(run_cli: CliRunner) -> None:
    table = run_cli("plugins", "list")
    assert table.returncode == 0, table.stderr
    for header in ("NAME", "KIND", "PACKAGE", "VERSION", "SOURCE", "HOOKS/GROUP", "STATUS"):
        assert header in table.stdout
    assert "resource-fit" in table.stdout and "runink.executors" in table.stdout

    listed = json.loads(run_cli("plugins", "list", "--json").stdout)
    assert {row["name"] for row in listed} >= {
        "resource-fit",
        "node-labels",
        "log-export",
        "lineage-jsonl",
        "process",
        "spread",
        "binpack",
    }
    for row in listed:
        assert set(row) >= {"name", "kind", "package", "version", "source", "hooks", "group", "status", "error"}
        assert row["package"] == "runink" and row["version"] == runink.__version__
        assert row["status"] == "loaded"


def test_plugins_list_filters(run_cli: CliRunner) -> None:
    by_hook = json.loads(run_cli("plugins", "list", "--json", "--hook", "runink_filter_nodes").stdout)
    assert sorted(row["name"] for row in by_hook) == ["node-labels", "resource-fit"]
    by_group = json.loads(run_cli("plugins", "list", "--json", "--group", "runink.scheduler_policies").stdout)
    assert sorted(row["name"] for row in by_group) == [
        "binpack",
        "least-connections",
        "random",
        "round-robin",
        "spread",
        "weighted",
    ]
    bad = run_cli("plugins", "list", "--hook", "runink_nope")
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1 and "unknown hook 'runink_nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_broken_plugin_is_listed_and_every_command_works(run_cli: CliRunner, fake_dist: FakeDist) -> None:
    site = fake_dist("broken-plugin", "0.3", BROKEN, BROKEN_MODULES)
    listed = json.loads(run_cli("plugins", "list", "--json", pythonpath=site).stdout)
    broken = next(row for row in listed if row["name"] == "broken")
    assert broken["status"] == "failed"
    assert broken["error"] == "RuntimeError: cannot reach the license server"
    assert (broken["package"], broken["version"], broken["source"]) == ("broken-plugin", "0.3", "third-party")
    table = run_cli("plugins", "list", pythonpath=site)
    assert table.returncode == 0 and "failed: RuntimeError: cannot reach the license server" in table.stdout
    for args in (
        ("--version",),
        ("--help",),
        ("plugins", "hooks"),
        ("plugins", "list", "--json"),
        ("config", "show"),
        ("config", "show", "--json"),
        ("plugins", "--help"),
    ):
        out = run_cli(*args, pythonpath=site)
        assert out.returncode == 0, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_config_errors_are_one_line_and_exit_2(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "runink.toml").write_text('[executor]\ndriver = "process"\ntimeout = "soon"\n')
    for args in (("config", "show"), ("plugins", "list")):
        out = run_cli(*args)
        assert out.returncode == 2
        assert out.stderr.strip() == f"error: {tmp_path / 'runink.toml'}:3: executor.timeout: unknown key"
    assert run_cli("--version").returncode == 0  # still works with a broken config


def test_debug_shows_the_traceback(run_cli: CliRunner) -> None:
    out = run_cli("--debug", "config", "show", env={"RUNINK_HERD": "Not Valid"})
    assert out.returncode == 2
    assert "Traceback" in out.stderr and "herd" in out.stderr


def test_usage_errors(run_cli: CliRunner) -> None:
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "No such command 'frobnicate'" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_show_names_sources(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "runink.toml").write_text('herd = "finance"\n')
    shown = json.loads(run_cli("config", "show", "--json", env={"RUNINK_EXECUTOR__DRIVER": "process"}).stdout)
    assert shown["config"]["herd"] == "finance"
    assert shown["sources"] == {"herd": f"{tmp_path / 'runink.toml'}:1", "executor.driver": "$RUNINK_EXECUTOR__DRIVER"}


def test_config_show_masks_credentials_and_its_json_is_strict(run_cli: CliRunner, tmp_path: Path) -> None:
    # its output goes to terminals, tickets and CI logs: a plugin's secret_key, a URL's password
    (tmp_path / "runink.toml").write_text(
        '[plugin.storage-s3]\naccess_key = "AKIAEXAMPLE"\nsecret_key = "SUPERSECRET123"\nregion = "eu-1"\n'
        '[plugin.openlineage]\nurl = "http://admin:OLPASSWORD99@127.0.0.1:9"\nlimit = nan\n'
    )
    table = run_cli("config", "show")
    strict = run_cli("config", "show", "--json")
    for out in (table, strict):
        assert out.returncode == 0, out.stderr
        assert "SUPERSECRET123" not in out.stdout and "AKIAEXAMPLE" not in out.stdout
        assert "OLPASSWORD99" not in out.stdout and "admin:********@127.0.0.1" in out.stdout

    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    shown = json.loads(strict.stdout, parse_constant=refuse)
    assert shown["config"]["plugin"]["storage-s3"]["region"] == "eu-1"  # (what is no credential stays)
    assert shown["config"]["plugin"]["openlineage"]["limit"] == "nan"  # (JSON has no NaN)


def test_hook_runink_cli_commands(run_cli: CliRunner, fake_dist: FakeDist) -> None:
    """A plugin adds a command; a plugin whose registration raises is failed and the CLI still runs."""
    modules = {
        "hello_cmd.py": """
            from runink.core import hookimpl

            @hookimpl
            def runink_cli_commands(app):
                @app.command("hello")
                def hello(name: str = "world"):
                    '''Say hello.'''
                    print(f"hello {name}")
        """,
        "bad_cmd.py": """
            from runink.core import hookimpl

            @hookimpl
            def runink_cli_commands(app):
                @app.command("half")  # (added before it raised: not kept)
                def half():
                    print("half ran")
                raise ValueError("no app for you")
        """,
        "weird_cmd.py": """
            from runink.core import hookimpl

            class Weird:
                pass

            @hookimpl
            def runink_cli_commands(app):
                @app.command("weird")
                def weird(value: Weird):  # (typer cannot build this: every command failed)
                    print(value)
        """,
    }
    entry_points = {"hello-cmd": "hello_cmd", "bad-cmd": "bad_cmd", "weird-cmd": "weird_cmd"}
    site = fake_dist("cmds", "1.0", {"runink": entry_points}, modules)
    out = run_cli("hello", "--name", "herd", pythonpath=site)
    assert out.returncode == 0 and out.stdout.strip() == "hello herd", out.stderr
    helped = run_cli("--help", pythonpath=site)
    assert helped.returncode == 0 and "hello" in helped.stdout and "half" not in helped.stdout
    assert run_cli("half", pythonpath=site).returncode == 2  # (no such command)
    listed = {row["name"]: row for row in json.loads(run_cli("plugins", "list", "--json", pythonpath=site).stdout)}
    assert listed["bad-cmd"]["status"] == "failed"
    assert "runink_cli_commands raised ValueError: no app for you" in listed["bad-cmd"]["error"]
    assert listed["weird-cmd"]["status"] == "failed"
    assert "runink_cli_commands: its commands cannot be built: " in listed["weird-cmd"]["error"]
    assert listed["hello-cmd"]["status"] == "loaded"


def test_trace_plugins_logs_hook_calls(run_cli: CliRunner) -> None:
    out = run_cli("plugins", "list", env={"RUNINK_TRACE_PLUGINS": "1"})
    assert out.returncode == 0
    assert "call runink_configure from lineage-jsonl" in out.stderr


def test_disable_plugins_variable(run_cli: CliRunner) -> None:
    listed = json.loads(
        run_cli("plugins", "list", "--json", env={"RUNINK_DISABLE_PLUGINS": "lineage-jsonl,binpack"}).stdout
    )
    status = {row["name"]: row["status"] for row in listed}
    assert status["lineage-jsonl"] == "disabled" and status["binpack"] == "disabled"
    assert status["spread"] == "loaded"


def test_executors_say_what_they_cannot_enforce(run_cli: CliRunner) -> None:
    out = run_cli("plugins", "list", "--json")
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    process = rows["process"]["details"]
    assert process["isolation"] == "none"
    assert {"cpu", "memory", "pids", "network", "filesystem"} <= set(process["unenforced"])
    table = run_cli("plugins", "list")
    assert "executor process (none) does not enforce here: cpu, filesystem" in table.stdout


def test_a_plugin_that_prints_at_import_does_not_break_json_answers(run_cli: CliRunner, fake_dist: FakeDist) -> None:
    """Its print reached stdout before the JSON: `plugins list --json` and `plugins hooks --json`
    could not be parsed (a review's run). What a plugin prints at import goes to stderr."""
    modules = {
        "noisy.py": """
            print("NOISE-FROM-PLUGIN-IMPORT")
            from runink.core import hookimpl

            @hookimpl
            def runink_unconfigure():
                pass
        """,
    }
    site = fake_dist("noisy", "1.0", {"runink": {"noisy": "noisy"}}, modules)
    for args in (("plugins", "list", "--json", "--refresh"), ("plugins", "hooks", "--json")):
        out = run_cli(*args, pythonpath=site)
        assert out.returncode == 0, out.stderr
        json.loads(out.stdout)
        assert "NOISE-FROM-PLUGIN-IMPORT" in out.stderr


def test_a_plugin_of_another_package_cannot_take_a_built_in_plugins_name(
    run_cli: CliRunner, fake_dist: FakeDist
) -> None:
    """Listed first, a package's own "rbac" took the built-in authorizer's name, and the
    built-in was the one failed "name already used" (a review's run)."""
    modules = {
        "my_rbac.py": """
            from runink.core import hookimpl

            @hookimpl
            def runink_authorize(identity, action, resource, herd, grants):
                return None
        """,
    }
    site = fake_dist("my-rbac", "1.0", {"runink": {"rbac": "my_rbac"}}, modules)
    listed = json.loads(run_cli("plugins", "list", "--json", "--refresh", pythonpath=site).stdout)
    rows = [row for row in listed if row["name"] == "rbac"]
    assert {(r["package"], r["status"]) for r in rows} == {("runink", "loaded"), ("my-rbac", "failed")}, rows
    assert next(r for r in rows if r["package"] == "my-rbac")["error"] == "name already used by package runink"
