"""``runink exec``'s short path: the command run without building the CLI.

Building the CLI (typer, click, the command modules) costs ~100 ms of every start, more than
the job itself. ``runink exec`` is the command people put in loops and scripts, as they do
``srun``, so its common forms skip that: the options below are read here, the config's values
come from the settings index (``cluster_settings``), and the job is submitted and waited for
by the same code as the full command (``job_watch.run_exec``).

Anything else goes to the full CLI, which says what is wrong in its own words: ``--help``, an
option not in ``VALUED``/``FLAGS`` (``--command``, ``--secret`` ...), global options before
``exec``, a value the full command would refuse, an invalid config, no cluster named. That
choice is made before anything is sent, so a job is never submitted twice.
"""

from __future__ import annotations

import math
import sys
from typing import Any

# the options read here (the full command's names), and how each value is read
VALUED = ("--herd", "--cpu", "--memory", "--gpu", "--timeout", "--retries", "--server")
FLAGS = {"--detach": "detach", "-d": "detach", "--json": "json_output"}
MAX_GPU, MAX_RETRIES = 1024, 100  # the full command's bounds too (jobs_cmd's --gpu, --retries)


class ExecArgs:
    """``runink exec``'s arguments, as the full command would read them. (No dataclass: its
    import costs ~13 ms of a start.)"""

    def __init__(self) -> None:
        self.command: list[str] = []
        self.values: dict[str, str] = {}  # option -> its (last) value
        self.detach = False
        self.json_output = False


def parse(args: list[str]) -> ExecArgs | None:
    """``args`` (what follows ``exec``) read as click reads them (no interspersed options: the
    first word that is not an option starts COMMAND), or None when they are not all plain."""
    parsed = ExecArgs()
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            parsed.command = args[index + 1 :]
            break
        if not arg.startswith("-") or arg == "-":
            parsed.command = args[index:]
            break
        name, eq, value = arg.partition("=")
        if name in FLAGS and not eq:
            setattr(parsed, FLAGS[name], True)
        elif name in VALUED:
            if not eq:
                index += 1
                if index == len(args) or args[index].startswith("-"):
                    return None  # (the full command says what is missing)
                value = args[index]
            parsed.values[name] = value
        else:
            return None  # --help, --command, a typo ...: the full command's answer
        index += 1
    return parsed if parsed.command else None


def resources(parsed: ExecArgs) -> dict[str, Any] | None:
    """The job's resources, timeout and retries from the options, or None if a value is one
    the full command refuses (with its own message)."""
    from runink.core.units import parse_duration, parse_memory

    values = parsed.values
    try:
        cpu = float(values.get("--cpu", "1"))
        gpu = int(values.get("--gpu", "0"))
        retries = int(values.get("--retries", "0"))
        memory = parse_memory(values["--memory"]) if "--memory" in values else 0
        timeout = parse_duration(values["--timeout"]) if "--timeout" in values else None
    except ValueError:
        return None
    if not (math.isfinite(cpu) and cpu >= 0 and 0 <= gpu <= MAX_GPU and 0 <= retries <= MAX_RETRIES):
        return None
    return {"resources": {"cpu": cpu, "memory": memory or 0, "gpu": gpu}, "timeout": timeout, "retries": retries}


def main(args: list[str]) -> int | None:
    """Run ``runink exec ARGS``; its exit status, or None when the full CLI must run it."""
    parsed = parse(args)
    if parsed is None:
        return None
    asked = resources(parsed)
    if asked is None:
        return None
    from runink.core.cli.cluster_client import ClusterClient, ClusterError, cluster_ca, server_addresses
    from runink.core.cli.state import CliState

    state = CliState.from_argv(["exec"])  # ($RUNINK_DEBUG; the global options are the full CLI's)
    settings = state.cluster_settings(logs=False)  # (nothing on this path logs)
    if settings is None:
        return None  # an invalid config: the full command names what is wrong
    try:
        client = ClusterClient(
            server_addresses(parsed.values.get("--server"), settings.server), ca=cluster_ca(settings.ca)
        )
    except ClusterError:
        return None  # no cluster named: the full command says how to name one
    body = {"herd": parsed.values.get("--herd") or settings.herd, "command": parsed.command, **asked}
    from runink.core.cli.job_watch import run_exec
    from runink.core.cli.output import exit_status

    try:
        return run_exec(client, body, detach=parsed.detach, json_output=parsed.json_output)
    except (Exception, KeyboardInterrupt) as exc:  # (what the full CLI would say and exit with)
        return exit_status(exc, state.debug)
    finally:
        client.close()
        sys.stdout.flush()
