"""Configuration: precedence, types, and errors naming the key and where it came from."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runink.core.config import RuninkConfig, Section, load_config
from runink.core.config_trust import trust
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
    trust(tmp_path / "runink.toml")  # (a project's file: test_a_project_config_is_read_once_trusted)
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
    with pytest.raises(ConfigError, match=r"\$RUNINK_HERD: herd: Expected `str` matching regex"):
        load_config(environ={"RUNINK_HERD": "Finance Team"})
    # a pattern's $ would let one trailing line break through (Python's re): every one ends in \Z
    for key, value in (("RUNINK_HERD", "finance\n"), ("RUNINK_COST__CURRENCY", "EUR\n")):
        with pytest.raises(ConfigError, match="matching regex"):
            load_config(environ={key: value})


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
        model = RuninkConfig.field_types()[section]
        assert isinstance(model, type) and issubclass(model, Section), section
        fields = model.field_types()
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[limits]\nmemory = "0"\n', "2: limits.memory: must be more than 0 and at most 1Ei bytes, got '0'"),
        ("[limits]\npids = 0\n", "2: limits.pids: Expected `int` >= 1"),
        ('[herds.finance]\ndrift = "stop"\n', "2: herds.finance.drift: Invalid enum value 'stop'"),
        ('[herds.finance]\ndirft = "warn"\n', "2: herds.finance.dirft: unknown key"),
        ('[paths]\nallow = ["/data", "data"]\n', "2: paths.allow: 'data' is not an absolute path"),
        ('[paths]\nallow = ["/data", 3]\n', "2: paths.allow: Expected a path, got `int`"),
        ('[run]\nkeep_for = "soon"\n', "2: run.keep_for: "),
        ("[scaling]\nmin_nodes = 5\nmax_nodes = 2\n", "3: scaling: min_nodes 5 is more than max_nodes 2"),
    ],
)
def test_a_bad_value_names_its_line_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    file = write(tmp_path / "runink.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert str(info.value).startswith(f"{file}:{expected}"), str(info.value)


def test_text_from_variables_becomes_the_type_its_key_expects() -> None:
    config = load_config(
        environ={
            "RUNINK_PLUGINS__TRACE": "true",
            "RUNINK_LIMITS__PIDS": "64",
            "RUNINK_RUN__FAIL_ON_INVALID": "0.5",
            "RUNINK_PATHS__ALLOW": "/a,/b",
            "RUNINK_LIMITS__MEMORY": "512Mi",
        }
    )
    assert config.plugins.trace is True
    assert config.limits.pids == 64
    assert config.run.fail_on_invalid == 0.5
    assert config.paths.allow == [Path("/a"), Path("/b")]
    assert config.limits.memory_bytes == 512 * 2**20
    with pytest.raises(ConfigError, match=r"^\$RUNINK_LIMITS__PIDS: limits.pids: Expected `int`, got `str`$"):
        load_config(environ={"RUNINK_LIMITS__PIDS": "many"})


def test_a_copy_keeps_where_values_came_from_and_a_dump_is_plain_data(tmp_path: Path) -> None:
    file = write(tmp_path / "runink.toml", '[paths]\nallow = ["/data"]\n')
    config = load_config(file, environ={})
    copied = config.model_copy(update={"herd": "ops"}, deep=True)
    assert (copied.herd, config.herd) == ("ops", "default")
    assert copied.source_of("paths.allow") == f"{file}:2" and copied.file == file
    copied.paths.allow.append(Path("/other"))
    assert config.paths.allow == [Path("/data")]  # (deep)
    assert config.model_dump(mode="json")["paths"] == {"allow": ["/data"]}
    assert config.model_dump()["paths"] == {"allow": [Path("/data")]}
    assert RuninkConfig.model_validate(config.model_dump(mode="json")) == config


def test_a_weight_must_be_a_finite_number() -> None:
    with pytest.raises(ConfigError, match=r"^\$RUNINK_SCHEDULER__WEIGHTS: scheduler.weights: Expected `float` >="):
        load_config(environ={"RUNINK_SCHEDULER__WEIGHTS": '{"spread": NaN}'})
    assert load_config(environ={"RUNINK_SCHEDULER__WEIGHTS": '{"spread": 2}'}).scheduler.weights == {"spread": 2.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'herd = "a"\nname = "\xff\xfe"\n', "runink.toml:2: not UTF-8 text (invalid start byte)"),
        (b'data_dir = ""\n', "runink.toml:1: data_dir: '.' is not an absolute path"),  # (the current folder)
        (b'data_dir = "/etc/passwd"\n', "runink.toml:1: data_dir: '/etc/passwd' is not a folder"),
        (b'[paths]\nallow = ["/da\\u0000ta"]\n', "runink.toml:2: paths.allow: '/da\\x00ta' contains a NUL byte"),
    ],
)
def test_a_config_that_cannot_be_used_is_one_line_naming_file_and_line(
    tmp_path: Path, text: bytes, message: str
) -> None:
    # (each was an internal error: UnicodeDecodeError, NotADirectoryError, "embedded null byte")
    file = tmp_path / "runink.toml"
    file.write_bytes(text)
    with pytest.raises(ConfigError) as raised:
        load_config(file, environ={})
    assert str(raised.value) == f"{tmp_path}/{message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # each was taken: nothing listened on the port, the herd's policy matched no herd
        ('[metrics]\naddress = "127.0.0.1:99999"\n', "metrics.address: '127.0.0.1:99999': expected HOST:PORT"),
        ('[herds.Finance]\ndrift = "block"\n', "herds.Finance: herd 'Finance': expected 1-63 lower-case letters"),
        ("[run]\nmax_parallel = 1000000000000\n", "run.max_parallel: Expected `int` <= 10000"),
    ],
)
def test_values_that_could_never_work_are_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    file = write(tmp_path / "runink.toml", text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(file, environ={})


def test_a_project_config_is_read_once_trusted_and_again_after_each_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cloned project's ./runink.toml chose the process executor (its steps ran as root,
    # unconfined), allowed "/" (its sinks overwrote files outside) and could name the server
    # the CLI sends its token to.
    monkeypatch.chdir(tmp_path)
    project = write(tmp_path / "runink.toml", '[executor]\ndriver = "process"\n')
    with pytest.raises(ConfigError, match=rf"^{project}: a project's config, not trusted yet: .*`runink config trust`"):
        load_config()
    trust(project)
    assert load_config().executor.driver == "process"
    write(project, '[executor]\ndriver = "process"\n[paths]\nallow = ["/"]\n')  # (a pull changed it)
    with pytest.raises(ConfigError, match=rf"^{project}: changed since you trusted it"):
        load_config()
    assert load_config(project).paths.allow == [Path("/")]  # named by the user: theirs, no trust needed
    assert load_config(environ={"RUNINK_CONFIG": str(project)}).paths.allow == [Path("/")]


def test_runink_config_trust_lets_the_cli_read_the_file(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write(project / "runink.toml", 'herd = "team"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNINK_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "c")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "runink", *args]
        return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False)

    refused = cli("config", "show", "--json")
    assert refused.returncode == 2 and "not trusted yet" in refused.stderr and "Traceback" not in refused.stderr
    trusted = cli("config", "trust", "--json")
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["file"] == str((project / "runink.toml").resolve())
    shown = cli("config", "show", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["config"]["herd"] == "team", shown.stderr
    write(project / "runink.toml", "[executor\n")  # (no TOML: it was trusted, and the next run failed: a review)
    broken = cli("config", "trust")
    assert broken.returncode == 2 and "not trusted: not a TOML file" in broken.stderr, broken.stderr
    assert "changed since you trusted it" in cli("config", "show").stderr
