"""The config's ``[plugin.NAME]`` tables checked against what the plugins declare (options_schema)."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_types import FakeDist, OnSysPath

from runink.core.config import load_config
from runink.core.errors import ConfigError
from runink.core.plugin_options import plugin_schema
from runink.core.plugins import PluginManager, create_plugin_manager

THIRD_PARTY = """
from runink.core import hookimpl

options_schema = {"colour": str, "size": int}
SEEN = []

@hookimpl
def runink_configure(config):
    SEEN.append(config.plugin_options("acme-paint"))
"""

UNDECLARED = """
from runink.core import hookimpl

SEEN = []

@hookimpl
def runink_configure(config):
    SEEN.append(config.plugin_options("acme-free"))
"""


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "runink.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n{text}', encoding="utf-8")
    return path


def failures(manager: PluginManager) -> dict[str, str | None]:
    return {record.name: record.error for record in manager.records() if record.status == "failed"}


def test_an_unknown_key_fails_its_plugin_naming_the_table_the_key_its_line_and_the_options(tmp_path: Path) -> None:
    """As a raise in its runink_configure: the plugin is failed with the reason, never configured."""
    path = config_file(tmp_path, '[plugin.fluentd]\nhost = "127.0.0.1"\nhots = "typo"\n')
    manager = create_plugin_manager(load_config(path))
    assert failures(manager) == {
        "fluentd": f"[plugin.fluentd] hots ({path}:4): unknown option; "
        "the options are ack_timeout, buffer, buffer_bytes, chunk, host, port, tag"
    }
    assert manager.pm.get_plugin("fluentd") is None


def test_a_value_of_the_wrong_type_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = config_file(tmp_path, '[plugin.storage-s3]\nendpoint = "http://127.0.0.1:9"\nretries = "sekrit-value"\n')
    with pytest.raises(ConfigError) as caught:
        create_plugin_manager(load_config(path))
    assert str(caught.value) == f"[plugin.storage-s3] retries ({path}:4): must be an integer, got a string"
    assert "sekrit" not in str(caught.value)


def test_a_storage_drivers_unknown_option_is_refused(tmp_path: Path) -> None:
    path = config_file(tmp_path, '[plugin.storage-s3]\nregoin = "eu-west-1"\n')
    with pytest.raises(ConfigError, match=r"\[plugin.storage-s3\] regoin \(.*:3\): unknown option; .*region"):
        create_plugin_manager(load_config(path))


def test_text_from_the_environment_is_converted_to_the_declared_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RUNINK_PLUGIN__OPA__TIMEOUT=5`` is the number 5 to the plugin, as ``timeout = 5`` in the file."""
    monkeypatch.setenv("RUNINK_PLUGIN__OPA__URL", "http://127.0.0.1:9")
    monkeypatch.setenv("RUNINK_PLUGIN__OPA__TIMEOUT", "5")
    manager = create_plugin_manager(load_config(config_file(tmp_path, "")))
    opa = manager.pm.get_plugin("opa")
    assert {r.name: r.status for r in manager.records()}["opa"] == "loaded"
    assert opa.target is not None and opa.target.timeout == 5.0

    monkeypatch.setenv("RUNINK_PLUGIN__OPA__TIMEOUT", "soon")
    manager = create_plugin_manager(load_config(config_file(tmp_path, "")))
    assert failures(manager) == {
        "opa": "[plugin.opa] timeout ($RUNINK_PLUGIN__OPA__TIMEOUT): must be a number, got a string"
    }


def test_a_hyphenated_plugins_table_can_be_set_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No variable's name holds a hyphen: RUNINK_PLUGIN__LINEAGE_JSONL__PATH was a table
    "lineage_jsonl" nobody reads, and the path was lost (a docs review's run)."""
    monkeypatch.setenv("RUNINK_PLUGIN__LINEAGE_JSONL__PATH", str(tmp_path / "events.jsonl"))
    config = load_config(config_file(tmp_path, ""))
    with caplog.at_level(logging.WARNING, logger="runink.config"):
        manager = create_plugin_manager(config)
    assert {r.name: r.status for r in manager.records()}["lineage-jsonl"] == "loaded"
    assert config.plugin_options("lineage-jsonl") == {"path": str(tmp_path / "events.jsonl")}
    assert "lineage_jsonl" not in config.plugin
    assert config.source_of("plugin.lineage-jsonl.path") == "$RUNINK_PLUGIN__LINEAGE_JSONL__PATH"
    assert [r for r in caplog.records if r.name == "runink.config"] == []


def test_a_table_nobody_reads_is_a_warning_with_the_likely_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_file(tmp_path, "[plugin.fluentdd]\nport = 1\n[plugin.storage-csv]\nx = 1\n")
    with caplog.at_level(logging.WARNING, logger="runink.config"):
        create_plugin_manager(load_config(path))
    warnings = [r.getMessage() for r in caplog.records if r.name == "runink.config"]
    assert warnings == [
        f"[plugin.fluentdd] ({path}:2): no installed plugin reads this table; did you mean [plugin.fluentd]?",
        # a local file's driver gets no options: only remote schemes' drivers read a table
        f"[plugin.storage-csv] ({path}:4): no installed plugin reads this table; did you mean [plugin.storage-s3]?",
    ]


def test_a_disabled_plugins_table_is_neither_checked_nor_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_file(tmp_path, '[plugins]\ndisable = ["fluentd"]\n[plugin.fluentd]\nanything = 1\n')
    with caplog.at_level(logging.WARNING, logger="runink.config"):
        create_plugin_manager(load_config(path))
    assert not [r for r in caplog.records if r.name == "runink.config"]


def test_a_third_party_plugin_declares_its_table(
    tmp_path: Path, fake_dist: FakeDist, on_sys_path: OnSysPath, caplog: pytest.LogCaptureFixture
) -> None:
    on_sys_path(
        fake_dist(
            "acme",
            "1.0",
            {"runink": {"acme-paint": "acme_paint", "acme-free": "acme_free"}},
            {"acme_paint.py": THIRD_PARTY, "acme_free.py": UNDECLARED},
        )
    )
    import acme_free
    import acme_paint

    good = config_file(tmp_path, '[plugin.acme-paint]\ncolour = "red"\nsize = "3"\n[plugin.acme-free]\nwhat = 1\n')
    with caplog.at_level(logging.WARNING, logger="runink.config"):
        create_plugin_manager(load_config(good))
    assert acme_paint.SEEN[-1] == {"colour": "red", "size": 3}
    assert acme_free.SEEN[-1] == {"what": 1}  # declares nothing: its table is its own business
    assert not [r for r in caplog.records if r.name == "runink.config"]

    calls = len(acme_paint.SEEN)
    bad = config_file(tmp_path, '[plugin.acme-paint]\ncolor = "red"\n')
    manager = create_plugin_manager(load_config(bad))
    assert failures(manager) == {
        "acme-paint": f"[plugin.acme-paint] color ({bad}:3): unknown option; the options are colour, size"
    }
    assert len(acme_paint.SEEN) == calls  # not configured with a table it refused


def test_every_builtin_plugin_that_reads_a_table_declares_it() -> None:
    """A built-in plugin calling ``plugin_options`` declares ``options_schema``, and only such one."""
    manager = create_plugin_manager()
    for name, plugin in manager.pm.list_name_plugin():
        source = inspect.getsource(inspect.getmodule(plugin) or sys.modules[type(plugin).__module__])
        reads = "plugin_options(" in source
        assert reads == (plugin_schema(plugin) is not None), name


def test_the_cli_says_it_in_one_line_and_lists_the_plugin_failed(tmp_path: Path) -> None:
    path = config_file(tmp_path, "[plugin.catalog]\nenabled = 3\n")
    runink = Path(sys.executable).with_name("runink")
    done = subprocess.run(
        [str(runink), "--config", str(path), "plugins", "list", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    reason = f"[plugin.catalog] enabled ({path}:3): must be true or false, got an integer"
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"WARNING runink.plugins: plugin catalog failed: {reason}\n"
    [catalog] = [record for record in json.loads(done.stdout) if record["name"] == "catalog"]
    assert (catalog["status"], catalog["error"]) == ("failed", reason)


def test_a_wrong_authenticator_table_keeps_what_the_server_checks_to_refuse_to_start(tmp_path: Path) -> None:
    """A server refuses to start when a failed plugin had runink_authenticate (fail closed):
    a plugin failed by its table keeps that trace as one failed in runink_configure does."""
    path = config_file(tmp_path, '[plugin.oidc]\nissuer = "https://login.example.org"\naudiance = "x"\n')
    manager = create_plugin_manager(load_config(path))
    [oidc] = [record for record in manager.records() if record.name == "oidc"]
    assert oidc.status == "failed" and "audiance" in (oidc.error or "")
    assert "runink_authenticate" in oidc.details["hooks"]
