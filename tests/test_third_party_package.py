"""The example third-party package, pip-installed into a throwaway virtualenv beside runink.

This is the proof that "pip install a plugin" works: its executor and scheduler policy are
discovered through entry points and selected by name from configuration, its CLI command
appears, and its package and version show in ``runink plugins list``.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from trusted import trust_project_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "runink-example-plugins"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNINK_", "PYTHON"))}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv that sees the current environment's packages (runink included) and has the example installed.

    Offline: no index, no build isolation; the .pth line makes this environment's
    site-packages (with their own .pth files, e.g. an editable runink) visible in the venv.
    """
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False, system_site_packages=True).create(root)
    python = root / "bin" / "python"
    venv_site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    )
    parents = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]
    (venv_site / "_runink_parent_env.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n"
    )
    install = _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            str(EXAMPLE),
        ],
        cwd=root,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def test_example_plugins_are_listed(venv_python: Path, tmp_path: Path) -> None:
    out = _run([str(venv_python), "-m", "runink", "plugins", "list", "--json"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    for name, kind, group in (
        ("nice", "driver", "runink.executors"),
        ("cheapest", "driver", "runink.scheduler_policies"),
        ("example-cli", "hook", "runink"),
    ):
        row = rows[name]
        assert (row["kind"], row["group"], row["status"]) == (kind, group, "loaded"), row
        assert (row["package"], row["version"], row["source"]) == ("runink-example-plugins", "0.2.0", "third-party")
    assert rows["example-cli"]["hooks"] == ["runink_cli_commands"]
    assert rows["process"]["source"] == "builtin"  # the built-ins are still there


def test_example_drivers_are_selected_by_name(venv_python: Path, tmp_path: Path) -> None:
    (tmp_path / "runink.toml").write_text(
        '[executor]\ndriver = "nice"\noptions = { niceness = 7 }\n\n[scheduler]\ndriver = "cheapest"\n'
    )
    trust_project_config(tmp_path, Path(os.environ["XDG_CONFIG_HOME"]))
    script = textwrap.dedent(
        f"""
        import json, time
        from pathlib import Path
        from runink.core.config import load_config
        from runink.core.drivers import configured_driver
        from runink.core.interfaces import TaskSpec
        from runink.core.model import Node, PlacementRequest, Resources
        from runink.core.plugins import create_plugin_manager
        from runink.core.scheduling import place

        config = load_config()
        manager = create_plugin_manager(config)
        executor = configured_driver(config, "executor", manager)
        policy = configured_driver(config, "scheduler", manager)
        spec = TaskSpec("t1", ("sh", "-c", "cut -d' ' -f19 /proc/self/stat"), Path({str(tmp_path / "task")!r}),
                        env={{"PATH": "/usr/bin:/bin"}})
        executor.start(spec)
        result = executor.wait("t1", 30)
        nodes = [Node("pricey", Resources(8, 2**34), labels={{"cost-per-hour": "3.2"}}),
                 Node("cheap", Resources(8, 2**34), labels={{"cost-per-hour": "0.4"}})]
        ranking = place(manager, policy, PlacementRequest("t1", "default", Resources(1, 2**30)), nodes)
        print(json.dumps({{"executor": type(executor).__name__, "policy": type(policy).__name__,
                          "state": result.state, "nice": executor.read_log("t1").strip(),
                          "ranking": [p.node_id for p in ranking]}}))
        """
    )
    out = _run([str(venv_python), "-c", script], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["executor"] == "NiceExecutor" and result["policy"] == "CheapestFirstPolicy"
    assert result["state"] == "SUCCEEDED"
    # the task really ran at the configured niceness: nice -n adds it to the one it started with
    assert int(result["nice"]) == min(19, os.nice(0) + 7)
    assert result["ranking"] == ["cheap", "pricey"]


def test_example_cli_command(venv_python: Path, tmp_path: Path) -> None:
    out = _run([str(venv_python), "-m", "runink", "example-costs", "a=2", "b=0.5"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["b", "0.5", "a", "2"]


def test_example_is_not_visible_outside_its_venv(tmp_path: Path) -> None:
    out = _run([sys.executable, "-m", "runink", "plugins", "list", "--json"], cwd=tmp_path)
    assert "runink-example-plugins" not in out.stdout
