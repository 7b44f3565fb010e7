"""`runink run --dry-run` checks what it can without running the pipeline: configured driver
names, sources, sink folders, and (in a slice, never in the CLI process) step and contract
modules. Each problem is one line; any problem exits 2."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from fixture_types import CliRunner

PROCESS = {"RUNINK_EXECUTOR__DRIVER": "process"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    root.mkdir()
    (root / "in.csv").write_text("id\n1\n")
    (root / "steps.py").write_text("def keep(batch):\n    return batch\n\nnot_a_function = 3\n")
    (root / "contracts.py").write_text(
        "from runink.core.contracts import Contract, Field\n\n"
        "class Row(Contract):\n    id: int = Field(ge=0)\n\nclass Plain:\n    pass\n"
    )
    return root


def dsl(root: Path, body: str) -> None:
    (root / "p.dsl").write_text("Feature: f\n" + textwrap.indent(textwrap.dedent(body), "  "))


def errors(out: subprocess.CompletedProcess[str]) -> list[str]:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), lines
    assert "Traceback" not in out.stderr
    return [line[len("error: ") :] for line in lines]


GOOD = """\
Scenario: a
  @source("in.csv", contract="contracts:Row")
  @step("steps:keep")
  @sink("out/a.csv")
"""


def test_a_good_pipeline_passes_and_leaves_nothing_behind(run_cli: CliRunner, project: Path, data_home: Path) -> None:
    dsl(project, GOOD)
    before = sorted(p.name for p in project.rglob("*"))
    out = run_cli("run", "p.dsl", "--dry-run", "--json", cwd=project, env=PROCESS)
    assert out.returncode == 0, out.stderr
    assert '"scenario": "a"' in out.stdout
    assert sorted(p.name for p in project.rglob("*")) == before  # no out/ or __pycache__
    assert not data_home.exists()  # nor any state of a run


def test_sources_must_exist_and_be_readable(run_cli: CliRunner, project: Path) -> None:
    os.mkfifo(project / "pipe.csv")  # a FIFO would hang a reader
    dsl(
        project,
        """\
        Scenario: a
          @source("nowhere.csv")
          @sink("out/a.csv")
        Scenario: b
          @source("pipe.csv")
          @sink("out/b.csv")
        Scenario: c
          @source("out/a.csv")
          @sink("out/c.csv")
        """,
    )
    assert errors(run_cli("run", "p.dsl", "--dry-run", cwd=project, env=PROCESS)) == [
        f"p.dsl:3:5: @source 'nowhere.csv': {project}/nowhere.csv does not exist",
        f"p.dsl:6:5: @source 'pipe.csv': {project}/pipe.csv is not a regular file",
    ]  # out/a.csv is made by scenario a: not checked


def test_sink_folders_must_be_creatable(run_cli: CliRunner, project: Path) -> None:
    (project / "blocked").write_text("a file where a folder should be")
    dsl(project, 'Scenario: a\n  @source("in.csv")\n  @sink("blocked/deeper/a.csv")\n')
    assert errors(run_cli("run", "p.dsl", "--dry-run", cwd=project, env=PROCESS)) == [
        f"p.dsl:4:5: @sink 'blocked/deeper/a.csv': cannot make folder {project}/blocked/deeper: "
        f"{project}/blocked is not a folder"
    ]


def test_step_and_contract_modules_are_imported_in_a_child_process(run_cli: CliRunner, project: Path) -> None:
    # import-time code that would kill the CLI if the CLI imported it
    (project / "killer.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n\ndef f(batch):\n    return batch\n"
    )
    (project / "broken.py").write_text("raise RuntimeError('no database at import time')\n\ndef f(b):\n    return b\n")
    dsl(
        project,
        """\
        Scenario: a
          @source("in.csv", contract="contracts:Plain")
          @step("steps:not_a_function")
          @step("broken:f")
          @step("steps:keep")
          @sink("out/a.csv")
        """,
    )
    assert errors(run_cli("run", "p.dsl", "--dry-run", cwd=project, env=PROCESS)) == [
        "p.dsl:3:5: contract 'contracts:Plain': 'Plain' is a type, not a runink.core.contracts.Contract subclass",
        "p.dsl:4:5: step 'steps:not_a_function': 'not_a_function' is a int, not a function",
        "p.dsl:5:5: step 'broken:f': importing module 'broken' raised RuntimeError: no database at import time",
    ]
    dsl(project, 'Scenario: a\n  @source("in.csv")\n  @step("killer:f")\n  @sink("out/a.csv")\n')
    (line,) = errors(run_cli("run", "p.dsl", "--dry-run", cwd=project, env=PROCESS))
    assert line.startswith("p.dsl: cannot check the step modules: the check ended failed"), line
    assert not (project / "__pycache__").exists()


def _linux_isolates() -> bool:
    from runink.plugins.executors.linux.executor import LinuxExecutor

    return LinuxExecutor().fingerprint().healthy


@pytest.mark.skipif(os.geteuid() != 0 or not _linux_isolates(), reason="the linux executor cannot isolate here")
def test_the_import_check_runs_isolated(run_cli: CliRunner, project: Path, tmp_path: Path) -> None:
    """With the linux executor, the module's import-time code runs in a slice: the host's
    files outside the pipeline's folder are not there."""
    outside = tmp_path / "host-only.txt"
    outside.write_text("secret")
    (project / "peek.py").write_text(
        f"import os\nif os.path.exists({str(outside)!r}):\n    raise RuntimeError('sees the host')\n"
        "raise RuntimeError('isolated')\n"
    )
    dsl(project, 'Scenario: a\n  @source("in.csv")\n  @step("peek:f")\n  @sink("out/a.csv")\n')
    (project / "peek.py").write_text((project / "peek.py").read_text() + "\ndef f(b):\n    return b\n")
    assert errors(run_cli("run", "p.dsl", "--dry-run", cwd=project)) == [
        "p.dsl:4:5: step 'peek:f': importing module 'peek' raised RuntimeError: isolated"
    ]


@pytest.mark.parametrize(
    ("key", "group"),
    [
        ("executor.driver", "runink.executors"),
        ("scheduler.driver", "runink.scheduler_policies"),
        ("barn.driver", "runink.barn_backends"),
        ("secrets.driver", "runink.secret_backends"),
        ("annotator.driver", "runink.annotators"),
    ],
)
def test_every_configured_driver_name_must_exist(run_cli: CliRunner, project: Path, key: str, group: str) -> None:
    dsl(project, GOOD)
    env = {**PROCESS, "RUNINK_" + key.upper().replace(".", "__"): "nope"}
    (line,) = errors(run_cli("run", "p.dsl", "--dry-run", cwd=project, env=env))
    var = "$RUNINK_" + key.upper().replace(".", "__")
    assert line.startswith(f"{var}: {key} = 'nope' names no installed {group} driver (available: "), line


def test_hook_plugins_are_loaded_only_for_a_driver_no_package_installs() -> None:
    """The dry run reads an installed driver from its entry point without loading the hook
    plugins; a name no package installs is looked up among the drivers hook plugins register."""
    from runink.core import hookimpl
    from runink.core.config import load_config
    from runink.core.drivers import DriverSpec
    from runink.core.dryrun import check_drivers
    from runink.core.interfaces import SchedulerPolicy
    from runink.core.plugins import PluginManager
    from runink.plugins.scheduling.policies import SpreadPolicy
    from runink.testing import plugin_manager

    class Registrar:
        @hookimpl
        def runink_register_drivers(self) -> list[DriverSpec]:
            return [DriverSpec(SchedulerPolicy.GROUP, "mine", SpreadPolicy)]

    with plugin_manager(("registrar", Registrar())) as manager:
        asked: list[str] = []

        def plugins() -> PluginManager:
            asked.append("plugins")
            return manager

        installed = load_config(environ={}, overrides={"scheduler.driver": "spread", "executor.driver": "process"})
        assert check_drivers(installed, plugins) == {} and asked == []
        runtime = load_config(environ={}, overrides={"scheduler.driver": "mine", "executor.driver": "process"})
        assert check_drivers(runtime, plugins) == {} and asked == ["plugins"]
        missing = load_config(environ={}, overrides={"scheduler.driver": "nope"})
        problem = check_drivers(missing, plugins)["scheduler"]
        assert "names no installed runink.scheduler_policies driver" in problem and "mine" in problem, problem


def test_a_driver_name_from_the_config_file_names_its_key(run_cli: CliRunner, project: Path) -> None:
    dsl(project, GOOD)
    (project / "runink.toml").write_text('[scheduler]\ndriver = "spred"\n\n[executor]\ndriver = "proces"\n')
    lines = errors(run_cli("run", "p.dsl", "--dry-run", cwd=project))
    toml = project / "runink.toml"
    assert lines == [
        f"{toml}:5: executor.driver = 'proces' names no installed runink.executors driver "
        "(available: auto, linux, process)",
        f"{toml}:2: scheduler.driver = 'spred' names no installed runink.scheduler_policies driver "
        "(available: binpack, least-connections, random, round-robin, spread, weighted)",
    ]
    # a real run reads executor.driver too: the same one line, with the key
    out = run_cli("run", "p.dsl", cwd=project)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"error: no runink.executors driver named 'proces' (set at {toml}:5: executor.driver); "
        "available: linux, process"
    ]


def test_a_good_code_check_is_kept_until_what_it_imported_changes(
    run_cli: CliRunner, project: Path, tmp_path: Path
) -> None:
    """The slice that imports the step modules is ~half of a dry run: a good check is kept,
    and made again once a module it imported, the pipeline's folder or the refs change."""
    log = tmp_path / "imports.log"  # (the process executor lets the module write there)
    helper = project / "helper.py"
    helper.write_text(f"open({str(log)!r}, 'a').write('helper\\n')\n")
    (project / "steps.py").write_text("import helper\n\ndef keep(batch):\n    return batch\n")
    dsl(project, GOOD)

    def dry_run() -> subprocess.CompletedProcess[str]:
        return run_cli("run", "p.dsl", "--dry-run", cwd=project, env=PROCESS)

    def imports() -> int:
        return log.read_text().count("helper") if log.exists() else 0

    assert dry_run().returncode == 0 and imports() == 1
    assert dry_run().returncode == 0 and imports() == 1  # kept: no slice
    stat = helper.stat()
    helper.write_text(helper.read_text() + "# edited\n")  # a module the steps import, edited
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert dry_run().returncode == 0 and imports() == 2
    (project / "other.py").write_text("x = 1\n")  # the folder changed: a module could shadow another
    assert dry_run().returncode == 0 and imports() == 3
    # a broken step is never kept as good
    (project / "steps.py").write_text("import helper\n\nkeep = 3\n")
    for _ in range(2):
        assert errors(dry_run()) == ["p.dsl:4:5: step 'steps:keep': 'keep' is a int, not a function"]
    assert imports() == 5


def test_a_kept_code_check_still_says_what_is_wrong_with_a_plugin_s_table(run_cli: CliRunner, project: Path) -> None:
    """The kept check skipped building the plugins: a [plugin.*] table nobody reads, or with an
    unknown option, was said on the first dry run only (a review)."""
    (project / "plugins.toml").write_text('[plugin.lineage-jsonl]\npathh = "x"\n[plugin.nosuchplug]\na = 1\n')
    dsl(project, GOOD)
    said = []
    for _ in range(2):
        out = run_cli("-c", "plugins.toml", "run", "p.dsl", "--dry-run", cwd=project, env=PROCESS)
        assert out.returncode == 0, out.stderr
        said.append(sorted(line.split(": ", 1)[1][:40] for line in out.stderr.splitlines() if "plugin" in line))
    assert said[0] == said[1] and len(said[0]) == 2, said


def test_a_source_only_root_s_override_reads_is_refused_for_an_isolated_slice(
    run_cli: CliRunner, project: Path
) -> None:
    """As root, the dry run opened a source of mode 000 and said all was well; the run's slice,
    acting as the file's owner without root's override, could not read it (a review)."""
    if os.geteuid() != 0:
        pytest.skip("root's override of file modes is what this is about")
    dsl(project, GOOD)
    (project / "in.csv").chmod(0)
    isolated = run_cli("run", "p.dsl", "--dry-run", cwd=project, env={"RUNINK_EXECUTOR__DRIVER": "linux"})
    assert errors(isolated) == [
        f"p.dsl:3:5: @source 'in.csv': cannot read {project / 'in.csv'}: its owner has no right to it, "
        "and an isolated slice has only its owner's (not root's override)"
    ]
    assert run_cli("run", "p.dsl", "--dry-run", cwd=project, env=PROCESS).returncode == 0  # (root reads it there)
