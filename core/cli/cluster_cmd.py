"""``runink server``, ``runink agent``, and ``runink up`` / ``down`` (a local cluster of real
processes on this machine, for trying things and for tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from runink.core.cli.cluster_client import context_file, read_context, read_token_file
from runink.core.cli.output import console, print_json, print_table
from runink.core.cli.state import CliState, host_port
from runink.core.errors import RuninkError
from runink.core.fstree import private_folder, remove_tree
from runink.core.ports import free_ports
from runink.core.processes import process_start
from runink.core.signals import SLOW_STOP_REPORT, stop_event
from runink.core.units import parse_memory, split_address

if TYPE_CHECKING:
    from runink.core.config import RuninkConfig
    from runink.core.interfaces.executor import Executor
    from runink.core.local_nodes import LocalNodes
    from runink.core.plugins import PluginManager

UP_TIMEOUT = 60.0  # seconds for `runink up`'s servers to elect a leader and its agents to register
UP_MARK = ".runink-up"  # the file that says `up` made a folder (`down` removes only such a one)
ADMIN_TOKEN_TTL = 30 * 86400.0  # seconds the admin token `runink up` gives the CLI lasts


TLS_CERT = typer.Option(None, "--tls-cert", help="This process's certificate of the cluster CA (PEM).")
TLS_KEY = typer.Option(None, "--tls-key", help="Its private key.")
TLS_CA = typer.Option(None, "--tls-ca", help="The cluster CA's certificate: peers must present one of its.")


def _an_address(value: str | None) -> str | None:
    if value is not None and host_port(value) is None:
        raise typer.BadParameter(f"{value!r}: expected HOST:PORT")
    return value


METRICS_OPTION = typer.Option(
    None,
    "--metrics",
    callback=_an_address,
    help="HOST:PORT to serve /metrics on, for Prometheus (plain HTTP: keep it on loopback). Default: none.",
)


def server_command(
    ctx: typer.Context,
    api: str = typer.Option("127.0.0.1:8470", "--api", help="Where the REST API listens, HOST:PORT."),
    agents: str = typer.Option("127.0.0.1:8471", "--agents", help="Where agents connect (gRPC), HOST:PORT."),
    insecure_bind: bool = typer.Option(
        False,
        "--insecure-bind",
        help="Listen on a non-loopback address in plaintext (or with --insecure-dev); with TLS no flag is needed.",
    ),
    liveness_timeout: float = typer.Option(
        10.0, "--liveness-timeout", min=0.1, help="Seconds without a heartbeat before a node is dead."
    ),
    auth_key: list[Path] = typer.Option(
        [],
        "--auth-key",
        help="The cluster's token signing key (PEM, P-256; `runink up` makes one): the first signs, all verify.",
    ),
    insecure_dev: bool = typer.Option(
        False, "--insecure-dev", help="Authenticate nobody, allow everything (development only; every answer says so)."
    ),
    secrets_key: Path | None = typer.Option(
        None,
        "--secrets-key",
        help="The master key of herds' secrets (the same file on every server; `runink up` makes one): "
        "secrets are kept in the Barn encrypted under it.",
    ),
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    tls_ca: Path | None = TLS_CA,
    metrics: str | None = METRICS_OPTION,  # (applied before the plugins load: CliState.from_argv)
    plaintext: bool = typer.Option(
        False, "--plaintext", help="No TLS on the API, the agents' stream and the Barn (development only)."
    ),
    tls_ca_key: Path | None = typer.Option(
        None, "--tls-ca-key", help="The CA's key: sign the certificates of nodes that join (`runink node join`)."
    ),
    barn: str | None = typer.Option(
        None,
        "--barn",
        metavar="etcd://HOST:PORT,...",
        help="Keep the cluster's state in this etcd (v3 API) instead of a Barn member of the server's own.",
    ),
    barn_ca: Path | None = typer.Option(None, "--barn-ca", help="With --barn: the etcd's CA (TLS to it)."),
    barn_cert: Path | None = typer.Option(None, "--barn-cert", help="With --barn: a client certificate for it."),
    barn_key: Path | None = typer.Option(None, "--barn-key", help="With --barn: that certificate's key."),
    init: Path | None = typer.Option(
        None,
        "--init",
        metavar="DIR",
        help="Make the cluster CA in DIR (if not there) and this server's certificate (--name, --san), print "
        "the --tls-* flags to use, and exit.",
    ),
    name: str = typer.Option("s0", "--name", help="With --init: the server's name (its certificate's)."),
    san: list[str] = typer.Option(
        [], "--san", help="With --init: a name clients reach it by, IP or DNS (repeatable; default 127.0.0.1)."
    ),
) -> None:
    """Run a control-plane server. Flags after `--` start its Barn member (`runink barn serve`'s
    flags: --name, --raft, --http, --peer, --data-dir...); without them the Barn is in memory.
    With --tls-*, the REST API is HTTPS, agents' streams and the Barn's traffic mutual TLS."""
    from runink.core.server.process import Server, ServerOptions, parse_address
    from runink.core.server.tls import TlsFiles

    if init is not None:
        _init_server_certificate(init, name, san or ["127.0.0.1"])
        return
    state: CliState = ctx.obj
    if barn is not None:
        if not barn.startswith("etcd://") or not all(split_address(e) for e in barn[7:].split(",")):
            raise typer.BadParameter(f"{barn!r}: expected etcd://HOST:PORT[,HOST:PORT...]", param_hint="--barn")
        if ctx.args:
            raise typer.BadParameter("give --barn or a Barn member's flags after --, not both", param_hint="--barn")
    barn_tls = {
        name: str(path)
        for name, path in (("tls_ca", barn_ca), ("tls_cert", barn_cert), ("tls_key", barn_key))
        if path is not None
    }
    options = ServerOptions(
        api=parse_address(api, "--api"),
        agents=parse_address(agents, "--agents"),
        barn_url=barn,
        barn_tls=barn_tls,
        barn_args=list(ctx.args),
        insecure_bind=insecure_bind,
        liveness_timeout=liveness_timeout,
        config_path=str(state.config_path) if state.config_path else None,
        auth_keys=list(auth_key),
        insecure_dev=insecure_dev,
        secrets_key=secrets_key,
        tls=TlsFiles.given(tls_cert, tls_key, tls_ca),
        plaintext=plaintext,
        ca_key=tls_ca_key,
    )

    stop = stop_event()  # (before it says it serves: a SIGTERM from then on is a stop, never the default death)
    server = Server(options, state.config(), state.plugins())
    try:
        print(json.dumps({"event": "serving", **server.addresses()}), flush=True)
        stop.wait()
    finally:
        server.close()


def _init_server_certificate(directory: Path, name: str, sans: list[str]) -> None:
    """``runink server --init``: the cluster CA (made once) and a server's certificate."""
    from runink.core.server import pki
    from runink.core.server.tls import SERVER_PREFIX

    private_folder(directory, "--init")  # (another user's: they could plant the CA it signs with)
    try:
        for kept in (directory / pki.CA_CERT, directory / pki.CA_KEY):
            if kept.is_symlink() or (kept.exists() and kept.stat().st_uid != os.geteuid()):
                raise pki.PkiError(f"{kept}: not a file of this user's: a CA found here is not used")
        if not (directory / pki.CA_CERT).exists():
            pki.create_ca(directory)
            print(f"cluster CA made: {directory / pki.CA_CERT} (its key {directory / pki.CA_KEY}: keep it private)")
        files = pki.issue(directory, directory, SERVER_PREFIX + name, sans=sans, usage="both")
    except pki.PkiError as exc:
        raise RuninkError(f"--init {directory}: {exc}") from None
    print(f"--tls-cert {files.cert} --tls-key {files.key} --tls-ca {directory / pki.CA_CERT}")


def agent_command(
    ctx: typer.Context,
    servers: str = typer.Option(..., "--servers", help="The servers' agent addresses (gRPC), HOST:PORT,..."),
    node_id: str | None = typer.Option(None, "--node-id", help="This node's name (default: the host name)."),
    labels: list[str] = typer.Option([], "--labels", help="A label k=v for placement constraints (repeatable)."),
    cpus: float | None = typer.Option(None, "--cpus", min=0, help="Cores to offer (default: all)."),
    memory: str | None = typer.Option(None, "--memory", help='Memory to offer, e.g. "16Gi" (default: all).'),
    gpus: int | None = typer.Option(
        None, "--gpus", min=0, help="GPUs to offer: the first N that nvidia-smi lists (default: all it lists)."
    ),
    gpu_device_dir: Path = typer.Option(
        Path("/dev"), "--gpu-device-dir", help="Where the GPUs' device nodes (nvidia0, nvidiactl...) are."
    ),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Where tasks' dirs and logs go."),
    min_free_disk: str = typer.Option(
        "512Mi",
        "--min-free-disk",
        help="Below this much free on the work dir's disk the node takes no new task (0: no such check).",
    ),
    interval: float = typer.Option(0.1, "--interval", min=0.01, help="Seconds between syncs with the server."),
    drain_grace: float = typer.Option(30.0, "--drain-grace", min=0, help="On SIGTERM, seconds tasks may finish."),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="This node's token (`runink nodes token NODE` mints one; `runink up` does)."
    ),
    tls_cert: Path | None = TLS_CERT,
    tls_key: Path | None = TLS_KEY,
    tls_ca: Path | None = TLS_CA,
    metrics: str | None = METRICS_OPTION,  # (applied before the plugins load: CliState.from_argv)
    health: str | None = typer.Option(
        None, "--health", help="HOST:PORT to answer /healthz and /readyz on (plain HTTP: keep it on loopback)."
    ),
    plaintext: bool = typer.Option(
        False,
        "--plaintext",
        help="Speak to servers off this machine without TLS (development only: its token and tasks go in clear).",
    ),
) -> None:
    """Run the agent of this node: register, heartbeat, run the slices assigned here. Started
    again over the same --work-dir and --node-id, it re-attaches to the slices it left running
    and reports them when they end: its executor is built so that slices outlive the agent where
    the driver can (the linux driver's slices_outlive_executor, unless the config sets it); with
    one that cannot re-attach, those attempts are reported FAILED on restart. SIGTERM drains: no
    new work, running slices may finish for --drain-grace seconds, the rest are given back."""
    from runink.core.agent.agent import HEARTBEAT_INTERVAL, RUNNING_HOLD, Agent
    from runink.core.agent.disk_limits import disk_limited
    from runink.core.agent.disk_room import DiskRoom
    from runink.core.agent.gpus import find_gpus
    from runink.core.agent.grpc_control import FailoverControl
    from runink.core.agent.lineage import SERVER_SINKS, LineageOutbox
    from runink.core.agent.metered import MeteredExecutor
    from runink.core.agent.scenarios import NodePipelines, ScenarioAttempts
    from runink.core.agent.slice_lines import slice_lines
    from runink.core.control.records import Amount, RecordError
    from runink.core.drivers import auto_executor, configured_driver
    from runink.core.metrics import register_gauges
    from runink.core.pipeline.compile import compile_pipeline
    from runink.core.pipeline.dsl import parse
    from runink.core.server.tls import TlsFiles
    from runink.core.units import check_name, is_loopback

    probe_at = None
    if health is not None:  # (checked before anything starts)
        probe_at = host_port(health)
        if probe_at is None:
            raise typer.BadParameter(f"{health!r}: expected HOST:PORT", param_hint="--health")
    addresses = [a.strip() for a in servers.split(",") if a.strip()]
    tls = TlsFiles.given(tls_cert, tls_key, tls_ca)  # (mutual TLS: its certificate names the node)
    if tls is None and not plaintext:  # (as a server refuses to serve off loopback in plaintext)
        for address in addresses:
            found = host_port(address)
            if found is None or not is_loopback(found[0]):
                raise typer.BadParameter(
                    f"{address!r}: not a loopback address; without --tls-cert, --tls-key and --tls-ca the agent's "
                    "token and its tasks would go in clear: give them (or --plaintext, development only)",
                    param_hint="--servers",
                )
    state: CliState = ctx.obj
    config = state.config()
    manager = state.plugins()
    name = node_id or socket.gethostname().split(".")[0].lower()
    try:
        check_name(name, "node")
    except ValueError as exc:
        raise RuninkError(f"--node-id: {exc}") from None
    label_map = {}
    for item in labels:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise typer.BadParameter(f"{item!r}: expected k=v", param_hint="--labels")
        label_map[key] = value
    inventory = find_gpus(gpu_device_dir).limited_to(gpus)
    try:
        memory_bytes = parse_memory(memory) if memory else _memory_total()
    except ValueError as exc:
        raise RuninkError(f"--memory: {exc}") from None
    try:
        keep_free = parse_memory(min_free_disk)
    except ValueError as exc:
        raise RuninkError(f"--min-free-disk: {exc}") from None
    try:  # (checked here: a capacity the servers would refuse is an error of this command's options)
        cpu = cpus if cpus is not None else float(os.cpu_count() or 1)
        capacity = Amount.model_validate({"cpu": cpu, "memory": memory_bytes, "gpu": len(inventory.gpus)})
    except RecordError as exc:
        option = {"cpu": "--cpus", "memory": "--memory", "gpu": "--gpus"}.get(str(exc.loc[0]) if exc.loc else "", "")
        raise RuninkError(f"{option or 'capacity'}: {exc.msg}") from None
    if config.executor.driver == "auto":
        executor, config, note = auto_executor(config, manager)
        if executor is None:
            print(note, file=sys.stderr)
            executor = configured_driver(config, "executor", manager)
    else:
        executor = configured_driver(config, "executor", manager)
    executor = _recovering(executor, config, manager)
    work = work_dir or Path(config.data_dir).resolve() / "agent" / name
    # its attempt handles name processes to kill and folders to remove: another user's folder
    # could forge them (refused), and nobody else reads the tasks' logs in it
    private_folder(work, "--work-dir")
    # pipeline scenarios (`runink submit`): compiled here from their .dsl, with this node's config
    pipelines = NodePipelines(
        lambda text, path: compile_pipeline(parse(text, path), check_code=False, config=config), config, work
    )
    # lineage goes to the servers (they own the catalog): the node's one lineage sink sends it
    lineage = LineageOutbox()
    for sink in SERVER_SINKS:
        if manager.pm.get_plugin(sink) is not None:
            manager.unregister(sink)
    manager.register(lineage, "lineage-to-servers")
    register_gauges(lineage.dropped_samples)  # (for the agent's life)
    metered = disk_limited(MeteredExecutor(executor, manager, name), config.limits.disk_bytes)
    own = [work, *(p for p in (token_file, tls_key) if p is not None)]
    executor = ScenarioAttempts(metered, config, manager, pipelines, private=own)
    token = read_token_file(token_file) if token_file else None
    control = FailoverControl(addresses, token=token, tls=tls)
    agent = Agent(
        control,
        executor,
        name,
        capacity,
        labels=label_map,
        work_dir=work,
        hold_running=RUNNING_HOLD,
        lineage=lineage,
        slice_lines=slice_lines(config, manager, name),
        gpus=inventory,
        disk_room=DiskRoom(work, keep_free),
    )
    # (set by a thread of its own, never by a handler that could deadlock; a stop is a drain of
    # up to drain_grace: only one past it is slow)
    stop = stop_event(slow_after=drain_grace + SLOW_STOP_REPORT)
    probes = None
    if probe_at is not None:
        from runink.core.agent.health import agent_readiness, serve_health

        probes = serve_health(*probe_at, agent_readiness(agent, stale=3 * HEARTBEAT_INTERVAL))
    try:
        agent.register()
        print(json.dumps({"event": "registered", "node": name, "pid": os.getpid(), "gpus": inventory.ids}), flush=True)
        agent.run_forever(interval, stop)
        agent.drain(drain_grace)
    finally:
        if probes is not None:
            probes.shutdown()
        control.close()
        executor.close()


def _recovering(executor: Executor, config: RuninkConfig, manager: PluginManager | None) -> Executor:
    """The agent's executor, built again with ``slices_outlive_executor = true`` when its driver
    takes that option, the config does not set it, and it cannot re-attach as built: so a
    restarted agent finds its running slices (see docs/isolation.md)."""
    from runink.core.drivers import load_driver
    from runink.core.interfaces import executor as interface

    options = dict(config.executor.options)
    schema = getattr(type(executor), "options_schema", None) or {}
    if executor.capabilities().supports_recover or OUTLIVE not in schema or OUTLIVE in options:
        if not executor.capabilities().supports_recover:
            print(
                f"runink agent: the {executor.name} executor cannot re-attach to running slices: "
                "after a restart, the attempts it ran are reported FAILED",
                file=sys.stderr,
            )
        return executor
    executor.close()
    name = str(config.executor.driver)
    return load_driver(interface.Executor, name, {**options, OUTLIVE: True}, manager=manager, origin="runink agent")


#: the executor option that lets running slices outlive the agent (the linux driver's)
OUTLIVE = "slices_outlive_executor"


def _memory_total() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise RuninkError("cannot read MemTotal from /proc/meminfo: give --memory")


# --- runink up / down -------------------------------------------------------------------


def _spawn(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    log = open(log_path, "a")  # noqa: SIM115 (the child keeps it; closed here after the fork)
    try:
        environment = {**os.environ, **(env or {})}
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True, env=environment
        )
    finally:
        log.close()


_UP_LOCKS: list[int] = []  # (held until the process ends)


def _hold_up_lock() -> None:
    """This user's one `runink up` at a time, until this process ends."""
    import fcntl

    folder = context_file().parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder / ".up.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RuninkError("another `runink up` of this user is starting a cluster: let it finish") from None
    _UP_LOCKS.append(fd)


def _last_line(log_path: Path) -> str:
    """The last line of a process's log (its error, when it stopped at start), shown safely."""
    from runink.core.report import printable

    try:
        fd = os.open(log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
            lines = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return "(its log cannot be read)"
    return printable(lines[-1], 300) if lines else "(nothing in its log)"


def _first_event(process: subprocess.Popen[str], what: str, log_path: Path, timeout: float) -> dict[str, Any]:
    """The JSON line a server or agent prints once it is up."""
    from runink.core.server.process import ready_event

    event = ready_event(process, timeout)
    if event is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(1)  # (its stdout closed: it exited, or is about to)
        if process.poll() is not None:  # (it said "did not start within 60s" of one that stopped at once)
            raise RuninkError(f"{what} exited ({process.returncode}): {_last_line(log_path)} (its log: {log_path})")
        raise RuninkError(f"{what} did not start within {timeout:g}s (its log: {log_path})")
    return event


def up_command(
    ctx: typer.Context,
    servers: int = typer.Option(3, "--servers", min=1, max=7, help="Control-plane servers (a Raft group)."),
    agents: int = typer.Option(2, "--agents", min=0, max=32, help="Agents (worker nodes) on this machine."),
    directory: Path | None = typer.Option(None, "--dir", help="Where their state and logs go (default: a temp dir)."),
    json_output: bool = typer.Option(False, "--json", help="Print the addresses as JSON."),
    insecure_dev: bool = typer.Option(
        False, "--insecure-dev", help="Servers that authenticate nobody and allow everything (development only)."
    ),
    no_metrics: bool = typer.Option(
        False, "--no-metrics", help="Serve no /metrics (each process serves them on a loopback port by default)."
    ),
    scale_max: int = typer.Option(
        0,
        "--scale-max",
        min=0,
        max=32,
        help="Autoscale: the servers keep --agents agents at least and add more, up to this many, while "
        "tasks wait for room, and remove idle ones ([scaling] in the config sets the threshold, idle delay "
        "and cooldown). 0: no autoscaling.",
    ),
    herd_root: list[Path] = typer.Option(
        [],
        "--root",
        help="A folder the default herd's pipelines may be in (repeat; default: the current folder).",
    ),
) -> None:
    """Start a local cluster of real processes and point the CLI at it (until `runink down`).
    It has one herd, default, whose pipelines may be in the current folder (or --root's)."""
    if scale_max and scale_max < agents:
        raise typer.BadParameter(f"{scale_max} is fewer than --agents {agents}", param_hint="--scale-max")
    for given in herd_root:
        if not given.is_dir():
            raise typer.BadParameter(f"{given}: not a folder", param_hint="--root")
    _hold_up_lock()  # (two at once both started, and the second's context hid the first from `down`)
    if read_context() is not None:
        raise RuninkError(f"a cluster is up already ({context_file()}): `runink down` first")
    roots = [os.path.realpath(r) for r in herd_root] or [os.path.realpath(os.getcwd())]
    # (not / nor a folder anyone may write, as /tmp: a pipeline's slices get its folder, and
    # the nodes refuse a .dsl there anyway)
    roots = [r for r in roots if r != "/" and not os.stat(r).st_mode & (stat.S_IWOTH | stat.S_ISVTX)]
    if directory is None:
        root = Path(tempfile.mkdtemp(prefix="runink-up-")).resolve()
    else:  # `down` removes it: never a folder that holds something already
        root = directory.resolve()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise RuninkError(f"--dir {directory}: not an empty folder (`runink down` removes the cluster's folder)")
        inside = next((r for r in roots if Path(r) == root or Path(r) in root.parents), None)
        if inside is not None:  # (a slice is granted its pipeline's whole folder: the keys in it too)
            raise RuninkError(
                f"--dir {directory}: inside {inside}, where the default herd's pipelines may be (--root, default: "
                "the current folder): their slices could read the cluster's keys; give a folder outside it"
            )
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_folder(root, "--dir")  # (the members' journals, the agents' work: every herd's jobs and output)
    (root / UP_MARK).write_text("made by `runink up`; `runink down` removes this folder\n")
    # secure by default, as kind is: the cluster's token key, and a cluster-admin token for this CLI
    from runink.core.model import Grant
    from runink.core.security import CLUSTER
    from runink.core.server.auth import ClusterTokens, new_key_file

    auth_key = root / "auth-key.pem"
    new_key_file(auth_key)
    tokens = ClusterTokens([auth_key])
    token, _ = tokens.mint("admin", [Grant("cluster-admin", CLUSTER)], ADMIN_TOKEN_TTL)
    auth = ["--insecure-dev"] if insecure_dev else ["--auth-key", str(auth_key)]
    # herds' secrets: kept in the Barn, encrypted under this master key (the same on every server)
    from runink.core.masterkey import create_master_key

    secrets_key = root / "secrets-key"
    create_master_key(secrets_key)
    auth += ["--secrets-key", str(secrets_key)]
    # TLS everywhere (HTTPS API, mutual TLS for agents and the Barn) with a CA of its own;
    # --insecure-dev: plaintext
    tls = None if insecure_dev else _LocalCa(root / "tls")
    state: CliState = ctx.obj
    base = [sys.executable, "-m", "runink"] + (["--config", str(state.config_path)] if state.config_path else [])
    ports = free_ports(6 * servers + 2 * agents)
    # every agent (those started now, those the autoscaler may start) has a launch file there
    from runink.core.local_nodes import LocalNodes  # (only up and down: not on every command's start)

    nodes = LocalNodes(root, create=True)
    scaling = {}
    if scale_max:  # the servers' `local` scaler over that folder
        scaling = {
            "RUNINK_SCALING__DRIVER": "local",
            "RUNINK_SCALING__OPTIONS": json.dumps({"dir": str(root)}),
            "RUNINK_SCALING__MIN_NODES": str(agents),
            "RUNINK_SCALING__MAX_NODES": str(scale_max),
        }
    metrics_ports = iter(ports[4 * servers : 6 * servers + agents])  # each process's /metrics
    health_ports = iter(ports[6 * servers + agents :])  # each agent's /healthz and /readyz
    names = [f"s{i}" for i in range(servers)]
    raft = {n: f"127.0.0.1:{ports[4 * i]}" for i, n in enumerate(names)}
    http = {n: f"127.0.0.1:{ports[4 * i + 1]}" for i, n in enumerate(names)}
    started: dict[str, Any] = {
        "dir": str(root), "servers": [], "agents": [], "api": [], "grpc": [], "barn": [], "metrics": {},
        "health": {},
    }  # fmt: skip
    processes: list[subprocess.Popen[str]] = []
    err = console(stderr=True)
    try:
        # Every agent's launch file first (those started now, those the autoscaler may start):
        # a server's autoscaler may look for them as soon as it leads.
        grpc_addresses = [f"127.0.0.1:{ports[4 * i + 3]}" for i in range(servers)]  # (each server's --agents)
        for i in range(max(agents, scale_max)):
            name = f"agent-{i}"
            work = root / name
            # every server's address, each agent starting with a different one (it fails over)
            order = grpc_addresses[i % servers :] + grpc_addresses[: i % servers]
            command = [*base, "agent", "--servers", ",".join(order), "--node-id", name, "--work-dir", str(work)]
            if i < agents:  # (ports for those started now: one reserved long before would not stay free)
                started["metrics"][name] = f"127.0.0.1:{next(metrics_ports)}"
                command += [] if no_metrics else ["--metrics", started["metrics"][name]]
                started["health"][name] = f"127.0.0.1:{next(health_ports)}"
                command += ["--health", started["health"][name]]
            command += tls.node(name) if tls else []
            if not insecure_dev:  # its own token: it may act as this node only
                work.mkdir(mode=0o700)
                node_token, _ = tokens.mint_node(name, ADMIN_TOKEN_TTL)
                token_path = work / "node.token"
                fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(node_token + "\n")
                command += ["--token-file", str(token_path)]
            nodes.add_launch(name, command, root / f"{name}.log", i)
        for i, name in enumerate(names):
            peers = [f"--peer={o}={raft[o]},{http[o]}" for o in names if o != name]
            api, grpc = f"127.0.0.1:{ports[4 * i + 2]}", grpc_addresses[i]
            metrics = started["metrics"]
            metrics[name], metrics[f"{name}-barn"] = (f"127.0.0.1:{next(metrics_ports)}" for _ in range(2))
            served, barn_served = (
                ([], []) if no_metrics else (["--metrics", metrics[name]], ["--metrics", metrics[f"{name}-barn"]])
            )
            command = [
                *base, "server", "--api", api, "--agents", grpc, *auth, *(tls.server(name) if tls else []), *served,
                "--", "--name", name, "--raft", raft[name], "--http", http[name], "--data-dir", str(root / name),
                *peers, *barn_served,
            ]  # fmt: skip
            # their data_dir: one catalog (SQLite) the servers of this machine share
            processes.append(_spawn(command, root / f"{name}.log", {"RUNINK_DATA_DIR": str(root), **scaling}))
        for name, process in zip(names, processes, strict=True):
            event = _first_event(process, f"server {name}", root / f"{name}.log", UP_TIMEOUT)
            started["servers"].append({"name": name, "pid": process.pid, "start": process_start(process.pid), **event})
            started["api"].append(event["api"])
            started["grpc"].append(event["agents"])
            started["barn"].append(event["barn"])
            err.print(f"server {name}: API {event['api']}, agents {event['agents']}, Barn {event['barn']}")
        started["roots"] = roots
        herd = {"name": "default", "roots": started["roots"]}
        _wait_for_leader(started["api"], token, tls.ca if tls else None, [root / f"{name}.log" for name in names], herd)
        err.print(f"herd default: its pipelines may be in {', '.join(started['roots']) or 'no folder (--root)'}")
        for name, api in zip(names, started["api"], strict=True):
            _wait_ready(f"{api}/readyz", tls.ca if tls else None, f"server {name}")
        # with autoscaling, the leading server's autoscaler starts them (min_nodes): not both
        first = nodes.start(agents) if not scale_max else [f"agent-{i}" for i in range(agents)]
        for name in first:
            _wait_ready(f"http://{started['health'][name]}/readyz", None, f"agent {name}", nodes.process(name))
            found = nodes.process(name)
            pid, start = found if found is not None else (None, None)
            started["agents"].append({"name": name, "pid": pid, "start": start})
            err.print(f"agent {name}: registered")
    except BaseException as exc:
        nodes.stop_starting()
        _stop([process.pid for process in processes] + _agent_pids(nodes)[0])
        if (root / UP_MARK).is_file():  # (its keys and tokens go too: no context names it for `down`)
            try:
                remove_tree(root)
                gone = f"{root} removed: it held the cluster's keys"
            except OSError as left:
                gone = f"{root} not all removed ({left.strerror or left}): it holds the cluster's keys, remove it"
            if isinstance(exc, RuninkError):  # (the log it names went with it: its last line is said)
                said = str(exc).split(" (its log: ")[0]
                raise RuninkError(f"{said} ({gone})") from None
        raise
    target = context_file()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # the admin token: in the context file, readable by its owner only (one there already too)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps({**started, "token": token, **({"ca": str(tls.ca)} if tls else {})}, indent=2))
    if no_metrics:
        started["metrics"] = {}
    if json_output:
        print_json(started)
    else:
        print_table(
            f"local cluster up ({root}); the CLI now talks to it, `runink down` stops it",
            ["PROCESS", "PID", "API", "AGENTS (gRPC)", "BARN"],
            [(s["name"], s["pid"], s["api"], s["agents"], s["barn"]) for s in started["servers"]]
            + [(a["name"], a["pid"], "", "", "") for a in started["agents"]],
        )


class _LocalCa:
    """`runink up`'s cluster CA and the certificates it issues its servers and agents."""

    def __init__(self, directory: Path) -> None:
        from runink.core.server import pki

        self.directory = directory
        self.ca = pki.create_ca(directory).cert

    def _issue(self, name: str, usage: str) -> list[str]:
        from runink.core.server import pki

        files = pki.issue(self.directory, self.directory, name, sans=["127.0.0.1", "localhost"], usage=usage)  # type: ignore[arg-type]
        return ["--tls-cert", str(files.cert), "--tls-key", str(files.key), "--tls-ca", str(self.ca)]

    def server(self, name: str) -> list[str]:
        from runink.core.server import pki
        from runink.core.server.tls import SERVER_PREFIX

        # (with the CA's key: it signs the certificates of nodes that join later)
        return [*self._issue(SERVER_PREFIX + name, "both"), "--tls-ca-key", str(self.directory / pki.CA_KEY)]

    def node(self, name: str) -> list[str]:
        from runink.core.server.tls import NODE_PREFIX

        return self._issue(NODE_PREFIX + name, "client")


def _wait_for_leader(apis: list[str], token: str, ca: Path | None, logs: Sequence[Path], herd: dict[str, Any]) -> None:
    """Until one server answers a write (a leader is elected): create the default ``herd``. If none
    does in time, RuninkError with the last answer and the newest warning of the servers' ``logs``
    (why they found no leader: a member unreachable, a certificate refused ...)."""
    import ssl

    import httpx

    deadline = time.monotonic() + UP_TIMEOUT
    verify = ssl.create_default_context(cafile=str(ca)) if ca else True
    last = "no answer"
    with httpx.Client(timeout=5.0, headers={"Authorization": f"Bearer {token}"}, verify=verify) as client:
        while time.monotonic() < deadline:
            for api in apis:
                try:
                    answer = client.post(api + "/v1/herds", json=herd)
                except httpx.TransportError as exc:
                    last = f"{api}: {exc.__class__.__name__}"
                    continue
                if answer.status_code in (200, 201, 409):
                    return
                last = f"{api}: {answer.status_code} {' '.join(answer.text.split())[:300]}"
            time.sleep(0.2)
    warning = _newest_warning(logs)
    raise RuninkError(
        f"no server of {', '.join(apis)} could write within {UP_TIMEOUT:g}s (no Barn leader?); last answer "
        f"{last}" + (f"; newest warning, {warning}" if warning else "")
    )


LOG_TAIL = 64 * 1024  # bytes of each server's log read for its newest warning


def _newest_warning(logs: Sequence[Path]) -> str:
    """``LOG: message`` of the newest warning or error among the JSON log lines at the ends of
    ``logs`` (by their ``time``), or ""."""
    newest: tuple[str, str] = ("", "")
    for log in logs:
        try:
            with open(log, "rb") as file:
                file.seek(max(0, file.seek(0, os.SEEK_END) - LOG_TAIL))
                tail = file.read(LOG_TAIL).decode("utf-8", "replace")
        except OSError:
            continue
        for line in tail.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("warning", "error"):
                when, message = str(record.get("time", "")), " ".join(str(record.get("message", "")).split())
                if when >= newest[0]:
                    newest = (when, f"{log}: {message[:500]}")
    return newest[1]


def _wait_ready(url: str, ca: Path | None, what: str, process: tuple[int, int] | None = None) -> None:
    """Until ``url`` (a /readyz) answers 200; RuninkError with its last answer after UP_TIMEOUT,
    or at once once ``process`` (pid, start time: the one that should answer) has ended."""
    import ssl

    import httpx

    deadline = time.monotonic() + UP_TIMEOUT
    verify = ssl.create_default_context(cafile=str(ca)) if ca else True
    last = "no answer"
    with httpx.Client(timeout=5.0, verify=verify) as client:
        while time.monotonic() < deadline:
            try:
                answer = client.get(url)
            except httpx.TransportError as exc:
                last = type(exc).__name__
            else:
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text[:200]}"
            if process is not None and process_start(process[0]) != process[1]:
                raise RuninkError(f"{what} ended before it was ready (see its log)")
            time.sleep(0.1)
    raise RuninkError(f"{what} not ready within {UP_TIMEOUT:g}s ({url}: {last})")


def _agent_pids(nodes: LocalNodes) -> tuple[list[int], list[str]]:
    """The pids of the cluster's agents that run (those `up` started and those its servers did),
    by their pid files, and why some could not be told (a file that cannot be read: the others
    still stop; one bad file left the whole cluster running)."""
    from runink.core.interfaces.scaler import ScalerError

    found, problems = [], []
    for entry in sorted(os.scandir(nodes.folder), key=lambda e: e.name):
        if not entry.name.endswith(".pid") or entry.name.startswith("."):
            continue
        name = entry.name[: -len(".pid")]
        try:
            record = nodes.process(name)
        except (ScalerError, ValueError) as exc:
            problems.append(f"agent {name}: {exc}")
            continue
        if record is not None:
            found.append(record[0])
    return found, problems


def _ours(item: object) -> int | None:
    """The pid of a process `up` recorded, if that very process still runs (same start time)."""
    if not isinstance(item, dict) or not isinstance(item.get("pid"), int):
        return None
    pid: int = item["pid"]
    return pid if item.get("start") is not None and process_start(pid) == item["start"] else None


def _stop(pids: list[int], timeout: float = 30.0) -> None:
    """SIGTERM each process group at once, then SIGKILL what is left after ``timeout``. A
    paused one (SIGSTOP) is continued too: its SIGTERM stayed pending until the SIGKILL."""
    running = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
            os.killpg(pid, signal.SIGCONT)
            running.append(pid)
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        running = [pid for pid in running if _alive(pid)]
        time.sleep(0.05)
    for pid in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def down_command(
    keep: bool = typer.Option(False, "--keep", help="Keep the cluster's directory (state and logs)."),
) -> None:
    """Stop the local cluster `runink up` started (agents first, then servers)."""
    from rich.markup import escape

    context = read_context()
    if context is None:
        raise RuninkError(f"no local cluster is up (no {context_file()})")
    directory = context.get("dir")
    agents = [pid for pid in map(_ours, context.get("agents", [])) if pid is not None]
    from runink.core.interfaces.scaler import ScalerError
    from runink.core.local_nodes import FOLDER, LocalNodes

    problems: list[str] = []
    if isinstance(directory, str) and Path(directory, FOLDER).is_dir():
        try:
            nodes = LocalNodes(directory)
            nodes.stop_starting()  # (the servers' autoscaler starts none while they go)
            scaled, problems = _agent_pids(nodes)
            agents = sorted(set(agents) | set(scaled))
        except ScalerError as exc:  # (the servers and the agents `up` started still stop)
            problems.append(str(exc))
    _stop(agents)  # agents first: they drain, servers still answer them
    _stop([pid for pid in map(_ours, context.get("servers", [])) if pid is not None])
    if problems:  # (an agent that could not be told may run on: the context stays for another down)
        for problem in problems:
            console(stderr=True).print(f"warning: {escape(problem)}", highlight=False)
        why = f"the local cluster is stopped but for what could not be told; its context stays ({context_file()})"
        raise RuninkError(why)
    context_file().unlink(missing_ok=True)
    if isinstance(directory, str) and not keep and Path(directory, UP_MARK).is_file():
        try:
            remove_tree(directory)  # (any depth: rmtree's recursion crashed on a task's deep tree, a review)
        except OSError as exc:
            console(stderr=True).print(f"warning: {escape(str(exc))}", highlight=False)
    print(f"local cluster stopped{'' if keep else ' and its directory removed'}")


def register(app: typer.Typer) -> None:
    extra = {"allow_extra_args": True, "ignore_unknown_options": True}
    app.command("server", context_settings=extra)(server_command)
    app.command("agent")(agent_command)
    app.command("up")(up_command)
    app.command("down")(down_command)
