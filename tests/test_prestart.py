"""`runink run`'s head start (core/cli/prestart.py): the executor driver a run used is kept
with its light prestart function, which the next run with the same config calls before
anything else, without importing the driver; what the index names is checked first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runink.core.cli.prestart import Entry, _entry
from runink.plugins.executors.linux.executor import LinuxExecutor

PRESTART = """
import json, sys
from runink.core.cli import prestart
from runink.core.cli.state import CliState
from runink.plugins.executors.linux import prestart as head_start

argv = ["run", "pipeline.dsl"]
if sys.argv[1] == "remember":
    from runink.plugins.executors.linux.executor import LinuxExecutor

    prestart.prestart(CliState.from_argv(argv))
    prestart.remember(CliState.from_argv(argv), LinuxExecutor.__new__(LinuxExecutor))
    print(json.dumps({}))
else:
    prestart.for_argv(argv)
    launcher = head_start.take()
    answer = {
        "driver_imported": "runink.plugins.executors.linux.executor" in sys.modules,
        "entry_points_read": "importlib.metadata" in sys.modules,
        "launcher": None if launcher is None else launcher.args,
    }
    if launcher is not None:
        launcher.stdin.close()  # (a launcher nobody takes over ends with its input)
        answer["exit"] = launcher.wait(30)
    print(json.dumps(answer))
"""


def _run(step: str, cwd: Path, env: dict[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PRESTART, step],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(os.geteuid() != 0, reason="the linux driver prestarts its launcher only as root")
def test_the_next_run_starts_the_launcher_without_importing_the_driver(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert _run("prestart", tmp_path, env)["launcher"] is None  # (no run kept yet: no guess)
    _run("remember", tmp_path, env)
    kept = json.loads((tmp_path / "cache" / "runink" / "executors.json").read_text())["fingerprints"]
    (entry,) = [v["entries"] for v in kept.values()]
    start, args = LinuxExecutor.prestart_entry()
    assert entry == {"driver": "linux", "start": start, "args": args}
    answer = _run("prestart", tmp_path, env)
    assert answer["driver_imported"] is False and answer["entry_points_read"] is False
    launched = answer["launcher"]
    assert isinstance(launched, list) and "--await-config" in launched
    assert launched[launched.index("--preload") + 1] == ",".join(args)
    assert answer["exit"] == 0
    # another folder is another fingerprint (./runink.toml may differ): no guess there
    (tmp_path / "other").mkdir()
    assert _run("prestart", tmp_path / "other", env)["launcher"] is None


def test_an_entry_names_only_a_function_of_runinks_own_modules() -> None:
    good = {"driver": "linux", "start": "runink.plugins.executors.linux.prestart:start", "args": ["pyarrow"]}
    assert _entry(good) == Entry("linux", "runink.plugins.executors.linux.prestart:start", ["pyarrow"])
    assert _entry("linux") == Entry("linux", None, [])  # (kept by a runink before light entries)
    refused = ("os:system", "subprocess:run", "runink:x", "runink.a.b", "runink.a:b:c", "runink.a:1b", " runink.a:b")
    for start in refused:
        assert _entry({**good, "start": start}) is None, start
    assert _entry({**good, "args": "pyarrow"}) is None
    assert _entry({**good, "args": [1]}) is None
    assert _entry({**good, "args": ["x"] * 1000}) is None
    assert _entry({**good, "driver": ""}) is None
    assert _entry({"driver": "linux"}) is None
    assert _entry(["linux"]) is None


def test_only_a_marked_prestart_function_is_called_and_only_runinks_modules_preloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index edited by hand named `runink.core.history:_remove_tree` with a folder as its
    argument: `runink run` removed the folder; and its arguments, modules the launcher imports
    as root, named any module (a review's runs)."""
    from runink.core.cli import prestart
    from runink.plugins.executors.linux import prestart as head_start

    victim = tmp_path / "victim"
    victim.mkdir()
    gadget = Entry("linux", "runink.core.history:_remove_tree", [str(victim)])
    monkeypatch.setattr(prestart, "_entry", lambda _raw: gadget)
    monkeypatch.setattr(prestart.index_store, "load", lambda *_a: {})
    prestart.prestart(prestart.CliState.from_argv(["run", "p.dsl"]))
    assert victim.is_dir()  # not called: no prestart function

    started: list[list[str]] = []
    monkeypatch.setattr(head_start, "launcher_popen", lambda command: started.append(command) or None)
    monkeypatch.setattr(head_start.os, "geteuid", lambda: 0)
    monkeypatch.setattr(head_start, "_started", None)
    head_start.start("pyarrow", "runink.plugins.storage.csv", "evil_module", "os", "runink.x;y")
    monkeypatch.setattr(head_start, "_started", None)
    assert started[0][-1] == "pyarrow,runink.plugins.storage.csv"


def test_a_launcher_awaiting_its_config_skips_a_guessed_module_it_cannot_import() -> None:
    """The prestart's guess of what to preload may name a module gone since (it is left to the
    executor's own --preload, which must import); a launcher whose input ends first exits 0."""
    module = "runink.plugins.executors.linux.launcher"
    for preload, code in (("json,no_such_module_here", 0), ("json", 0)):
        done = subprocess.run(
            [sys.executable, "-m", module, "--await-config", "--preload", preload],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == code, done.stderr
    # the executor's own --preload is not a guess: a module it cannot import fails the launcher
    done = subprocess.run(
        [sys.executable, "-m", module, "--preload", "no_such_module_here"],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "no_such_module_here" in done.stderr
