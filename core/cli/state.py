"""What every command shares: the config and the plugin manager, both loaded once and lazily."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from runink.core.cli import exec_fast

if TYPE_CHECKING:  # (imported when first used: a command that needs neither starts faster)
    from runink.core.cli.cluster_settings import ClusterSettings
    from runink.core.config import RuninkConfig
    from runink.core.errors import ConfigError
    from runink.core.plugins import PluginManager


class CliState:
    """The options read before the CLI is built, and what is loaded once for the command: the
    config, the plugin manager. (A plain class: ``dataclasses`` costs ~13 ms of a start.)"""

    def __init__(
        self,
        config_path: Path | None = None,
        debug: bool = False,
        overrides: dict[str, str] | None = None,
        daemon: bool = False,  # runink server, agent, barn serve: long-running, logged to a collector
        serves_metrics: bool = False,  # those and runink run: the commands that serve [metrics] address
        _config: RuninkConfig | None = None,
        _plugins: PluginManager | None = None,
    ) -> None:
        self.config_path = config_path
        self.debug = debug
        self.overrides = {} if overrides is None else overrides
        self.daemon = daemon
        self.serves_metrics = serves_metrics
        self._config = _config
        self._config_error: ConfigError | None = None
        self._plugins = _plugins
        self._logs_set = False
        self._settings: ClusterSettings | None = None

    @classmethod
    def from_argv(cls, argv: list[str]) -> CliState:
        """Read the options needed before the CLI is built (plugins may add commands)."""
        config_path = None
        overrides: dict[str, str] = {}
        own = _own_args(argv)  # (not the words of the command `runink exec` runs)
        for index, arg in enumerate(own):
            if arg in ("--config", "-c") and index + 1 < len(own):
                config_path = Path(own[index + 1])
            elif arg.startswith("--config="):
                config_path = Path(arg.split("=", 1)[1])
            elif arg == "--set" and index + 1 < len(own):
                # --set KEY=VALUE (run, test) applies before plugins load, so they see it too
                key, eq, value = own[index + 1].partition("=")
                if eq and key.strip():
                    overrides[key.strip()] = value
            elif arg in ("--metrics", "--metrics-port") and index + 1 < len(own):
                # (server, agent, barn serve; run): the exporter plugins serve once configured;
                # a value that is not an address is left to the command's option to refuse
                value = own[index + 1]
                address = f"127.0.0.1:{value}" if arg == "--metrics-port" else value
                if host_port(address) is not None:
                    overrides["metrics.address"] = address
            elif arg == "--":
                break
        debug = "--debug" in own or os.environ.get("RUNINK_DEBUG", "") not in ("", "0", "false")
        words = _command_words(argv)
        daemon = words[:1] in (["server"], ["agent"]) or words[:2] == ["barn", "serve"]
        return cls(
            config_path=config_path,
            debug=debug,
            overrides=overrides,
            daemon=daemon,
            serves_metrics=daemon or words[:1] == ["run"],
        )

    def try_config(self) -> RuninkConfig | None:
        """The config, or None if it is invalid (the error is kept for ``config()``)."""
        if self._config is None and self._config_error is None:
            from runink.core.config import load_config
            from runink.core.errors import ConfigError

            try:
                self._config = load_config(self.config_path, overrides=self.overrides)
            except ConfigError as exc:
                self._config_error = exc
            else:
                self._apply_log_settings(self._config)
        return self._config

    def cluster_settings(self, *, logs: bool = True) -> ClusterSettings | None:
        """What the cluster commands take from the config, or None if it is invalid (as
        ``try_config``): kept between runs while the config is unchanged (``cluster_settings``),
        so these commands do not load the config in full. ``logs``: apply the config's log
        settings too (a caller that logs nothing need not)."""
        if self._settings is None:
            from runink.core.cli import cluster_settings as kept

            key = kept.fingerprint(self.config_path, self.overrides)
            self._settings = kept.load(key)
            if self._settings is None:
                config = self.try_config()
                if config is None:
                    return None
                self._settings = kept.ClusterSettings.of(config)
                kept.save(key, self._settings)
            if logs and not self._logs_set:
                self._logs_set = True
                settings = self._settings
                _apply_log_settings(settings.log_level, settings.log_format, settings.trace, self.debug, self.daemon)
        return self._settings

    def config(self) -> RuninkConfig:
        config = self.try_config()
        if config is None:
            assert self._config_error is not None
            raise self._config_error
        return config

    def plugins(self) -> PluginManager:
        """The plugin manager: built from the config when it is valid, from defaults otherwise."""
        if self._plugins is None:
            from runink.core.config import RuninkConfig
            from runink.core.plugins import create_plugin_manager

            config = self.try_config()
            if config is None:
                config = RuninkConfig()
                self._apply_log_settings(config)
            if not self.serves_metrics and config.metrics.address is not None:
                # (a config file shared by every command names the address of the ones that
                # serve: `runink jobs list` must not take, or fight for, that port)
                config = config.model_copy(update={"metrics": config.metrics.model_copy(update={"address": None})})
            self._plugins = create_plugin_manager(config)
        return self._plugins

    def _apply_log_settings(self, config: RuninkConfig) -> None:
        """The log level and format the config asks for, once the config is known."""
        if not self._logs_set:
            self._logs_set = True
            _apply_log_settings(config.log.level, config.log.format, config.plugins.trace, self.debug, self.daemon)

    def close(self) -> None:
        """The command ended: plugins send what they buffer (``runink_unconfigure``)."""
        if self._plugins is not None:
            self._plugins.unconfigure()


def host_port(text: str) -> tuple[str, int] | None:
    """``HOST:PORT`` with a host (``[v6]:PORT`` too) as (host, port), or None if it is not one."""
    from runink.core.units import split_address

    found = split_address(text)
    if found is None or not found[0] or any(c.isspace() or c == "/" for c in found[0]):
        return None
    return found


_VALUED = ("--config", "-c", "--set", "--metrics", "--metrics-port")  # options that take a value
# `runink exec`'s options that take a value: its COMMAND starts at the first other word
_EXEC_VALUED = (*exec_fast.VALUED, "--command", "--secret")


def _own_args(argv: list[str]) -> list[str]:
    """``argv`` up to where it stops being runink's: ``runink exec``'s COMMAND and what follows
    it are the command's own (``runink exec /bin/echo --config x`` reads no config from x)."""
    first = next(_word_indexes(argv), None)
    if first is None or argv[first] != "exec":
        return argv
    index = first + 1
    while index < len(argv) and argv[index].startswith("-") and argv[index] not in ("-", "--"):
        index += 2 if argv[index] in _EXEC_VALUED else 1
    return argv[:index]


def _word_indexes(argv: list[str]) -> Iterator[int]:
    """Where the command's words are in ``argv``: not options, nor the values of runink's own."""
    return (i for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] not in _VALUED))


def _command_words(argv: list[str]) -> list[str]:
    """The command's words (``barn serve``), its options and their values left out."""
    return [argv[i] for i in _word_indexes(argv)]


def _apply_log_settings(level: str, format: str, trace: bool, debug: bool, daemon: bool = False) -> None:
    import logging  # (~6 ms: `runink exec`'s short path logs nothing and does without)

    from runink.core import logs

    logging.getLogger("runink").setLevel(logging.DEBUG if debug else level.upper())
    logs.setup(format, daemon)
    if trace:
        logging.getLogger("runink.plugins.trace").setLevel(logging.INFO)
