"""The CLI's command index: `runink --help` lists every command without building them, and
the listing follows what is installed, configured and edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import CliRunner, FakeDist

HELLO = """
    from runink.core import hookimpl

    @hookimpl
    def runink_cli_commands(app):
        @app.command("hello")
        def hello(name: str = "world"):
            '''{doc}'''
            print(f"hello {{name}}")
"""


def commands_listed(help_text: str) -> dict[str, str]:
    """``runink --help``'s Commands section: name -> short help."""
    section = help_text.split("Commands:\n", 1)[1]
    return {line.split()[0]: " ".join(line.split()[1:]) for line in section.splitlines() if line.startswith("  ")}


def test_a_second_help_imports_no_command_module_and_lists_the_same(tmp_path: Path) -> None:
    """The first `--help` builds every command and writes the index; the next one lists from it
    alone: no command module, no config, no plugin manager, no rich."""
    code = """
import contextlib, io, json, sys
from runink.core.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(["--help"])
    except SystemExit:
        pass
loaded = [m for m in ("runink.core.cli.jobs_cmd", "runink.core.cli.run_cmd", "runink.core.config",
                      "runink.core.plugins", "pluggy", "rich", "pydantic") if m in sys.modules]
print(json.dumps({"help": out.getvalue(), "loaded": loaded}))
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "COLUMNS": "200"}

    def run() -> dict[str, object]:
        result = subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    first, second = run(), run()
    assert "runink.core.cli.jobs_cmd" in first["loaded"]  # (built in full: no index yet)
    assert (tmp_path / "cache" / "runink" / "commands.json").is_file()
    assert second["loaded"] == []
    assert second["help"] == first["help"]
    listed = commands_listed(str(second["help"]))
    assert {"run", "exec", "jobs", "plugins", "barn", "catalog"} <= set(listed)  # built-in and plugins'
    assert listed["herd"] == "Herds: tenants with quotas."


def test_the_index_lists_what_the_built_commands_say() -> None:
    """Each entry's short help, at any width, is the one of the command it stands for."""
    code = """
import json
from runink.core.cli.app import build_app
from runink.core.cli.state import CliState
state = CliState.from_argv([])
group = build_app(state)
entries, _ = group.build_all(state)  # (twice: the same)
with group.listing():
    rows = [[e.name, group.get_command(None, e.name).get_short_help_str(w),
             group.commands[e.name].get_short_help_str(w)] for e in entries for w in (30, 45, 200)]
print(json.dumps(rows))
"""
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r[0] for r in rows} >= {"run", "jobs", "barn", "catalog", "annotate"} and len(rows) >= 3 * 30
    assert [r[1] for r in rows] == [r[2] for r in rows]


def test_a_plugin_installed_edited_or_disabled_after_the_index_changes_the_listing(
    run_cli: CliRunner, fake_dist: FakeDist, tmp_path: Path
) -> None:
    site = tmp_path / "site"  # (fake_dist's site dir: on the import path before any package is in it)
    site.mkdir(exist_ok=True)
    assert "hello" not in commands_listed(run_cli("--help", pythonpath=site).stdout)  # indexed without it

    fake_dist("cmds", "1.0", {"runink": {"hello-cmd": "hello_cmd"}}, {"hello_cmd.py": HELLO.format(doc="Say hello.")})
    assert commands_listed(run_cli("--help", pythonpath=site).stdout)["hello"] == "Say hello."
    assert run_cli("hello", "--name", "herd", pythonpath=site).stdout.strip() == "hello herd"

    time.sleep(0.01)  # (a new mtime, whatever the filesystem's tick)
    (site / "hello_cmd.py").write_text(textwrap.dedent(HELLO.format(doc="Say hello again.")))
    assert commands_listed(run_cli("--help", pythonpath=site).stdout)["hello"] == "Say hello again."

    (tmp_path / "runink.toml").write_text('[plugins]\ndisable = ["hello-cmd"]\n')
    out = run_cli("--help", pythonpath=site)
    assert out.returncode == 0 and "hello" not in commands_listed(out.stdout)
    out = run_cli("hello", pythonpath=site)
    assert out.returncode == 2 and "No such command 'hello'" in out.stderr


def test_a_plugin_cannot_take_a_built_in_command(run_cli: CliRunner, fake_dist: FakeDist, tmp_path: Path) -> None:
    source = """
        from runink.core import hookimpl

        @hookimpl
        def runink_cli_commands(app):
            @app.command("login")
            def login():
                '''Not the real login.'''
                print("stolen")
    """
    site = fake_dist("evil", "1.0", {"runink": {"evil": "evil_cmd"}}, {"evil_cmd.py": source})
    out = run_cli("--help", pythonpath=site)
    assert out.returncode == 0
    assert commands_listed(out.stdout)["login"].startswith("Store the token")
    assert "plugin command 'login' ignored: a built-in command has it" in out.stderr
    out = run_cli("login", "--help", pythonpath=site)
    assert out.returncode == 0 and "stolen" not in out.stdout and "Not the real login" not in out.stdout
    # an index edited to say the plugin has it: still the built-in (a review's run had a
    # plugin's command answer `runink exec` so)
    index = tmp_path / "xdg-cache" / "runink" / "commands.json"
    kept = json.loads(index.read_text())
    for fingerprint in kept["fingerprints"].values():
        for entry in fingerprint["entries"]:
            if entry["name"] == "login":
                entry["source"], entry["module"] = "plugin", ""
    index.write_text(json.dumps(kept))
    out = run_cli("login", "--help", pythonpath=site)
    assert out.returncode == 0 and "Store the token" in out.stdout and "Not the real login" not in out.stdout


def test_the_built_in_command_names_are_those_of_the_built_in_modules() -> None:
    from runink.core.cli.app import BUILTIN_COMMANDS, BUILTIN_MODULES, _module_commands

    assert {name for module in BUILTIN_MODULES for name in _module_commands(module)} == BUILTIN_COMMANDS


def test_a_broken_or_foreign_index_is_rebuilt(run_cli: CliRunner, tmp_path: Path) -> None:
    index = tmp_path / "xdg-cache" / "runink" / "commands.json"
    expected = run_cli("--help").stdout
    for damage in ("{not json", json.dumps({"fingerprints": {"x": 1}}), "x" * (2 << 20)):
        index.write_text(damage)
        out = run_cli("--help")
        assert out.returncode == 0 and out.stdout == expected and "Traceback" not in out.stderr
    # a link is not followed: the CLI lists from a build and replaces the link by a file
    target = tmp_path / "elsewhere.json"
    target.write_text(index.read_text())
    index.unlink()
    index.symlink_to(target)
    out = run_cli("--help")
    assert out.returncode == 0 and out.stdout == expected
    assert not index.is_symlink()


def test_an_unwritable_cache_leaves_the_cli_working(run_cli: CliRunner, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    out = run_cli("--help", env={"XDG_CACHE_HOME": str(blocker)})
    assert out.returncode == 0 and "exec" in commands_listed(out.stdout)


def test_each_command_built_alone_is_the_one_the_full_build_has() -> None:
    """A command is built from its own module when run: in a fresh process, with no other
    command module imported, it has every subcommand and option it has when every command
    module was imported first (a module that adds to another's group must be imported by it)."""
    walk = """
import json
from runink.core.cli.state import CliState
def tree(command, path=""):
    found = {path: sorted(o for p in command.params for o in (*p.opts, *p.secondary_opts))}
    for name, sub in getattr(command, "commands", {}).items():
        found.update(tree(sub, f"{path} {name}"))
    return found
"""
    full = (
        walk
        + """
import importlib
from runink.core.cli.app import BUILTIN_MODULES, build_app
for module in BUILTIN_MODULES:  # every module imported before any command is built
    importlib.import_module(f"runink.core.cli.{module}")
group = build_app(CliState.from_argv([]))
print(json.dumps({e.name: [e.source, e.module, tree(group.commands[e.name])] for e in group.entries(None)}))
"""
    )

    def child(code: str) -> object:
        command = [sys.executable, "-c", code]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    everything = child(full)
    assert isinstance(everything, dict)
    modules = {module for source, module, _ in everything.values() if source == "builtin"}
    for module in sorted(modules):
        alone = child(
            walk
            + f"""
from runink.core.cli.app import _module_commands
print(json.dumps({{name: tree(c) for name, c in _module_commands({module!r}).items()}}))
"""
        )
        assert isinstance(alone, dict)
        for name, built in alone.items():
            assert built == everything[name][2], f"runink {name} built from {module} alone differs"
