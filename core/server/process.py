"""One control-plane server: its Barn, the lifecycle, the REST API, the agents' gRPC service
and the control loop (scheduler + liveness, working only while this server's Barn member leads).

``runink server`` runs one (core/cli/cluster_cmd.py). Its Barn is either the memory Barn (one
server, state gone with it: for trying things) or a member of a raft group that this server
starts beside itself as a child process (``runink barn serve`` with the flags given after
``--``), reached through the ``raft`` driver. The core names no driver module: the member is
started through the CLI command the raft plugin adds, and reached through ``load_driver``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runink.core.config import RuninkConfig
from runink.core.control.admission import Admission
from runink.core.control.autoscale import Autoscaler, ScalingPolicy
from runink.core.control.lifecycle import Lifecycle
from runink.core.control.liveness import Liveness
from runink.core.control.scheduler import Scheduler
from runink.core.control.store import ClusterStore
from runink.core.control.transitions import TransitionLog
from runink.core.drivers import configured_driver, load_driver
from runink.core.errors import LeaseNotFoundError, RuninkError
from runink.core.events import emit_lineage
from runink.core.interfaces.barn import BarnBackend
from runink.core.interfaces.scaler import Scaler
from runink.core.interfaces.secrets import SecretBackend
from runink.core.masterkey import KMS_SOURCE, master_key_of
from runink.core.plugins import PluginManager
from runink.core.processes import DIE_WITH_PARENT, PARENT_BEAT, BeatPipe
from runink.core.server import pki
from runink.core.server.agent_service import serve_agents
from runink.core.server.api import create_app
from runink.core.server.audit_retention import AuditRetention
from runink.core.server.auth import LEEWAY, MAX_TTL, ApiAuth, ClusterTokens
from runink.core.server.feed import BarnFeed, JobWaits, LiveView, RecentRecords
from runink.core.server.job_retention import JobRetention
from runink.core.server.loop import ControlLoop
from runink.core.server.revocations import Revocations
from runink.core.server.serve_api import require_loopback, serve_api, stop_api
from runink.core.server.tls import TlsFiles
from runink.core.units import split_address

log = logging.getLogger("runink.server")

MEMBER_RESTART_MAX = 30.0  # seconds between tries to start a member that exited again
MEMBER_START_TIMEOUT = 30.0  # seconds for the embedded Barn member to serve
#: seconds without a beat from its server after which its member is held back (it hands its
#: lead over, stands for no election): a server paused (SIGSTOP) or frozen schedules nothing,
#: and while its member led no other server did. Not less: a busy server must keep its lead
MEMBER_SILENCE = 5.0
MEMBER_BEAT_EVERY = 0.5  # seconds between the server's beats to its member
LEADER_CHECK_EVERY = 0.5  # seconds between asking the member whether it leads
FEED_STOP_WAIT = 3.0  # seconds close() waits for the watch thread to end with its Barn client


@dataclass
class ServerOptions:
    api: tuple[str, int] = ("127.0.0.1", 8470)
    agents: tuple[str, int] = ("127.0.0.1", 8471)
    barn_args: list[str] = field(default_factory=list)  # `runink barn serve` flags; empty: memory Barn
    barn_url: str | None = None  # etcd://HOST:PORT,...: the state in an etcd (no member of its own)
    barn_tls: dict[str, str] = field(default_factory=dict)  # tls_ca/tls_cert/tls_key of that etcd's clients
    insecure_bind: bool = False
    liveness_timeout: float = 10.0  # seconds without a heartbeat before a node is dead
    config_path: str | None = None
    auth_keys: list[Path] = field(default_factory=list)  # the cluster's token keys (--auth-key), the signing one first
    insecure_dev: bool = False  # authenticate nobody, allow everything (development only)
    secrets_key: Path | None = None  # the master key of herds' secrets in the Barn (--secrets-key)
    tls: TlsFiles | None = None  # HTTPS API, mutual TLS for agents and the Barn (--tls-*)
    ca_key: Path | None = None  # the CA's key: this server signs joining nodes' certificates
    plaintext: bool = False  # no TLS, said on purpose (development only)


def secret_backend(
    options: ServerOptions, config: RuninkConfig, manager: PluginManager, barn: BarnBackend
) -> SecretBackend | None:
    """Where the cluster keeps herds' secrets: with ``--secrets-key`` (a file, ``env:NAME``, or
    ``kms:...`` a plugin serves: runink_master_key), the ``barn`` driver (envelope-encrypted
    under that master key, only ciphertext in the Barn); else the
    ``[secrets]`` driver configured, if any (one that takes a ``barn`` option is given the
    server's). None: no secrets (a job asking for one is refused, saying so)."""
    if options.secrets_key is not None:
        source = str(options.secrets_key)
        # herds: the server's Barn holds the herd records (a secret only for a live herd)
        found: dict[str, Any] = {"barn": barn, "master_key_file": source, "herds": True}  # (errors name the file)
        if source.startswith(KMS_SOURCE):
            key = master_key_of(source, lambda kms: manager.hooks.master_key(kms))  # noqa: PLW0108 (a visible hook call)
            found = {"barn": barn, "master_key": key, "herds": True}
        return load_driver(SecretBackend, "barn", found, manager=manager, origin="--secrets-key")
    backend: SecretBackend | None = configured_driver(config, "secrets", manager, extra={"barn": barn, "herds": True})
    return backend


class LeaseLeadership:
    """Who schedules when the Barn is an etcd shared by servers that run no member of their
    own: the server holding ``/cluster/leader``, a key on a lease it keeps alive (renewed at
    most every LEADER_CHECK_EVERY seconds, LEASE_TTL long). When its holder stops or loses
    etcd, the lease ends and another server takes the key. Scheduling is fenced by its epoch
    as ever (``ControlLoop._claim``), so two that both believe they lead a moment cannot
    overfill a node. While ``healthy()`` is false (the server's control loop hung) it neither
    claims nor renews: the lease ends and another server schedules."""

    KEY = "/cluster/leader"
    LEASE_TTL = 5.0

    def __init__(self, barn: BarnBackend) -> None:
        self.barn = barn
        self.me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}".encode()
        self.healthy: Callable[[], bool] = lambda: True
        self._lease: int | None = None
        self._asked = 0.0
        self._answer = False

    def __call__(self) -> bool:
        if not self.healthy():  # (asked from other threads too: the feed's kept it alive)
            self._answer = False
            return False
        now = time.monotonic()
        if now - self._asked < LEADER_CHECK_EVERY:
            return self._answer
        self._asked = now
        try:
            self._answer = self._hold()
        except RuninkError:
            self._answer, self._lease = False, None  # etcd cannot be asked: do not schedule
        return self._answer

    def _hold(self) -> bool:
        if self._lease is not None:
            try:
                self.barn.keep_alive(self._lease)
            except LeaseNotFoundError:
                self._lease = None
        found = self.barn.get(self.KEY)
        if found is not None:
            return found.value == self.me and self._lease is not None
        if self._lease is None:
            self._lease = self.barn.grant_lease(self.LEASE_TTL)
        self.barn.put(self.KEY, self.me, lease=self._lease)  # (two racing: the last one's stays)
        again = self.barn.get(self.KEY)
        return again is not None and again.value == self.me


class LeaderCheck:
    """Whether this server's member leads, asked at most every LEADER_CHECK_EVERY seconds (the
    loop runs every 50 ms). A backend without a leader (the memory Barn) always leads."""

    def __init__(self, barn: BarnBackend) -> None:
        self.barn = barn
        self._asked = 0.0
        self._answer = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._asked >= LEADER_CHECK_EVERY:
            self._asked = now
            try:
                self._answer = self.barn.leads() is not False
            except RuninkError:
                self._answer = False  # its member cannot be asked: do not schedule
        return self._answer


class Member:
    """The raft Barn member this server runs beside itself, as ``runink barn serve``, started
    again (after 1 s, then up to MEMBER_RESTART_MAX between tries) whenever it exits without
    being stopped: one that stopped on a full disk (as it must: it cannot journal) stayed down
    for good while its server went on, and the group ran on one member less, silently (a
    faults review's run).

    The server beats on a pipe to it (BeatPipe) while its control loop is not hung
    (``ControlLoop.hung``): a member that hears no beat for MEMBER_SILENCE seconds is held back
    (BarnNode.hold_back): it hands its lead, and so the scheduling, to a member whose server
    runs and schedules (it used to hold both until its server resumed), and still votes."""

    def __init__(self, barn_args: list[str], config_path: str | None) -> None:
        command = [sys.executable, "-m", "runink"]
        if config_path:
            command += ["--config", config_path]
        self.args = barn_args
        self.command = [*command, "barn", "serve", *barn_args]
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # (a restart and a stop: never a member started after the stop)
        self.restarts = 0
        self.beats = BeatPipe(MEMBER_BEAT_EVERY)
        self.process = self._spawn()
        self.http = self._wait_serving()
        threading.Thread(target=self._watch, daemon=True, name="barn-member-watch").start()

    def _spawn(self) -> subprocess.Popen[str]:
        # The member dies with this server, however it dies (PR_SET_PDEATHSIG, which it asks
        # for itself: a restart comes from a thread): a member left leading without its server
        # would keep every other server from scheduling.
        beats = self.beats.child_end()
        env = {**os.environ, DIE_WITH_PARENT: str(os.getpid()), PARENT_BEAT: f"{beats}:{MEMBER_SILENCE:g}"}
        try:
            return subprocess.Popen(self.command, stdout=subprocess.PIPE, text=True, env=env, pass_fds=(beats,))
        finally:
            os.close(beats)

    def _wait_serving(self) -> str:
        """Its HTTP address, from the "serving" line it prints once it listens."""
        event = ready_event(self.process, MEMBER_START_TIMEOUT)
        if event is None or event.get("event") != "serving" or "http" not in event:
            self.stop()
            raise RuninkError(f"the Barn member did not start (`runink barn serve {' '.join(self.args)}`)")
        return str(event["http"])

    def _watch(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            code = self.process.wait()
            if self._stopping.is_set():
                return
            log.error("the Barn member exited (status %s): starting it again in %g s", code, delay)
            if self._stopping.wait(delay):
                return
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self.process = self._spawn()
                event = ready_event(self.process, MEMBER_START_TIMEOUT)
                if event is None or event.get("event") != "serving":
                    raise RuninkError("it did not say it serves")
            except (OSError, RuninkError) as exc:
                log.error("the Barn member did not start again: %s", exc)
                with contextlib.suppress(OSError):
                    self.process.kill()
                delay = min(delay * 2, MEMBER_RESTART_MAX)
                continue
            self.restarts += 1
            log.warning("the Barn member is serving again (restart %d)", self.restarts)
            delay = 1.0

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.beats.close()  # (after: a member that hears its server gone says so in its log)


def ready_event(process: subprocess.Popen[str], timeout: float) -> dict[str, Any] | None:
    """The first JSON object line ``process`` prints (a server's or agent's "I am up"), or None
    if none came within ``timeout`` (it hangs, or exited). Its stdout is read on (and
    dropped) by a thread afterwards, so it can never fill up and block the process."""
    ready: list[dict[str, Any]] = []
    arrived = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if not arrived.is_set():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        ready.append(event)
                        arrived.set()
        arrived.set()

    threading.Thread(target=read, daemon=True, name=f"stdout-{process.pid}").start()
    arrived.wait(timeout)
    return ready[0] if ready else None


class Server:
    """A running server; ``close()`` stops it (API, agents' streams, loop, member)."""

    def __init__(self, options: ServerOptions, config: RuninkConfig, manager: PluginManager) -> None:
        if options.ca_key is not None and options.tls is None:
            raise RuninkError("--tls-ca-key goes with --tls-cert, --tls-key and --tls-ca (it signs with that CA)")
        if options.ca_key is not None and options.tls is not None:
            try:
                pki.check_ca_key(options.tls.ca, options.ca_key)
            except pki.PkiError as exc:
                raise RuninkError(f"--tls-ca-key: {exc}") from None
        if options.tls is None and not (options.plaintext or options.insecure_dev):
            raise RuninkError(
                "no TLS: give --tls-cert, --tls-key and --tls-ca (`runink server --init DIR` makes them; "
                "`runink up` does for a local cluster), or --plaintext (development only)"
            )
        for what, (host, _port) in (("--api", options.api), ("--agents", options.agents)):
            # loopback only, unless said otherwise, in plaintext and whenever anyone may do
            # anything (--insecure-dev): TLS does not make an open door safe to publish
            if not options.insecure_bind and (options.tls is None or options.insecure_dev):
                try:
                    require_loopback(host, what, "--insecure-bind")
                except ValueError as exc:
                    raise RuninkError(str(exc)) from None
        guards = {"runink_authenticate", "runink_authorize"}
        for record in manager.records():
            if record.status == "failed" and guards & set(record.details.get("hooks", ())):
                # fail closed: without it the others would decide alone (OPA's denies ignored)
                raise RuninkError(f"plugin {record.name} failed ({record.error}): a server does not start without it")
        if not options.insecure_dev and not options.auth_keys and not _identity_plugins(manager):
            raise RuninkError(
                "no authentication configured: give --auth-key FILE (the cluster's token key; `runink up` "
                "makes one), configure an identity plugin ([plugin.oidc]), or --insecure-dev to let anyone in"
            )
        # (a bad key file: refused before anything starts)
        self.tokens = ClusterTokens(options.auth_keys) if options.auth_keys else None
        self.options = options
        self.member: Member | None = None
        self._stop = threading.Event()
        try:
            self._start(options, config, manager)
        except BaseException:  # a port taken, the member not starting: leave nothing running
            self._abandon()
            raise

    def _abandon(self) -> None:
        self._stop.set()
        if self.member is not None:
            self.member.stop()

    def _start(self, options: ServerOptions, config: RuninkConfig, manager: PluginManager) -> None:
        if options.barn_url is not None:
            endpoints = options.barn_url.removeprefix("etcd://").split(",")
            barn = load_driver(BarnBackend, "etcd", {"endpoints": endpoints, **options.barn_tls}, manager=manager)
        elif options.barn_args:
            tls = options.tls
            member_tls = tls.barn_flags() if tls else ["--plaintext"]  # (a server in plaintext said so)
            if tls is not None:  # its admins' tokens are taken too, by clients without a certificate
                member_tls += [flag for key in options.auth_keys for flag in ("--auth-key", str(key))]
            self.member = Member([*options.barn_args, *member_tls], options.config_path)
            # its own member first (whether it leads is asked of it), then whichever leads:
            # a follower would forward every call, one more hop and twice the work
            found = {"endpoints": [self.member.http], "follow_leader": True, **(tls.barn_options() if tls else {})}
            barn = load_driver(BarnBackend, "raft", found, manager=manager)
        else:
            barn = load_driver(BarnBackend, "memory", {}, manager=manager)
        self.barn: BarnBackend = barn
        self.store = ClusterStore(barn)
        self.lifecycle = Lifecycle(
            self.store,
            secrets=secret_backend(options, config, manager, barn),
            rates=config.cost,
            default_request=config.admission.default_request,
            scenario_memory=config.limits.memory_bytes,
        )
        if self.tokens is not None:  # tokens revoked before they expire: refused by every server
            self.tokens.revocations = Revocations(barn, max_ttl=MAX_TTL, leeway=LEEWAY)
        policy: Any = configured_driver(config, "scheduler", manager)
        fenced = ClusterStore(barn)  # the loop's own: its commits compare the epoch it claimed
        scheduler = Scheduler(fenced, manager, policy)
        liveness = Liveness(fenced, options.liveness_timeout)
        lease = LeaseLeadership(barn) if options.barn_url is not None else None
        leads: Callable[[], bool] = lease or LeaderCheck(barn)
        chores: list[Callable[[float], object]] = [
            AuditRetention(barn, config.cluster.audit_keep_seconds, config.cluster.audit_keep_max),
            JobRetention(fenced, config.cluster.jobs_keep_seconds, config.cluster.jobs_keep_max),
        ]
        self.scaler: Scaler | None = configured_driver(config, "scaling", manager)
        if self.scaler is not None:  # (the leader's: nodes added and removed, see [scaling])
            chores.append(Autoscaler(fenced, self.scaler, ScalingPolicy.from_config(config.scaling)))
        self.loop = ControlLoop(
            fenced, scheduler, liveness, is_leader=leads, chores=chores, hung_after=config.scheduler.hung_after_seconds
        )
        # a hung loop schedules nothing: its member hands the lead over (its lease ends)
        if self.member is not None:
            self.member.beats.healthy = lambda: not self.loop.hung()
        if lease is not None:
            lease.healthy = lambda: not self.loop.hung()
        self.lifecycle.placer = self.loop.place_with  # (while it leads: a submission placed in its own commit)
        # one watch of every key: the view of the nodes, herds and live tasks that passes,
        # submissions and long-polls read, and the newest records kept for the agents' reports
        # (first: what the others wake finds them), a round at once when tasks change, a job's
        # waiting readers answered when it does, and the agents' long-polls woken
        self.job_waits = JobWaits()
        feed = BarnFeed(barn, self._stop)
        view = LiveView(barn, feed)
        self.lifecycle.store.view = fenced.view = view
        recent = RecentRecords()
        feed.listen(recent.on_change)
        feed.on_restart(recent.reset)
        self.lifecycle.store.recent = recent.get
        feed.listen(self.loop.on_change)
        feed.listen(self.job_waits.on_change)
        feed.listen(TransitionLog(manager, leads).on_change)  # tasks' transitions, to the log exporters
        feed.on_restart(self.job_waits.reset)
        tokens = self.tokens
        self.agents = serve_agents(
            self.lifecycle,
            options.agents[0],
            options.agents[1],
            insecure_bind=options.insecure_bind,
            tokens=None if options.insecure_dev else tokens,
            tls=options.tls,
            # the nodes' lineage events go to this server's sinks (the catalog it owns)
            on_lineage=functools.partial(emit_lineage, manager),
            feed=feed,
        )
        self._feed_thread = feed.start()
        if tokens is not None:
            manager.register(tokens, "cluster-tokens")
        auth = ApiAuth(manager, self.store, insecure=options.insecure_dev, tokens=tokens)
        if options.insecure_dev:
            log.warning("--insecure-dev: the API authenticates nobody and allows everything")
        self.api, self._api_thread = serve_api(
            create_app(
                self.lifecycle,
                self.store,
                self.job_waits,
                auth=auth,
                tokens=tokens,
                tls=options.tls,
                ca_key=options.ca_key,
                manager=manager,
                admission=Admission(self.store, manager, config.admission, rates=config.cost),
                scaling=None if self.scaler is None else (self.scaler, ScalingPolicy.from_config(config.scaling)),
                scheduling_api=view.scheduling_api,
            ),
            options.api[0],
            options.api[1],
            insecure_bind=options.insecure_bind,
            tls=options.tls,
        )
        # (started once the API answers, so its first claim names where: a host listening on
        # every address names none, clients reach it by a name of their own)
        self.loop.api = "" if options.api[0] in ("", "0.0.0.0", "::") else self.addresses()["api"]
        self.loop.start(self._stop)

    def addresses(self) -> dict[str, Any]:
        """Where it listens (the ports it was given, or the ones it got for port 0)."""
        return {
            "api": f"{'http' if self.options.tls is None else 'https'}://{self.options.api[0]}:{self.api.config.port}",
            "agents": f"{self.options.agents[0]}:{self.agents.port}",
            "barn": self.member.http if self.member else "memory",
            "pid": os.getpid(),
        }

    def close(self) -> None:
        self._stop.set()
        stop_api(self.api, self._api_thread)
        self.agents.stop(grace=2).wait(3)
        if self.scaler is not None:
            self.scaler.close()  # (its nodes go on)
        self.barn.close()
        # the watch ends with its Barn client: a thread left inside a gRPC or HTTP call when
        # the interpreter exits can hold a lock that the call's finalizer then waits for
        self._feed_thread.join(FEED_STOP_WAIT)
        if self.member is not None:
            self.member.stop()


def _identity_plugins(manager: PluginManager) -> bool:
    """Whether an installed identity plugin is configured to authenticate someone: one that
    implements runink_authenticate and says ``configured = True`` (an OIDC plugin with no
    issuer set installed by default is not: it would let nobody in)."""
    for plugin in manager.pm.get_plugins():
        configured = getattr(plugin, "configured", None)
        if callable(getattr(plugin, "runink_authenticate", None)) and configured is True:
            return True
    return False


def parse_address(text: str, what: str) -> tuple[str, int]:
    found = split_address(text)
    if found is None:
        raise RuninkError(f"{what} {text!r}: expected HOST:PORT")
    return found[0] or "127.0.0.1", found[1]
