"""Builds the ``runink`` CLI and runs it: plugin commands included, errors as one line.

The root group builds a command only when it is invoked, from its own module (or from the
plugins' ``runink_cli_commands`` for theirs), and lists every command from the command index
(``command_index``): ``runink --help`` imports no command module, no config and no plugin.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

import runink
from runink.core.cli import command_index
from runink.core.cli.command_index import BUILTIN, PLUGIN, CommandEntry
from runink.core.cli.output import exit_status, print_error
from runink.core.cli.state import CliState

if TYPE_CHECKING:  # (typer carries its own click)
    from typer._click import Command, Context, HelpFormatter

    from runink.core.plugins import PluginManager

#: modules of runink.core.cli whose register(app) adds top-level commands, in --help's order
BUILTIN_MODULES = (
    "plugins_cmd",
    "config_cmd",
    "contract_cmd",
    "run_cmd",
    "doctor_cmd",
    "init_cmd",
    "jobs_cmd",
    "cluster_cmd",
    "auth_cmd",
    "secret_cmd",
    "join_cmd",
)
#: the names those modules' commands take (tests/test_cli_index.py keeps the two in step): no
#: plugin's command answers one, whatever the index says (one edited by hand had a plugin's
#: command answer `runink exec`)
BUILTIN_COMMANDS = frozenset(
    {
        "agent", "audit", "cancel", "config", "contract", "cost", "doctor", "down", "exec", "herd",
        "init", "jobs", "login", "logs", "node", "nodes", "plugins", "rbac", "run", "secret",
        "server", "status", "submit", "test", "token", "up", "whoami",
    }
)  # fmt: skip


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"runink {runink.__version__}")
        raise typer.Exit()


def _typer(**settings: Any) -> typer.Typer:
    # plain click help: rich's formatting costs ~70 ms of imports on every --help
    return typer.Typer(pretty_exceptions_enable=False, rich_markup_mode=None, **settings)


class RootGroup(TyperGroup):
    """``runink``: its commands built when invoked, listed from the command index."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entries: list[CommandEntry] | None = None
        self._plugin_commands: dict[str, Command] | None = None
        self._listing = False  # while --help or completion lists: entries stand in for commands

    def _state(self, ctx: Context) -> CliState:
        state = ctx.find_root().obj
        assert isinstance(state, CliState), "the root context carries the CliState"
        return state

    def entries(self, ctx: Context) -> list[CommandEntry]:
        """Every top-level command: from the index, else from building them all (then indexed)."""
        if self._entries is None:
            state = self._state(ctx)
            key = command_index.fingerprint(state.config_path, state.overrides)
            self._entries = command_index.load(key)
            if self._entries is None:
                self._entries, files = self.build_all(state)
                command_index.save(key, self._entries, files)
        return self._entries

    def build_all(self, state: CliState) -> tuple[list[CommandEntry], set[str]]:
        """Build every command into ``self.commands``; their index entries and the files they come from."""
        entries: list[CommandEntry] = []
        files = {__file__}  # (how they are listed and ordered is this module's)
        for module in BUILTIN_MODULES:
            for name, command in _module_commands(module).items():
                self.commands[name] = command
                entries.append(_entry(name, command, BUILTIN, module))
                files.update(_source_files(command, f"runink.core.cli.{module}"))
        built_in = {entry.name for entry in entries}
        for name, command in self._plugins_commands(state).items():
            if name in built_in:  # a plugin cannot take a built-in command's name
                logging.getLogger(__name__).warning("plugin command %r ignored: a built-in command has it", name)
                continue
            self.commands[name] = command
            entries.append(_entry(name, command, PLUGIN, ""))
            files.update(_source_files(command, None))
        # --help's order, as typer lists one app: commands, then groups; built-in ones first
        entries.sort(key=lambda e: (isinstance(self.commands[e.name], TyperGroup), e.source == PLUGIN))
        self._entries = entries
        return entries, files

    def _plugins_commands(self, state: CliState) -> dict[str, Command]:
        # Plugins may add commands, each on an app of its own: one that raises, or whose commands
        # click cannot build (a parameter of a type typer does not support broke every command
        # of the CLI, --help too), is marked failed, and the CLI still starts without them.
        if self._plugin_commands is None:
            self._plugin_commands = plugin_commands(state.plugins())
        return self._plugin_commands

    def list_commands(self, ctx: Context) -> list[str]:
        return [entry.name for entry in self.entries(ctx)]

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        if cmd_name in self.commands and not self._listing:
            return self.commands[cmd_name]
        entry = next((e for e in self.entries(ctx) if e.name == cmd_name), None)
        if entry is None:
            return None
        if self._listing:  # (the same whether the index was read or just built)
            return TyperCommand(
                entry.name,
                help=entry.help,
                short_help=entry.short_help,
                hidden=entry.hidden,
                deprecated=entry.deprecated,
            )
        if entry.source == BUILTIN and entry.module in BUILTIN_MODULES:
            command = _module_commands(entry.module).get(cmd_name)
        elif cmd_name in BUILTIN_COMMANDS:
            command = None  # (an index that says a plugin has a built-in's name is wrong: build all)
        else:
            command = self._plugins_commands(self._state(ctx)).get(cmd_name)
        if command is None:  # the index was wrong (a module edited in the same tick): build all
            self.build_all(self._state(ctx))
            command = self.commands.get(cmd_name)
        if command is not None:
            self.commands[cmd_name] = command
        return command

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        with self.listing():
            super().format_commands(ctx, formatter)

    def shell_complete(self, ctx: Context, incomplete: str) -> list[Any]:
        with self.listing():
            return super().shell_complete(ctx, incomplete)


def plugin_commands(manager: PluginManager) -> dict[str, Command]:
    """The plugins' commands, each plugin's built apart (see ``_plugins_commands``); a plugin
    whose commands cannot be built is marked failed. The first plugin to name a command has it."""
    found: dict[str, Command] = {}
    for plugin, app in manager.hooks.cli_commands(_typer):
        if not app.registered_commands and not app.registered_groups:
            continue
        try:
            commands = dict(_group_of(app).commands)
        except Exception as exc:
            manager.mark_failed(plugin, f"runink_cli_commands: its commands cannot be built: {exc}")
            continue
        for name, command in commands.items():
            if name in found:
                logging.getLogger(__name__).warning("plugin command %r of %s ignored: taken", name, plugin)
                continue
            found[name] = command
    return found


def _group_of(app: typer.Typer) -> TyperGroup:
    return typer.main.get_group(app)


def _module_commands(module: str) -> dict[str, Command]:
    """The top-level commands a built-in module's ``register(app)`` adds, built."""
    app = _typer()
    importlib.import_module(f"runink.core.cli.{module}").register(app)
    return dict(_group_of(app).commands)


def _entry(name: str, command: Command, source: str, module: str) -> CommandEntry:
    return CommandEntry(
        name=name,
        source=source,
        module=module,
        help=command.help,
        short_help=command.short_help,
        hidden=command.hidden,
        deprecated=bool(command.deprecated),
    )


def _source_files(command: Command, module: str | None) -> set[str]:
    """The files a command's name and help come from: its registering module, its callback's."""
    found = set()
    for name in (module, getattr(command.callback, "__module__", None)):
        file = getattr(sys.modules.get(name or ""), "__file__", None)
        if file:
            found.add(file)
    if isinstance(command, TyperGroup):  # a group's help is its Typer's, set where its commands are
        for sub in command.commands.values():
            found.update(_source_files(sub, None))
    return found


def _root(state: CliState) -> typer.Typer:
    app = _typer(
        name="runink",
        help="Runink: run data pipelines on this machine, each scenario in an isolated slice.",
        no_args_is_help=True,
        add_completion=True,  # --install-completion, --show-completion (typer loads its shell code only for them)
        cls=RootGroup,
        context_settings={"help_option_names": ["-h", "--help"], "obj": state},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        version: bool = typer.Option(
            False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
        config: Path | None = typer.Option(
            None,
            "--config",
            "-c",
            help="Config file (default: $RUNINK_CONFIG, ./runink.toml, ~/.config/runink/config.toml).",
        ),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    ) -> None:
        ctx.obj = state

    return app


def root_command(state: CliState) -> RootGroup:
    """The ``runink`` command: commands built when invoked (what ``main`` runs)."""
    command = typer.main.get_command(_root(state))
    assert isinstance(command, RootGroup)
    return command


def build_app(state: CliState) -> RootGroup:
    """The ``runink`` command with every command built (plugins' included): for tools and tests
    that walk the whole tree (``.commands``)."""
    command = root_command(state)
    command.build_all(state)
    return command


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``runink`` script: exit 0 on success, non-zero with a one-line error
    otherwise. The script (``argv`` None) ends without the interpreter's teardown (core.process_end)."""
    if argv is None:
        from runink.core.process_end import end_now

        finish: Callable[[int], NoReturn] = end_now
    else:
        finish = sys.exit
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before plugins and config load
        print(f"runink {runink.__version__}")
        finish(0)
    state = CliState.from_argv(argv)
    logging.basicConfig(
        level=logging.DEBUG if state.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        outcome = _run(state, argv)
    except typer.Exit as exc:
        finish(exc.exit_code)
    except typer.Abort:
        print_error("aborted")
        finish(130)
    except typer.TyperException as exc:  # usage errors: click's own message and usage line
        exc.show()  # type: ignore[attr-defined]
        finish(getattr(exc, "exit_code", 2))
    except (Exception, KeyboardInterrupt) as exc:  # a RuninkError's one line; anything else is our bug
        finish(exit_status(exc, state.debug))
    # Click returns an eager option's exit code (--version) instead of raising.
    finish(outcome if isinstance(outcome, int) else 0)


def _run(state: CliState, argv: list[str]) -> Any:
    """Build the CLI and run the command ``argv``; then, however it ended, let the plugins
    send what they still buffer (lineage sinks deliver from threads of their own)."""
    try:
        return root_command(state).main(args=argv, prog_name="runink", standalone_mode=False)
    finally:
        state.close()
