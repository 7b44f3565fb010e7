"""`runink doctor`: real probes of cgroups and namespaces, and what the executor cannot enforce."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from runink.plugins.executors.linux.namespaces import NAMESPACE_FLAGS, probe


def test_namespace_probe_is_real() -> None:
    if os.geteuid() == 0:
        assert probe("pid") is None and probe("mount") is None
    else:
        assert probe("mount") is not None  # unprivileged: the kernel refuses it, and we say why


def test_doctor_reports_every_area(run_cli: Callable[..., object]) -> None:
    out = run_cli("doctor", "--json")
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    report = json.loads(out.stdout)  # type: ignore[attr-defined]
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
    forced = json.loads(forced_run.stdout)  # type: ignore[attr-defined]
    process = {(c["area"], c["check"]): c for c in forced["checks"]}
    assert not process[("executor", "process: memory")]["ok"] and process[("executor", "process")]["ok"]


def test_doctor_table(run_cli: Callable[..., object]) -> None:
    out = run_cli("doctor")
    assert out.returncode == 0  # type: ignore[attr-defined]
    assert "namespaces" in out.stdout and "not enforced" in out.stdout  # type: ignore[attr-defined]
