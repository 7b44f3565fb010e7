"""Loading hook plugins from entry points: status per plugin, never a failed start-up."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fixture_types import FakeDist, OnSysPath

from runink.core import hookimpl
from runink.core.config import PluginsConfig, RuninkConfig
from runink.core.plugins import PluginManager, PluginRecord, create_plugin_manager
from runink.testing import plugin_manager, registered_plugin

GOOD = """
from runink.core import hookimpl

@hookimpl
def runink_export_log(entry):
    SEEN.append(entry.message)

SEEN = []
"""


def by_name(manager: PluginManager) -> dict[str, PluginRecord]:
    return {record.name: record for record in manager.records()}


def test_builtin_plugins_load_with_package_and_version() -> None:
    manager = create_plugin_manager()
    records = by_name(manager)
    for name in ("resource-fit", "node-labels", "log-export", "lineage-jsonl"):
        record = records[name]
        assert record.status == "loaded", record
        assert record.package == "runink" and record.version
        assert record.source == "builtin"
    assert records["resource-fit"].hooks == ("runink_filter_nodes",)


def test_third_party_plugin_is_discovered(fake_dist: FakeDist, on_sys_path: OnSysPath) -> None:
    on_sys_path(fake_dist("acme-logs", "1.4.2", {"runink": {"acme-logs": "acme_logs"}}, {"acme_logs.py": GOOD}))
    manager = create_plugin_manager()
    record = by_name(manager)["acme-logs"]
    assert (record.status, record.package, record.version, record.source) == (
        "loaded",
        "acme-logs",
        "1.4.2",
        "third-party",
    )
    assert "acme-logs" in manager.implementers("runink_export_log")


def test_import_error_is_recorded_and_others_still_load(
    fake_dist: FakeDist, on_sys_path: OnSysPath, caplog: pytest.LogCaptureFixture
) -> None:
    on_sys_path(
        fake_dist(
            "broken-plugin",
            "0.1",
            {"runink": {"broken": "broken_plugin"}},
            {"broken_plugin.py": "import runink_module_that_does_not_exist\n"},
        )
    )
    with caplog.at_level(logging.WARNING, logger="runink.plugins"):
        manager = create_plugin_manager()
    record = by_name(manager)["broken"]
    assert record.status == "failed"
    assert record.error is not None
    assert "ModuleNotFoundError" in record.error and "runink_module_that_does_not_exist" in record.error
    assert by_name(manager)["resource-fit"].status == "loaded"
    assert "broken" in caplog.text


def test_unknown_hook_name_fails_the_plugin(fake_dist: FakeDist, on_sys_path: OnSysPath) -> None:
    source = "from runink.core import hookimpl\n\n@hookimpl\ndef runink_filter_nodez(request, nodes):\n    return []\n"
    on_sys_path(fake_dist("typo-plugin", "0.1", {"runink": {"typo": "typo_plugin"}}, {"typo_plugin.py": source}))
    manager = create_plugin_manager()
    record = by_name(manager)["typo"]
    assert record.status == "failed"
    assert record.error is not None and "runink_filter_nodez" in record.error
    assert "typo" not in manager.implementers("runink_filter_nodes")
    manager.pm.check_pending()  # nothing unknown is left registered


def test_wrong_hook_arguments_fail_at_registration() -> None:
    class Bad:
        @hookimpl
        def runink_filter_nodes(self, request: object, nodes: object, extra: object) -> list[object]:
            return []

    manager = PluginManager()
    record = manager.register(Bad(), "bad-args")
    assert record.status == "failed"
    assert "extra" in (record.error or "")


def test_disable_and_allow_list(fake_dist: FakeDist, on_sys_path: OnSysPath) -> None:
    on_sys_path(fake_dist("acme-logs", "1.0", {"runink": {"acme-logs": "acme_logs"}}, {"acme_logs.py": GOOD}))
    manager = create_plugin_manager(RuninkConfig(plugins=PluginsConfig(disable=["lineage-jsonl"])))
    assert by_name(manager)["lineage-jsonl"].status == "disabled"
    assert "lineage-jsonl" not in manager.implementers("runink_lineage_event")

    manager = create_plugin_manager(RuninkConfig(plugins=PluginsConfig(load=["something-else"])))
    assert by_name(manager)["acme-logs"].status == "disabled"
    assert "not in plugins.load" in (by_name(manager)["acme-logs"].error or "")
    assert by_name(manager)["resource-fit"].status == "loaded"  # builtins always load


def test_hook_runink_configure(tmp_path: Path) -> None:
    """Every plugin receives the config once; one that raises is failed, the others keep theirs."""
    seen: list[str] = []

    class Reader:
        @hookimpl
        def runink_configure(self, config: RuninkConfig) -> None:
            seen.append(config.plugin_options("reader")["colour"])

    class Raiser:
        @hookimpl
        def runink_configure(self, config: RuninkConfig) -> None:
            config.executor.driver = "process"  # (a copy: the run's own config is not changed)
            raise RuntimeError("needs [plugin.raiser] token")

    config = RuninkConfig(plugin={"reader": {"colour": "blue"}}, data_dir=tmp_path)
    with plugin_manager(("reader", Reader()), ("raiser", Raiser()), config=config) as manager:
        assert seen == ["blue"]
        assert config.executor.driver != "process"
        record = by_name(manager)["raiser"]
        assert record.status == "failed"
        assert record.error is not None and "needs [plugin.raiser] token" in record.error
        assert "raiser" not in manager.implementers("runink_configure")


def test_tracing_logs_every_hook_call(caplog: pytest.LogCaptureFixture) -> None:
    manager = PluginManager(PluginsConfig(trace=True))
    manager.load_entrypoints()
    with caplog.at_level(logging.INFO, logger="runink.plugins.trace"):
        manager.configure(RuninkConfig())
        manager.hook.runink_authenticate(request=None)
    assert "call runink_configure from lineage-jsonl" in caplog.text
    assert "runink_authenticate" in caplog.text


def test_tracing_logs_no_argument_nor_result_values(caplog: pytest.LogCaptureFixture) -> None:
    # a KMS plugin's runink_master_key returns the key; runink_configure gets every credential
    class Kms:
        @hookimpl
        def runink_master_key(self, source: str) -> bytes:
            return b"MASTER-KEY-BYTES"

    manager = PluginManager(PluginsConfig(trace=True))
    manager.register(Kms(), "kms")
    config = RuninkConfig.model_validate({"plugin": {"storage-s3": {"secret_key": "S3-SECRET"}}})
    with caplog.at_level(logging.INFO, logger="runink.plugins.trace"):
        manager.configure(config)
        manager.hook.runink_master_key(source="kms:x")
    assert "finish runink_master_key" in caplog.text  # (the call, without its result)
    assert "MASTER-KEY" not in caplog.text and "S3-SECRET" not in caplog.text


def test_registered_plugin_is_scoped_to_the_block() -> None:
    class Plugin:
        @hookimpl
        def runink_export_log(self, entry: object) -> None:
            pass

    with plugin_manager() as manager:
        with registered_plugin(manager, Plugin(), "temp") as name:
            assert name in manager.implementers("runink_export_log")
        assert "temp" not in manager.implementers("runink_export_log")


def test_runink_plugins_fixture_gives_a_manager_for_the_test(runink_plugins: PluginManager) -> None:
    """The pytest11 entry point provides the fixture: the installed plugins, and one registered here."""

    class Exporter:
        @hookimpl
        def runink_export_log(self, entry: object) -> None:
            pass

    assert "log-export" in runink_plugins.implementers("runink_export_log")
    assert runink_plugins.register(Exporter(), "exporter").status == "loaded"
    assert "exporter" in runink_plugins.implementers("runink_export_log")


def test_wrapper_hookimpl_runs_around_the_fan_out_sinks(caplog: pytest.LogCaptureFixture) -> None:
    """Hooks go through pluggy: a wrapper=True implementation sees the call before the sinks and
    their results after; a sink that raises is logged with its name and the others still run."""
    from collections.abc import Generator

    from runink.core.events import emit_lineage
    from runink.core.hooks import HookFailure
    from runink.core.model import LineageEvent

    order: list[str] = []
    seen_after: list[object] = []

    class Around:
        @hookimpl(wrapper=True)
        def runink_lineage_event(self, event: LineageEvent) -> Generator[None, list[object], list[object]]:
            order.append(f"before {event.run_id}")
            results = yield
            seen_after.extend(results)
            order.append("after")
            return results

    class Sink:
        def __init__(self, name: str) -> None:
            self.name = name

        @hookimpl
        def runink_lineage_event(self, event: LineageEvent) -> None:
            order.append(self.name)

    class Broken:
        @hookimpl
        def runink_lineage_event(self, event: LineageEvent) -> None:
            order.append("broken")
            raise ConnectionError("catalog down")

    plugins = [("first", Sink("first")), ("broken", Broken()), ("second", Sink("second")), ("around", Around())]
    with plugin_manager(*plugins, entrypoints=False) as manager, caplog.at_level(logging.WARNING, "runink.plugins"):
        failed = emit_lineage(manager, LineageEvent("START", "run-7", "job", "herd"))
    assert failed == ["broken"]
    assert order[0] == "before run-7" and order[-1] == "after"
    assert sorted(order[1:-1]) == ["broken", "first", "second"]
    assert [(f.plugin, type(f.error)) for f in seen_after if isinstance(f, HookFailure)] == [
        ("broken", ConnectionError)
    ]
    assert "plugin broken raised in runink_lineage_event: ConnectionError: catalog down" in caplog.text


def test_configure_is_historic_for_plugins_registered_later(tmp_path: Path) -> None:
    """A plugin registered after start-up still receives the configuration; one whose
    runink_configure raises then is failed and unregistered, as at start-up."""
    seen: list[str] = []

    class Late:
        @hookimpl
        def runink_configure(self, config: RuninkConfig) -> None:
            seen.append(config.plugin_options("late")["colour"])

    class LateRaiser:
        @hookimpl
        def runink_configure(self, config: RuninkConfig) -> None:
            raise RuntimeError("no token")

        @hookimpl
        def runink_export_log(self, entry: object) -> None:
            pass

    config = RuninkConfig(plugin={"late": {"colour": "green"}}, data_dir=tmp_path)
    with plugin_manager(config=config, entrypoints=False) as manager:
        assert manager.register(Late(), "late").status == "loaded"
        assert seen == ["green"]
        record = manager.register(LateRaiser(), "late-raiser")
        assert record.status == "failed"
        assert record.error == "runink_configure raised RuntimeError: no token"
        assert "late-raiser" not in manager.implementers("runink_export_log")
        assert manager.pm.get_plugin("late-raiser") is None


def test_combined_hook_answers_carry_the_plugin_and_a_raise_names_it() -> None:
    from runink.core.errors import PluginError
    from runink.core.model import Node, NodeRejection, PlacementRequest, Resources
    from runink.core.scheduling import filter_nodes

    class NoB:
        @hookimpl
        def runink_filter_nodes(self, request: PlacementRequest, nodes: list[Node]) -> list[NodeRejection]:
            return [NodeRejection(n.id, "not b") for n in nodes if n.id == "b"]

    class Crash:
        @hookimpl
        def runink_filter_nodes(self, request: PlacementRequest, nodes: list[Node]) -> None:
            raise KeyError("labels")

    nodes = [Node("a", Resources(), Resources()), Node("b", Resources(), Resources())]
    request = PlacementRequest("t1", "herd", Resources())
    with plugin_manager(("no-b", NoB()), entrypoints=False) as manager:
        kept, rejections = filter_nodes(manager, request, nodes)
        assert [n.id for n in kept] == ["a"] and [(r.node_id, r.plugin) for r in rejections] == [("b", "no-b")]
        crash = pytest.raises(PluginError, match="plugin crash failed in runink_filter_nodes: KeyError")
        with registered_plugin(manager, Crash(), "crash"), crash:
            filter_nodes(manager, request, nodes)


def test_hook_calls_are_seen_by_pluggy_call_monitoring() -> None:
    """Every core hook call goes through pluggy, so add_hookcall_monitoring sees it with its implementations."""
    from runink.core.events import export_log
    from runink.core.model import LogEntry

    seen: list[tuple[str, list[str]]] = []

    class Exporter:
        @hookimpl
        def runink_export_log(self, entry: LogEntry) -> None:
            pass

    with plugin_manager(("exporter", Exporter()), entrypoints=False) as manager:
        undo = manager.pm.add_hookcall_monitoring(
            lambda name, impls, kwargs: seen.append((name, [impl.plugin_name for impl in impls])),
            lambda outcome, name, impls, kwargs: None,
        )
        export_log(manager, LogEntry("hello"))
        undo()
    assert seen == [("runink_export_log", ["exporter"])]


def test_a_package_that_names_a_driver_as_runinks_own_does_not_take_it_away(
    fake_dist: FakeDist, on_sys_path: OnSysPath, caplog: pytest.LogCaptureFixture
) -> None:
    """Both were refused: installing a package whose storage driver was named `csv` made every
    pipeline's csv source fail "registered by more than one package". Two other packages
    naming one driver alike are still refused: neither can be told to win."""
    from runink.core.driverload import import_driver
    from runink.core.errors import DriverLoadError
    from runink.core.interfaces.storage import Storage
    from runink.plugins.storage.csv import CsvStorage

    drivers = {"runink.storage": {"csv": "shadow:Csv", "twin": "shadow:Csv"}}
    on_sys_path(fake_dist("shadow", "1.0", drivers, {"shadow.py": "Csv = object\n"}))
    on_sys_path(fake_dist("twin", "1.0", {"runink.storage": {"twin": "twin:Csv"}}, {"twin.py": "Csv = object\n"}))
    with caplog.at_level("WARNING"):
        assert import_driver(Storage, "csv") is CsvStorage
    assert "runink.storage driver 'csv' of shadow is ignored: Runink's own driver has that name" in caplog.text
    with pytest.raises(DriverLoadError, match="'twin' is registered by more than one package"):
        import_driver(Storage, "twin")
