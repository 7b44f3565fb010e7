"""A Barn server: one member of a Raft group, serving the Barn's HTTP API.

    python -m runink.plugins.barn.raft.server --name a --raft 127.0.0.1:7001 --http 127.0.0.1:8001 \\
        --peer b=127.0.0.1:7002,127.0.0.1:8002 --peer c=127.0.0.1:7003,127.0.0.1:8003 --data-dir /var/lib/runink/barn-a

(or ``runink barn serve`` with the same options). Each member keeps the Barn's state machine
(``BarnState``) and applies the commands pysyncobj (patched: see ``_vendor/pysyncobj/syncobj.py``) commits in the
same order everywhere.

* Writes return only after commit (a majority has the entry, synced to disk: see fsync).
* Reads are linearizable, by Raft's ReadIndex (patched pysyncobj, fix 9; ``replica.py``): the
  leader records its commit index, a round of messages confirms that a majority still follows
  it in its term, and once it has applied that index it reads its own state; no log entry, no
  fsync. The reads arriving in one event-loop turn, or while a round is in flight, share a
  round. A new leader that has not yet committed an entry of its term uses a read barrier
  instead (a no-op proposed after the read arrived, committed, applied). A leader that steps
  down answers waiting reads 503, and one cut off from the majority gets no confirmation: no
  stale value. Writes (and barriers) proposed in one tick share an append (group commit).
* A follower forwards each request to the leader's HTTP API; every answer names the leader
  (``X-Runink-Leader``) so clients go there next. With no leader (or no quorum) the answer is
  503 with Retry-After, never a stale value. A 503 on a write means its outcome is unknown
  (a leader that steps down answers its waiting writes so at once): clients retry with the
  same ``request_id``, which the state applies once.
* Durability: the Raft journal (pysyncobj's file journal) plus full snapshots (``fullDumpFile``,
  written when the log is compacted: ``BarnReplica``) in ``--data-dir``; with fsync (the
  default) the journal is fdatasynced before a member acknowledges an entry and before the
  leader counts its own copy, so an acknowledged write survives a power loss of a minority,
  and a full-cluster restart.
* Security: with ``--tls-cert/--tls-key/--tls-ca`` every connection is mutual TLS with
  certificates of the cluster CA: between members (``tls.py``: a member's certificate has
  both usages and names its host) and on the HTTP API (any client certificate of the CA; no
  bearer tokens yet). Without them members and clients speak plaintext, and the Raft port
  runs what it is sent unless every member has the same ``--secret-file``.
* Threads: one event loop (uvloop; HTTP parsed by httptools: http_protocol.py) serves every
  connection; the tick thread runs Raft; a pool forwards to the leader; one thread expires
  leases.

The pieces: ``replica.py`` (the pysyncobj member, applying, snapshots, lease expiry),
``api.py`` (the HTTP routes, forwarding to the leader, the event loop), ``wire.py`` (the JSON
forms, errors and headers the client reads too), ``schema.py`` (request bodies) and
``http_protocol.py`` (the transport). This module wires them: the options' parsing helpers,
``run_server`` and ``main``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runink.core import metrics
from runink.core.fd_limits import raise_fd_limit
from runink.core.model import MetricSample
from runink.core.processes import ParentBeat
from runink.core.signals import stop_event
from runink.plugins.barn.raft.api import BarnServer
from runink.plugins.barn.raft.replica import Member, ServerConfig
from runink.plugins.barn.raft.tls import TlsFiles

if TYPE_CHECKING:
    from runink.core.plugins import PluginManager

# what other modules and tests import from here (the pieces live in replica.py, api.py, wire.py)
__all__ = [
    "BarnServer",
    "Member",
    "ServerConfig",
    "main",
    "parse_member",
    "read_secret",
    "run_server",
    "tls_files",
]

log = logging.getLogger("runink.barn")


def parse_member(text: str) -> Member:
    """``name=raft_host:port,http_host:port``."""
    name, _, addresses = text.partition("=")
    raft, _, http_address = addresses.partition(",")
    if not name or not raft or not http_address:
        raise ValueError(f"--peer: a member is name=raft_host:port,http_host:port, got {text!r}")
    return Member(name, raft, http_address)


MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 64 << 10


def read_secret(path: Path) -> bytes:
    """The shared secret from ``path`` (surrounding whitespace dropped): a private file
    (fstree.read_private_file: a regular file of this user's no one else may read, through no
    link, no FIFO waited on; it keeps code sent to the Raft port from running here). Raises
    ValueError, in one line, if the file cannot be read, is not private or is too short."""
    from runink.core.errors import RuninkError
    from runink.core.fstree import read_private_file

    try:
        secret = read_private_file(path, "--secret-file", MAX_SECRET_BYTES).strip()
    except RuninkError as error:
        raise ValueError(str(error)) from None
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"--secret-file {path}: larger than {MAX_SECRET_BYTES} bytes")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"--secret-file {path}: the secret has {len(secret)} bytes, at least {MIN_SECRET_BYTES} needed"
        )
    return secret


def tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
    """The member's TLS identity from ``--tls-cert``, ``--tls-key``, ``--tls-ca`` (all three, or
    none: None); checked now, so a bad file is one line at start, not refused connections later.
    Raises ValueError (pki.PkiError) naming the flag or file."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return None
    missing = [flag for flag, path in given.items() if path is None]
    if missing:
        raise ValueError(f"--tls-cert, --tls-key and --tls-ca go together: {', '.join(missing)} missing")
    assert cert is not None and key is not None and ca is not None
    files = TlsFiles(cert, key, ca)
    files.check()
    return files


#: the exit status of a member whose server has gone (serve's ``served``: it closed its end)
UNSERVED_EXIT = 3
SERVED_CHECK_EVERY = 0.1  # seconds between looks at the server's beats


def run_server(config: ServerConfig, manager: PluginManager | None = None, *, served: ParentBeat | None = None) -> int:
    """Run one member until SIGTERM/SIGINT (``runink barn serve`` parses its options: commands.py).
    ``manager``: the plugins its metrics go to (none: not measured). ``served``: the beats of
    the server this member runs for: while they are silent the member is held back (it hands
    its lead over and stands for no election: BarnNode.hold_back); once that server has gone,
    it stops (UNSERVED_EXIT)."""
    raise_fd_limit()  # before the server sizes its connection cap from it
    name, raft = config.me.name, config.me.raft
    logging.basicConfig(level=logging.WARNING, format=f"barn {name}: %(levelname)s %(message)s")
    if config.secret is None and config.tls is None:
        log.warning(
            "the Raft port %s is unauthenticated: anyone who can connect to it can run code in this server; "
            "give every member the same --secret-file, or a certificate of the cluster CA (--tls-*)",
            raft,
        )
    # (before it says it serves: a SIGTERM from then on is a stop, never the default death)
    stop = stop_event()
    server = BarnServer(config)
    server.start()
    unregister = _measure(server, manager) if manager is not None else None
    print(json.dumps({"event": "serving", "name": name, "http": config.me.http, "pid": os.getpid()}), flush=True)
    unserved = held = False
    while not stop.wait(SERVED_CHECK_EVERY if served is not None else None):
        assert served is not None
        silent = served.silent()  # (reads what the server wrote first: a member that stalled is not fooled)
        if served.gone:
            log.error("its server has gone: stopping")
            unserved = True
            break
        if silent != held:
            # A leader whose server is paused (SIGSTOP) or frozen kept every other server from
            # scheduling: the lead goes to a member whose server runs. Held back, the member
            # still votes and replicates, so the group keeps its majority.
            held = silent
            server.node.hold_back(held)
            if held:
                log.error(
                    "its server has written nothing for %.1f s (paused or frozen): this member hands its lead "
                    "over and stands for no election until the server runs again",
                    served.silent_for(),
                )
            else:
                log.warning("its server runs again: this member may lead again")
    if unregister is not None:
        unregister()
    server.close()
    return UNSERVED_EXIT if unserved else 0


def _measure(server: BarnServer, manager: PluginManager) -> Callable[[], None]:
    """The member's raft state as gauges (read when scraped), its writes as events."""

    def commit(seconds: float, committed: bool) -> None:
        result = "committed" if committed else "failed"
        found = [metrics.sample("runink_barn_proposals_total", 1, result=result)]
        if committed:
            found.append(metrics.sample("runink_barn_proposal_seconds", seconds))
        metrics.report(manager, found)

    def gauges() -> list[MetricSample]:
        status = server.status()
        connected = sum(1 for p in status["peers"].values() if p["connected"])
        return [
            metrics.sample("runink_barn_leader", 1 if status["state"] == "leader" else 0),
            metrics.sample("runink_barn_term", status["term"]),
            metrics.sample("runink_barn_commit_index", status["commit_index"]),
            metrics.sample("runink_barn_applied_index", status["last_applied"]),
            metrics.sample("runink_barn_apply_lag", max(0, status["commit_index"] - status["last_applied"])),
            metrics.sample("runink_barn_peers_connected", connected),
        ]

    server.node.on_commit = commit
    return metrics.register_gauges(gauges)


def main(argv: list[str] | None = None) -> int:
    """``python -m runink.plugins.barn.raft.server``: the same command, with the same options,
    as ``runink barn serve`` (one parser: commands.serve_command)."""
    from runink.plugins.barn.raft.commands import run_serve

    return run_serve(sys.argv[1:] if argv is None else argv, prog_name="python -m runink.plugins.barn.raft.server")


if __name__ == "__main__":
    sys.exit(main())
