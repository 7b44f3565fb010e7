"""Drivers: chosen by name, imported alone, errors that list what exists and where the name was set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fixture_types import FakeDist, OnSysPath

from runink.core import hookimpl
from runink.core.config import PluginsConfig, load_config
from runink.core.drivers import DriverSpec, auto_executor, configured_driver, list_drivers, load_driver
from runink.core.errors import DriverLoadError, DriverNotFoundError
from runink.core.interfaces import BarnBackend, Executor, ExecutorCapabilities, Fingerprint, SchedulerPolicy
from runink.core.plugins import PluginManager
from runink.plugins.executors.process import ProcessExecutor
from runink.plugins.scheduling.policies import SpreadPolicy
from runink.testing import plugin_manager


def test_load_by_name_with_options() -> None:
    executor = load_driver(Executor, "process", {"degrade": True, "timeout_grace": 0.5})
    assert isinstance(executor, Executor)
    assert executor.degrade is True and executor.timeout_grace == 0.5


def test_unknown_name_lists_available_and_origin(tmp_path: Path) -> None:
    with pytest.warns(FutureWarning, match="scheduler.policy is deprecated"):  # the old key still counts
        config = load_config(environ={"RUNINK_SCHEDULER__POLICY": "fastest"})
    with pytest.raises(DriverNotFoundError) as info:
        configured_driver(config, "scheduler")
    message = str(info.value)
    assert "'fastest'" in message and "$RUNINK_SCHEDULER__POLICY" in message
    assert "binpack, least-connections, random, round-robin, spread, weighted" in message


def test_bad_options_name_the_driver() -> None:
    with pytest.raises(DriverLoadError, match=r"runink.executors driver 'process': bad options \['colour'\]"):
        load_driver(Executor, "process", {"colour": "red"})


def test_disabled_driver_cannot_be_loaded() -> None:
    manager = PluginManager(PluginsConfig(disable=["runink.executors:process"]))
    with pytest.raises(DriverLoadError, match="disabled"):
        load_driver(Executor, "process", manager=manager)


def test_driver_of_the_wrong_type(fake_dist: FakeDist, on_sys_path: OnSysPath) -> None:
    on_sys_path(
        fake_dist(
            "odd", "0.1", {"runink.executors": {"odd": "odd_driver:Odd"}}, {"odd_driver.py": "class Odd:\n    pass\n"}
        )
    )
    with pytest.raises(DriverLoadError, match="is a Odd, not a Executor"):
        load_driver(Executor, "odd")
    record = next(r for r in list_drivers() if r.name == "odd")
    assert record.status == "failed" and "not a Executor subclass" in (record.error or "")


def test_broken_driver_import_is_reported(fake_dist: FakeDist, on_sys_path: OnSysPath) -> None:
    on_sys_path(
        fake_dist(
            "bad",
            "0.1",
            {"runink.executors": {"bad": "bad_driver:Bad"}},
            {"bad_driver.py": "raise ImportError('no libfoo')\n"},
        )
    )
    with pytest.raises(DriverLoadError, match="failed to import: ImportError: no libfoo"):
        load_driver(Executor, "bad")
    record = next(r for r in list_drivers() if r.name == "bad")
    assert record.status == "failed" and "no libfoo" in (record.error or "")
    assert isinstance(load_driver(Executor, "process"), Executor)  # the others still load


def test_only_the_chosen_driver_is_imported() -> None:
    code = (
        "import sys\n"
        "from runink.core.drivers import load_driver\n"
        "from runink.core.interfaces import SchedulerPolicy\n"
        "load_driver(SchedulerPolicy, 'spread')\n"
        "print('runink.plugins.executors.process' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_hook_runink_register_drivers() -> None:
    class Fastest(SpreadPolicy):
        name = "fastest"

    class Registrar:
        @hookimpl
        def runink_register_drivers(self) -> list[DriverSpec]:
            return [DriverSpec("runink.scheduler_policies", "fastest", Fastest)]

    class Odd:  # (an answer that is no list of DriverSpec crashed `plugins list` and `doctor`)
        @hookimpl
        def runink_register_drivers(self) -> int:
            return 42

    with plugin_manager(("registrar", Registrar()), ("odd", Odd())) as manager:
        policy = load_driver(SchedulerPolicy, "fastest", manager=manager)
        assert isinstance(policy, SchedulerPolicy) and policy.name == "fastest"
        record = next(r for r in list_drivers(manager) if r.name == "fastest")
        assert record.source == "runtime" and record.details == {"registered_by": "registrar"}
        odd = next(r for r in manager.records() if r.name == "odd")
        assert odd.status == "failed"
        assert odd.error == "runink_register_drivers returned a int, not a list of DriverSpec"


class _Sealed(ProcessExecutor):
    """A third party's isolating executor: auto judges it by its own capabilities and fingerprint."""

    name = "sealed"

    def capabilities(self) -> ExecutorCapabilities:
        return ExecutorCapabilities("micro-vm", enforced=("memory",))


class _Sick(_Sealed):
    name = "sick"

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(False, "no hypervisor here")


class _ExecutorRegistrar:
    @hookimpl
    def runink_register_drivers(self) -> list[DriverSpec]:
        return [DriverSpec(Executor.GROUP, "sealed", _Sealed), DriverSpec(Executor.GROUP, "sick", _Sick)]


def test_auto_picks_by_the_drivers_own_fingerprints_in_the_configured_order() -> None:
    with plugin_manager(("registrar", _ExecutorRegistrar())) as manager:
        config = load_config(environ={}, overrides={"executor.prefer": "sick,sealed,process"})
        chosen, named, note = auto_executor(config, manager)
        try:
            assert isinstance(chosen, _Sealed) and named.executor.driver == "sealed" and note == ""
        finally:
            chosen.close()
        # nothing preferred isolates here: the first healthy one, and a note that says why
        config = load_config(environ={}, overrides={"executor.prefer": "sick,process"})
        chosen, named, note = auto_executor(config, manager)
        assert chosen is None and named.executor.driver == "process"
        assert "not isolated" in note and "sick executor: no hypervisor here" in note
        config = load_config(environ={}, overrides={"executor.prefer": "sick"})
        with pytest.raises(DriverLoadError, match=r"no executor of executor.prefer \(sick\) can run here"):
            auto_executor(config, manager)


def test_auto_prefers_linux_then_process_by_default() -> None:
    assert load_config(environ={}).executor.prefer == ["linux", "process"]


def test_load_by_interface_returns_that_interface() -> None:
    executor = load_driver(Executor, "process", {"timeout_grace": "0.5"})  # text, as from --set
    assert isinstance(executor, ProcessExecutor) and executor.timeout_grace == 0.5
    with pytest.raises(DriverNotFoundError, match="is not a driver interface"):
        load_driver(object, "process")  # no GROUP: not an interface


@pytest.mark.parametrize(
    ("interface", "name", "options", "message"),
    [
        (Executor, "process", {"timeout_grace": "soon"}, "option timeout_grace must be float, got str 'soon'"),
        (Executor, "linux", {"pool": [2]}, "option pool must be int, got list [2]"),
        (Executor, "linux", {"user_namespace": "maybe"}, "option user_namespace must be bool, got str 'maybe'"),
        (BarnBackend, "memory", {"history": 1.5}, "option history must be int, got float 1.5"),
        (BarnBackend, "raft", {"endpoints": "h:1", "timeout": True}, "option timeout must be float, got bool True"),
    ],
)
def test_options_schema_refuses_a_wrong_option_in_one_line(
    interface: type[Executor | BarnBackend], name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(DriverLoadError) as info:
        load_driver(interface, name, options, origin="runink.toml:3")
    text = str(info.value)
    assert text == f"{interface.GROUP} driver {name!r}: {message} (set at runink.toml:3)"
    assert "\n" not in text


def test_options_schema_names_the_options_it_takes() -> None:
    with pytest.raises(DriverLoadError) as info:
        load_driver(BarnBackend, "memory", {"histroy": 5})
    assert str(info.value) == (
        "runink.barn_backends driver 'memory': bad options ['histroy']: not options of this driver "
        "(it takes: clock, history, lease_check_interval)"
    )


def test_a_subclass_does_not_inherit_the_schema(fake_dist: FakeDist, on_sys_path: OnSysPath) -> None:
    source = (
        "from runink.plugins.executors.process import ProcessExecutor\n"
        "class Nice(ProcessExecutor):\n"
        "    def __init__(self, niceness: int = 10, **options: object) -> None:\n"
        "        super().__init__(**options)\n"
        "        self.niceness = niceness\n"
    )
    on_sys_path(
        fake_dist("nice", "0.1", {"runink.executors": {"nice": "nice_driver:Nice"}}, {"nice_driver.py": source})
    )
    executor = load_driver(Executor, "nice", {"niceness": 3})
    assert vars(executor)["niceness"] == 3 and executor.degrade is False


def test_the_loader_does_not_import_stevedore() -> None:
    code = "import sys, runink.core.drivers\nprint('stevedore' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_a_driver_that_does_not_implement_its_interface_says_what_it_lacks() -> None:
    """It was reported as "bad options ['degrade']": typer's TypeError of an abstract class."""

    class Half(Executor):
        name = "half"

        def __init__(self, degrade: bool = False) -> None:
            self.degrade = degrade

    class Registrar:
        @hookimpl
        def runink_register_drivers(self) -> list[DriverSpec]:
            return [DriverSpec(Executor.GROUP, "half", Half)]

    with plugin_manager(("half-registrar", Registrar())) as manager, pytest.raises(DriverLoadError) as info:
        load_driver(Executor, "half", manager=manager)
    assert str(info.value).startswith("runink.executors driver 'half' does not implement capabilities, ")
