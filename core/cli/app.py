"""Builds the ``runink`` CLI and runs it: plugin commands included, errors as one line."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import typer

import runink
from runink.core.cli import (
    auth_cmd,
    cluster_cmd,
    config_cmd,
    contract_cmd,
    doctor_cmd,
    init_cmd,
    jobs_cmd,
    join_cmd,
    plugins_cmd,
    run_cmd,
    secret_cmd,
)
from runink.core.cli.output import print_error
from runink.core.cli.state import CliState
from runink.core.errors import RuninkError
from runink.core.plugins import describe_exception


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"runink {runink.__version__}")
        raise typer.Exit()


def build_app(state: CliState) -> typer.Typer:
    app = typer.Typer(
        name="runink",
        help="Runink: run data pipelines on this machine, each scenario in an isolated slice.",
        no_args_is_help=True,
        add_completion=True,  # --install-completion, --show-completion (typer loads its shell code only for them)
        pretty_exceptions_enable=False,
        # plain click help: rich's formatting costs ~70 ms of imports on every --help
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
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

    app.add_typer(plugins_cmd.app, name="plugins")
    app.add_typer(config_cmd.app, name="config")
    app.add_typer(contract_cmd.app, name="contract")
    app.command("run")(run_cmd.run_command)
    app.command("test")(run_cmd.golden_test_command)
    app.command("doctor")(doctor_cmd.doctor_command)
    app.command("init")(init_cmd.init_command)
    jobs_cmd.register(app)
    cluster_cmd.register(app)
    auth_cmd.register(app)
    secret_cmd.register(app)
    join_cmd.register(app)

    # Plugins may add commands; one that fails here is marked failed and the CLI still starts.
    manager = state.plugins()
    manager.hooks.cli_commands(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``runink`` script: exit 0 on success, non-zero with a one-line error otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before plugins and config load
        print(f"runink {runink.__version__}")
        sys.exit(0)
    state = CliState.from_argv(argv)
    logging.basicConfig(
        level=logging.DEBUG if state.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        outcome = _run(state, argv)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print_error("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: click's own message and usage line
        exc.show()  # type: ignore[attr-defined]
        sys.exit(getattr(exc, "exit_code", 2))
    except RuninkError as exc:
        if state.debug:
            traceback.print_exc()
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print_error("interrupted")
        sys.exit(130)
    except Exception as exc:  # anything else is our bug: say so in one line, details with --debug
        if state.debug:
            traceback.print_exc()
        print_error(f"internal error: {describe_exception(exc)} (run with --debug for the traceback)")
        sys.exit(1)
    # Click returns an eager option's exit code (--version) instead of raising.
    sys.exit(outcome if isinstance(outcome, int) else 0)


def _run(state: CliState, argv: list[str]) -> Any:
    """Build the CLI and run the command ``argv``; then, however it ended, let the plugins
    send what they still buffer (lineage sinks deliver from threads of their own)."""
    try:
        app = build_app(state)
        command = typer.main.get_command(app)
        return command.main(args=argv, prog_name="runink", standalone_mode=False)
    finally:
        state.close()
