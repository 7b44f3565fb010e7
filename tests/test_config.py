"""Configuration: precedence, types, and errors naming the key and where it came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from runink.core.config import RuninkConfig, load_config
from runink.core.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.executor.driver == "auto"
    assert config.scheduler.driver == "spread"
    assert config.file is None
    assert config.source_of("executor.driver") == "default"


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    file = write(
        tmp_path / "runink.toml",
        'herd = "finance"\n\n[executor]\ndriver = "linux"\noptions = { degrade = true }\n\n'
        '[scheduler]\ndriver = "binpack"\n',
    )
    config = load_config(
        file,
        environ={"RUNINK_SCHEDULER__DRIVER": "spread", "RUNINK_HERD": "risk"},
        overrides={"herd": "ops"},
    )
    assert config.executor.driver == "linux"
    assert config.executor.options == {"degrade": True}
    assert config.scheduler.driver == "spread"  # env beats file
    assert config.herd == "ops"  # a flag beats env
    assert config.source_of("executor.driver") == f"{file}:4"
    assert config.source_of("executor.options.degrade") == f"{file}:5"
    assert config.source_of("scheduler.driver") == "$RUNINK_SCHEDULER__DRIVER"
    assert config.source_of("herd") == "--set herd"


def test_plugin_control_variables() -> None:
    config = load_config(
        environ={
            "RUNINK_DISABLE_PLUGINS": "lineage-jsonl, runink.executors:process",
            "RUNINK_LOAD_PLUGINS": "example-cli",
            "RUNINK_TRACE_PLUGINS": "1",
        },
    )
    assert config.plugins.disable == ["lineage-jsonl", "runink.executors:process"]
    assert config.plugins.load == ["example-cli"]
    assert config.plugins.trace is True


def test_file_found_by_variable_cwd_and_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg" / "runink"
    xdg.mkdir(parents=True)
    write(xdg / "config.toml", 'herd = "from-xdg"\n')
    assert load_config().herd == "from-xdg"
    write(tmp_path / "runink.toml", 'herd = "from-cwd"\n')
    assert load_config().herd == "from-cwd"
    other = write(tmp_path / "other.toml", 'herd = "from-var"\n')
    monkeypatch.setenv("RUNINK_CONFIG", str(other))
    assert load_config().herd == "from-var"


def test_type_error_names_file_line_and_key(tmp_path: Path) -> None:
    file = write(tmp_path / "runink.toml", '[plugins]\ntrace = "sometimes"\n')
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert str(info.value).startswith(f"{file}:2: plugins.trace:")


def test_unknown_key_in_file(tmp_path: Path) -> None:
    file = write(tmp_path / "runink.toml", '[executor]\ndriver = "process"\ndrvier = "x"\n')
    with pytest.raises(ConfigError, match=rf"{file}:3: executor.drvier: unknown key"):
        load_config(file, environ={})


def test_unknown_variable_is_named() -> None:
    with pytest.raises(ConfigError, match=r"\$RUNINK_EXECUTER__DRIVER: executer: unknown key"):
        load_config(environ={"RUNINK_EXECUTER__DRIVER": "linux"})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "runink.toml", "herd = \n")
    with pytest.raises(ConfigError, match=rf"^{file}: invalid TOML"):
        load_config(file, environ={})


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_bad_herd_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$RUNINK_HERD: herd: String should match"):
        load_config(environ={"RUNINK_HERD": "Finance Team"})


def test_plugin_options_tables(tmp_path: Path) -> None:
    file = write(tmp_path / "runink.toml", '[plugin.lineage-jsonl]\npath = "/tmp/x.jsonl"\n')
    config = load_config(file, environ={})
    assert config.plugin_options("lineage-jsonl") == {"path": "/tmp/x.jsonl"}
    assert config.plugin_options("other") == {}


def test_json_values_from_environment() -> None:
    config = load_config(environ={"RUNINK_EXECUTOR__OPTIONS": '{"degrade": true}'})
    assert config.executor.options == {"degrade": True}


def test_variables_other_commands_read_are_not_config_keys() -> None:
    """`runink barn` reads RUNINK_BARN_TLS_* and RUNINK_BARN_SECRET_FILE, the env secret driver
    RUNINK_SECRET_*, the CLI RUNINK_TOKEN: exported for those, they must not break the rest."""
    environ = {name: "x" for name in ("RUNINK_BARN_TLS_CA", "RUNINK_BARN_TLS_CERT", "RUNINK_BARN_TLS_KEY",
                                      "RUNINK_BARN_SECRET_FILE", "RUNINK_TOKEN", "RUNINK_SECRET_TEAM__DB")}  # fmt: skip
    assert load_config(environ=environ) == load_config(environ={})
    with pytest.raises(ConfigError, match="barn_tls_cq: unknown key"):  # (a typo still is one)
        load_config(environ={"RUNINK_BARN_TLS_CQ": "x"})


def test_every_driver_section_uses_driver_and_options() -> None:
    from runink.core.drivers import CONFIGURED_DRIVERS

    for section in CONFIGURED_DRIVERS:
        model = RuninkConfig.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), section
        fields = model.model_fields
        assert {"driver", "options"} <= set(fields), section
        assert not {"policy", "backend"} & set(fields), section


@pytest.mark.parametrize(("section", "old"), [("scheduler", "policy"), ("barn", "backend"), ("secrets", "backend")])
def test_an_old_driver_key_still_works_with_a_warning(tmp_path: Path, section: str, old: str) -> None:
    file = write(tmp_path / "runink.toml", f'[{section}]\n{old} = "x"\n')
    with pytest.warns(
        FutureWarning, match=rf"^{re.escape(str(file))}:2: {section}\.{old} is deprecated: use {section}\.driver$"
    ):
        config = load_config(file, environ={})
    assert getattr(config, section).driver == "x"
    assert config.source_of(f"{section}.driver") == f"{file}:2"


def test_an_old_driver_key_and_driver_both_set_is_an_error(tmp_path: Path) -> None:
    file = write(tmp_path / "runink.toml", '[barn]\nbackend = "memory"\ndriver = "raft"\n')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(file))}:2: barn.backend and barn.driver both set"):
        load_config(file, environ={})
