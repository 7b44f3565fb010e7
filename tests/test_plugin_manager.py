"""Loading hook plugins from entry points: status per plugin, never a failed start-up."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from runink.core import hookimpl
from runink.core.config import PluginsConfig, RuninkConfig
from runink.core.plugins import PluginManager, create_plugin_manager
from runink.testing import plugin_manager, registered_plugin

GOOD = """
from runink.core import hookimpl

@hookimpl
def runink_export_log(entry):
    SEEN.append(entry.message)

SEEN = []
"""


def by_name(manager: PluginManager) -> dict[str, object]:
    return {record.name: record for record in manager.records()}


def test_builtin_plugins_load_with_package_and_version() -> None:
    manager = create_plugin_manager()
    records = by_name(manager)
    for name in ("resource-fit", "node-labels", "log-export", "lineage-jsonl"):
        record = records[name]
        assert record.status == "loaded", record  # type: ignore[attr-defined]
        assert record.package == "runink" and record.version  # type: ignore[attr-defined]
        assert record.source == "builtin"  # type: ignore[attr-defined]
    assert records["resource-fit"].hooks == ("runink_filter_nodes",)  # type: ignore[attr-defined]


def test_third_party_plugin_is_discovered(fake_dist: Callable[..., Path], on_sys_path: Callable[[Path], None]) -> None:
    on_sys_path(fake_dist("acme-logs", "1.4.2", {"runink": {"acme-logs": "acme_logs"}}, {"acme_logs.py": GOOD}))
    manager = create_plugin_manager()
    record = by_name(manager)["acme-logs"]
    assert (record.status, record.package, record.version, record.source) == (  # type: ignore[attr-defined]
        "loaded",
        "acme-logs",
        "1.4.2",
        "third-party",
    )
    assert "acme-logs" in manager.implementers("runink_export_log")


def test_import_error_is_recorded_and_others_still_load(
    fake_dist: Callable[..., Path], on_sys_path: Callable[[Path], None], caplog: pytest.LogCaptureFixture
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
    assert record.status == "failed"  # type: ignore[attr-defined]
    assert "ModuleNotFoundError" in record.error and "runink_module_that_does_not_exist" in record.error  # type: ignore[attr-defined]
    assert by_name(manager)["resource-fit"].status == "loaded"  # type: ignore[attr-defined]
    assert "broken" in caplog.text


def test_unknown_hook_name_fails_the_plugin(
    fake_dist: Callable[..., Path], on_sys_path: Callable[[Path], None]
) -> None:
    source = "from runink.core import hookimpl\n\n@hookimpl\ndef runink_filter_nodez(request, nodes):\n    return []\n"
    on_sys_path(fake_dist("typo-plugin", "0.1", {"runink": {"typo": "typo_plugin"}}, {"typo_plugin.py": source}))
    manager = create_plugin_manager()
    record = by_name(manager)["typo"]
    assert record.status == "failed"  # type: ignore[attr-defined]
    assert "runink_filter_nodez" in record.error  # type: ignore[attr-defined]
    assert "typo" not in manager.implementers("runink_filter_nodes")
    manager.pm.check_pending()  # nothing unknown is left registered


def test_wrong_hook_arguments_fail_at_registration() -> None:
    class Bad:
        @hookimpl
        def runink_filter_nodes(self, request, nodes, extra):  # type: ignore[no-untyped-def]
            return []

    manager = PluginManager()
    record = manager.register(Bad(), "bad-args")
    assert record.status == "failed"
    assert "extra" in (record.error or "")


def test_disable_and_allow_list(fake_dist: Callable[..., Path], on_sys_path: Callable[[Path], None]) -> None:
    on_sys_path(fake_dist("acme-logs", "1.0", {"runink": {"acme-logs": "acme_logs"}}, {"acme_logs.py": GOOD}))
    manager = create_plugin_manager(RuninkConfig(plugins=PluginsConfig(disable=["lineage-jsonl"])))
    assert by_name(manager)["lineage-jsonl"].status == "disabled"  # type: ignore[attr-defined]
    assert "lineage-jsonl" not in manager.implementers("runink_lineage_event")

    manager = create_plugin_manager(RuninkConfig(plugins=PluginsConfig(load=["something-else"])))
    assert by_name(manager)["acme-logs"].status == "disabled"  # type: ignore[attr-defined]
    assert "not in plugins.load" in by_name(manager)["acme-logs"].error  # type: ignore[attr-defined]
    assert by_name(manager)["resource-fit"].status == "loaded"  # type: ignore[attr-defined]  # builtins always load


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
            raise RuntimeError("needs [plugin.raiser] token")

    config = RuninkConfig(plugin={"reader": {"colour": "blue"}}, data_dir=tmp_path)
    with plugin_manager(("reader", Reader()), ("raiser", Raiser()), config=config) as manager:
        assert seen == ["blue"]
        record = by_name(manager)["raiser"]
        assert record.status == "failed"  # type: ignore[attr-defined]
        assert "needs [plugin.raiser] token" in record.error  # type: ignore[attr-defined]
        assert "raiser" not in manager.implementers("runink_configure")


def test_tracing_logs_every_hook_call(caplog: pytest.LogCaptureFixture) -> None:
    manager = PluginManager(PluginsConfig(trace=True))
    manager.load_entrypoints()
    with caplog.at_level(logging.INFO, logger="runink.plugins.trace"):
        manager.configure(RuninkConfig())
        manager.hook.runink_authenticate(request=None)
    assert "call runink_configure from lineage-jsonl" in caplog.text
    assert "runink_authenticate" in caplog.text


def test_registered_plugin_is_scoped_to_the_block() -> None:
    class Plugin:
        @hookimpl
        def runink_export_log(self, entry: object) -> None:
            pass

    with plugin_manager() as manager:
        with registered_plugin(manager, Plugin(), "temp") as name:
            assert name in manager.implementers("runink_export_log")
        assert "temp" not in manager.implementers("runink_export_log")


def test_runink_plugins_fixture_is_current_for_the_test(runink_plugins: PluginManager) -> None:
    """The pytest11 entry point provides the fixture; its manager is the process-wide one for the test."""
    from runink.core.plugins import get_plugin_manager

    class Exporter:
        @hookimpl
        def runink_export_log(self, entry: object) -> None:
            pass

    assert get_plugin_manager() is runink_plugins
    assert runink_plugins.register(Exporter(), "exporter").status == "loaded"
    assert "exporter" in get_plugin_manager().implementers("runink_export_log")
