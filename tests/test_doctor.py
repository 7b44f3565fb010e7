"""`runink doctor`: real probes of cgroups and namespaces, and what the executor cannot enforce."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fixture_types import CliRunner

from runink.plugins.executors.linux import namespaces
from runink.plugins.executors.linux.namespaces import NAMESPACE_FLAGS, probe, probe_many


def test_namespace_probe_is_real() -> None:
    if os.geteuid() == 0:
        assert probe("pid") is None and probe("mount") is None
    else:
        assert probe("mount") is not None  # unprivileged: the kernel refuses it, and we say why


def test_namespace_probes_in_one_child_answer_each_kind_as_alone() -> None:
    """One child probes every kind (each in a fork of its own): the same answers as one
    probe per kind, and a kind the kernel refuses does not hide the others."""
    together = probe_many(list(NAMESPACE_FLAGS))
    assert together == {name: probe(name) for name in NAMESPACE_FLAGS}
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or system_python is None:
        return
    # A refusal among them: the module (it needs only the standard library) run by the system's
    # Python as nobody, who may not read this venv, from a folder nobody may read.
    folder = Path(tempfile.mkdtemp(prefix="runink-probe-"))  # (tmp_path's parents are root's alone)
    folder.chmod(0o755)
    shutil.copy(namespaces.__file__, folder / "namespaces.py")
    code = "import json, namespaces; print(json.dumps(namespaces.probe_many(['mount', 'user', 'pid'])))"
    try:
        done = subprocess.run(
            [system_python, "-c", code],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            user=65534,
            group=65534,
            extra_groups=[],
        )
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert list(answers) == ["mount", "user", "pid"]
    assert answers["mount"] == "Operation not permitted" and answers["pid"] == "Operation not permitted"


PROBE_BOTH_WAYS = """
import json, subprocess, sys, threading
from runink.plugins.executors.linux import namespaces as n
spawned = []
real_popen = subprocess.Popen
def popen(*args, **kwargs):
    spawned.append(args)
    return real_popen(*args, **kwargs)
n.subprocess.Popen = popen
alone = n._single_threaded()
forked = [n.probe_many(list(n.NAMESPACE_FLAGS)), n.probe_unprivileged_user()]
children_alone = len(spawned)
stop = threading.Event()
other = threading.Thread(target=stop.wait)
other.start()
threaded = not n._single_threaded()
in_child = [n.probe_many(list(n.NAMESPACE_FLAGS)), n.probe_unprivileged_user()]
stop.set()
other.join()
print(json.dumps({"alone": alone, "threaded": threaded, "children_alone": children_alone,
                  "children_threaded": len(spawned) - children_alone, "forked": forked, "in_child": in_child}))
"""


def test_a_process_with_threads_probes_in_a_python_child_with_the_same_answers() -> None:
    """One thread (the CLI): the probes fork this process; more (an agent's gRPC threads, whose
    locks a fork would copy held): a Python child probes instead. Both answer alike."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE_BOTH_WAYS], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["alone"] and seen["threaded"]
    assert (seen["children_alone"], seen["children_threaded"]) == (0, 2)  # (each way really ran)
    assert seen["in_child"] == seen["forked"]


def test_doctor_reports_every_area(run_cli: CliRunner) -> None:
    out = run_cli("doctor", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    areas = {(c["area"], c["check"]): c for c in report["checks"]}
    assert {name for area, name in areas if area == "namespaces"} == set(NAMESPACE_FLAGS)
    assert ("cgroups", "version") in areas
    chosen = areas[("executor", "auto")]["detail"].split(";")[0].removeprefix("chose ")
    assert chosen in ("linux", "process") and areas[("executor", chosen)]["ok"]
    if chosen == "process":  # not root here: auto says why it does not isolate
        assert "not isolated" in areas[("executor", "auto")]["detail"]
    else:  # whether sandboxes start with the native init or the slower Python one
        from runink.plugins.executors.linux.launcher import native_init_available

        assert areas[("executor", "linux: runink-init")]["ok"] is native_init_available()
    forced_run = run_cli("doctor", "--json", env={"RUNINK_EXECUTOR__DRIVER": "process"})
    forced = json.loads(forced_run.stdout)
    process = {(c["area"], c["check"]): c for c in forced["checks"]}
    assert not process[("executor", "process: memory")]["ok"] and process[("executor", "process")]["ok"]


def test_doctor_table(run_cli: CliRunner) -> None:
    out = run_cli("doctor")
    assert out.returncode == 0
    assert "namespaces" in out.stdout and "enforces" in out.stdout
    # what a driver cannot enforce is a line of its own (the process executor: every limit)
    plain = run_cli("doctor", env={"RUNINK_EXECUTOR__DRIVER": "process", "COLUMNS": "200"})
    assert plain.returncode == 0 and "not enforced: plain host processes" in plain.stdout, plain.stdout


def test_doctor_asks_each_executor_driver_through_its_interface() -> None:
    """A third party's executor is diagnosed like the built-in ones: its own checks when it is in
    use (its health decides the exit status), its host probes when it is not."""
    from runink.core import hookimpl
    from runink.core.cli.doctor_cmd import collect
    from runink.core.cli.state import CliState
    from runink.core.config import load_config
    from runink.core.drivers import DriverSpec
    from runink.core.interfaces import Check, Executor
    from runink.plugins.executors.process import ProcessExecutor
    from runink.testing import plugin_manager

    class Vm(ProcessExecutor):
        name = "vm"

        def diagnose(self) -> list[Check]:
            return [Check("hypervisor", "kvm", False, "/dev/kvm is missing"), *super().diagnose()]

    class Registrar:
        @hookimpl
        def runink_register_drivers(self) -> list[DriverSpec]:
            return [DriverSpec(Executor.GROUP, "vm", Vm)]

    with plugin_manager(("registrar", Registrar())) as manager:
        for driver, in_use in (("vm", True), ("process", False)):
            config = load_config(environ={}, overrides={"executor.driver": driver})
            report = collect(CliState(_config=config, _plugins=manager))
            checks = {(c["area"], c["check"]): c for c in report["checks"]}
            assert checks[("hypervisor", "kvm")] == {
                "area": "hypervisor", "check": "kvm", "ok": False, "detail": "/dev/kvm is missing"
            }  # fmt: skip
            assert (("executor", "vm") in checks) is in_use and checks[("executor", driver)]["ok"]
