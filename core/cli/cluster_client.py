"""The CLI's client of a cluster's REST API: which server to ask, and one-line errors.

The server is found, first match wins, from ``--server``, ``$RUNINK_SERVER``, the config's
``[cluster] server``, or the cluster ``runink up`` started (its context file, as kind sets
kubectl's context). Several comma-separated addresses may be given: any server answers API
calls, so the client tries the next one when one cannot be reached.

Every call carries a bearer token, first match wins: ``$RUNINK_TOKEN``, the one ``runink
login`` stored, or the admin token of the cluster ``runink up`` started.
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from runink.core.errors import RuninkError
from runink.core.http_connection import HttpConnection

if TYPE_CHECKING:
    import ssl

TIMEOUT = (10.0, 2.0)  # seconds: a request's, and a connection's
SCHEDULER_HEADER = "X-Runink-Scheduler"  # (core/server/api.py's: the server that schedules now)
#: a read answered 429 or 503 (busy: a caller's second job list, the Barn electing) is asked
#: again this many times, after its Retry-After (at most BUSY_WAIT seconds each)
BUSY_RETRIES, BUSY_WAIT = 3, 2.0
# the index (index_store) of the server that last scheduled, per cluster: a command's first
# call goes there (its submission is placed in the commit that stores it), not to the first
# server given. A stale hint costs what no hint costs: the answer names the new one.
HINTS = "scheduler"


def part(value: object) -> str:
    """One part of an API path, quoted: a name or id given on the command line with a '/', '?'
    or '#' in it reaches the server as what it is (and is refused there, naming it), never as
    another path or a query."""
    return quote(str(value), safe="")


class ClusterError(RuninkError):
    """The cluster said no (its one-line reason), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status of the answer, if there was one


def context_file() -> Path:
    """Where ``runink up`` writes the local cluster it started (``runink down`` removes it)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runink" / "cluster.json"


def read_context() -> dict[str, Any] | None:
    """The local cluster `runink up` started, or None. Only a file of this user's that no one
    else may write is read (a forged one named processes for `runink down` to kill and a
    folder to remove), through no link."""
    data = _read_own_file(context_file(), 1 << 20)
    try:
        found = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _read_own_file(path: Path, limit: int) -> bytes | None:
    """At most ``limit`` bytes of ``path`` if it is a regular file of this user's that no one
    else may write (``_regular_file``); None otherwise."""
    try:
        info, data = _regular_file(path, limit)
    except (OSError, _NotRegular):
        return None
    return None if _others_may_write(info) else data


class _NotRegular(Exception):
    pass


def _regular_file(path: Path, limit: int) -> tuple[os.stat_result, bytes]:
    """``path``'s status and at most ``limit`` bytes of it, opened through no link and without
    waiting (a FIFO); _NotRegular if it is no regular file, OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _NotRegular()
        return info, os.read(fd, limit)
    finally:
        os.close(fd)


def _others_may_write(info: os.stat_result) -> bool:
    """Whether another user owns the file or may write it (and so put what they like in it)."""
    return info.st_uid != os.geteuid() or bool(info.st_mode & 0o022)


MAX_TOKEN = 16 * 1024  # characters of a token the CLI or an agent reads


def one_token(text: str, where: str) -> str:
    """``text`` stripped, if it is one token (one line, no spaces, at most MAX_TOKEN
    characters); else RuninkError naming ``where``."""
    text = text.strip()
    if not text or len(text) > MAX_TOKEN or not text.isprintable() or " " in text:
        raise RuninkError(f"{where}: not one token of at most 16 KiB on one line, without spaces")
    return text


def read_token_file(path: Path, option: str = "--token-file") -> str:
    """The one-line token in ``path`` (a regular file of at most 16 KiB, no symlink followed, a
    FIFO not waited on); RuninkError naming ``option`` and the file otherwise. One of another
    user's or that others may write is refused (they could put another token in it); one that
    others may read is taken with a warning (`runink nodes token NODE > FILE` makes one under
    the usual umask), where a key's is refused (fstree.check_private)."""
    try:
        info, data = _regular_file(path, MAX_TOKEN + 1)
        text = data.decode()
    except _NotRegular:
        raise RuninkError(f"{option} {path}: not a regular file; refused") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuninkError(f"{option} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if _others_may_write(info):
        raise RuninkError(
            f"{option} {path}: owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}: "
            "another user may put a token in it; refused (a file of yours, chmod 600)"
        )
    if info.st_mode & 0o077:
        import logging

        logging.getLogger(__name__).warning(
            "%s %s has mode %04o: others on this machine may read the token; chmod 600 it",
            option,
            path,
            stat.S_IMODE(info.st_mode),
        )
    return one_token(text, f"{option} {path}")


def given_token(token: str | None, token_file: Path | None) -> str | None:
    """The token a command was given: TOKEN itself, ``-`` for stdin (bounded) or
    ``--token-file`` (read_token_file: no link followed); None if neither was given."""
    if token_file is not None:
        return read_token_file(token_file)
    if token == "-":
        return one_token(sys.stdin.read(MAX_TOKEN + 2), "stdin")
    return token


def token_file() -> Path:
    """Where ``runink login`` keeps the CLI's token (readable by its owner only)."""
    return context_file().with_name("token")


def read_token(addresses: list[str] | None = None) -> str | None:
    """The token the CLI sends (see the module's doc), or None. The token of the cluster
    ``runink up`` started goes only to that cluster's own API addresses (``addresses`` all
    among them): $RUNINK_SERVER naming another server got the cluster-admin token."""
    if token := os.environ.get("RUNINK_TOKEN", "").strip():
        return token
    stored = _stored_token()
    if stored:
        return stored
    context = read_context()
    found = context.get("token") if context else None
    if not isinstance(found, str) or not found:
        return None
    own = context.get("api") if context else None
    if addresses is not None:
        ours = {_server(str(a)) for a in own} if isinstance(own, list) else set()
        if not {_server(a) for a in addresses} <= ours:
            return None
    return found


def _stored_token() -> str:
    """The token `runink login` stored, "" if none. One in a file that is not this user's own
    (another's, others may write it, a link) is not sent, with a warning saying why; one that
    is not one token is an error naming the file (its text goes in a request header)."""
    path = token_file()
    data = _read_own_file(path, MAX_TOKEN + 2)
    if data is None:
        if os.path.lexists(path):
            import logging

            logging.getLogger(__name__).warning(
                "%s: not a file of this user's that only it may write (or a link): its token is not sent; "
                "`runink login` again",
                path,
            )
        return ""
    text = data.decode(errors="replace")
    return one_token(text, str(path)) if text.strip() else ""


def _server(address: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of an API address, spelt one way: the scheme and host in lower
    case, the default port filled in, localhost as 127.0.0.1 (a trailing / or LOCALHOST named
    the same server)."""
    from urllib.parse import urlsplit  # (only here: every command's start pays its imports)

    parts = urlsplit(address if "://" in address else f"http://{address}")
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, "127.0.0.1" if host == "localhost" else host, port


def _plain_to_another_machine(address: str) -> bool:
    """``address`` is http:// to a host that is not this machine's loopback."""
    scheme, host, _ = _server(address)
    if scheme != "http":
        return False
    import ipaddress

    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def server_addresses(flag: str | None, configured: str | None) -> list[str]:
    """The API addresses to try, in order, as ``http://host:port``."""
    text = flag or os.environ.get("RUNINK_SERVER") or configured
    if not text:
        context = read_context()
        if context and isinstance(context.get("api"), list):
            return [str(a) for a in context["api"]]
        raise ClusterError(
            "no cluster to talk to: give --server HOST:PORT, set $RUNINK_SERVER or [cluster] server, "
            "or start a local one with `runink up`"
        )
    return [a if "://" in a else f"http://{a}" for a in (part.strip() for part in text.split(",")) if a]


def cluster_ca(configured: str | None) -> str | None:
    """The CA certificate an https:// server is checked against: ``[cluster] ca``, else the
    one of the cluster ``runink up`` started; None: the system's CAs."""
    if configured:
        return configured
    context = read_context()
    found = context.get("ca") if context else None
    return found if isinstance(found, str) and found else None


class ClusterClient:
    """Calls to a cluster's REST API over one kept-alive connection per server.

    On ``runink.core.http_connection`` (httptools), not httpx nor ``http.client``: every cluster
    command pays its client's imports at start, and httpx (with the rich it imports for its own
    CLI) costs ~60-100 ms of them, ``http.client`` ~10 (the ``email`` package it parses headers
    with). The calls are JSON requests to servers named by address, so nothing else is needed.
    Proxies in the environment are not used: the servers are asked directly.

    Every answer names the server that schedules now (SCHEDULER_HEADER): when it is one of
    ``addresses``, the next calls go there first (a submission there is placed in the commit
    that stores it: one Barn commit less on a job's way). Never to a server not given. The
    server named last is kept for the next command (HINTS), whose first call goes there."""

    def __init__(self, addresses: list[str], timeout: tuple[float, float] = TIMEOUT, *, ca: str | None = None) -> None:
        self.addresses = addresses
        self.timeout, self.connect_timeout = timeout
        token = read_token(addresses)
        self._headers = {"Accept": "application/json", "User-Agent": "runink-cli"}
        if token:
            plain = next((a for a in addresses if _plain_to_another_machine(a)), None)
            if plain is not None:  # (anyone on the way would read it, and be the CLI's user)
                raise ClusterError(
                    f"{plain}: plain HTTP to another machine would carry your token in the clear: give https://"
                )
            self._headers["Authorization"] = f"Bearer {token}"
        self._ca = ca
        self._tls: ssl.SSLContext | None = None  # made at the first https:// server
        self._connections: dict[str, HttpConnection] = {}
        self._scheduler = ""  # the server the last answer named (SCHEDULER_HEADER)
        self._retry_after = 1.0  # seconds the last answer asked to wait (Retry-After)
        self._hint = _scheduler_hint(addresses)
        self._prefer(self._hint)

    def close(self) -> None:
        named = self._scheduler.rstrip("/")
        if named and named != self._hint and named in (a.rstrip("/") for a in self.addresses):
            from runink.core.cli import index_store

            index_store.save(HINTS, _cluster_key(self.addresses), named, set())
            self._hint = named
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        """The answer's JSON; raises ClusterError with the server's one-line reason. A read
        the server was too busy for (429, 503) is asked again, BUSY_RETRIES times at most."""
        import time

        for _ in range(BUSY_RETRIES if method == "GET" else 0):
            try:
                return self._call(method, path, body, **params)
            except ClusterError as exc:
                if exc.status not in (429, 503):
                    raise
                time.sleep(min(BUSY_WAIT, max(0.1, self._retry_after)))
        return self._call(method, path, body, **params)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        unreachable = []
        query = {k: _query_value(v) for k, v in params.items() if v is not None}
        target = path + ("?" + urlencode(query) if query else "")
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for address in self.addresses:
            try:
                status, content = self._ask(address, method, target, payload)
            except _NotSent as exc:  # the next one
                unreachable.append(f"{address}: {_reason(exc.__cause__ or exc)}")
                continue
            except ValueError as exc:  # (refused before anything was sent: a job id with a space ...)
                raise ClusterError(f"{method} {path}: {exc}") from None
            except OSError as exc:
                if method == "GET":  # reading again elsewhere changes nothing
                    unreachable.append(f"{address}: {_reason(exc)}")
                    continue
                # The request may have been carried out: sending it again elsewhere could do it
                # twice (two jobs for one `exec`), so say so instead.
                raise ClusterError(
                    f"{method} {path}: {address} did not answer ({_reason(exc)}); it may have been "
                    "done: check (e.g. `runink jobs list`) before trying again"
                ) from None
            self._prefer(self._scheduler)
            if status >= 400:
                raise ClusterError(f"{method} {path}: {status} {_detail(content)}", status)
            try:
                return json.loads(content) if content else None
            except ValueError:
                raise ClusterError(f"{method} {path}: {address} answered {status} with no JSON") from None
        raise ClusterError(f"no server answered ({'; '.join(unreachable)})")

    def _prefer(self, address: str) -> None:
        """Ask ``address`` first from now on, if it is one of the servers given."""
        wanted = address.rstrip("/")
        if not wanted or self.addresses[0].rstrip("/") == wanted:
            return
        known = [a for a in self.addresses if a.rstrip("/") == wanted]
        if known:
            self.addresses = [known[0], *(a for a in self.addresses if a is not known[0])]

    def _ask(self, address: str, method: str, target: str, payload: bytes | None) -> tuple[int, bytes]:
        """The answer's status and body. Raises _NotSent when the request could not be sent
        (no connection), OSError when it was sent and no answer came."""
        kept = self._kept(address)
        if kept is not None:
            try:
                return self._exchange(kept, method, target, payload)
            except OSError:
                self._drop(address)
                if method != "GET":
                    raise
                # (a server may close a kept connection just as a request goes out on it: a
                # read is asked again once, on a new connection)
        try:
            connection = self._connect(address)
        except OSError as exc:  # (ssl.SSLError is one)
            self._drop(address)
            raise _NotSent() from exc
        try:
            return self._exchange(connection, method, target, payload)
        except OSError:
            self._drop(address)
            raise

    def _kept(self, address: str) -> HttpConnection | None:
        """The kept connection to ``address``, unless the server has closed it (or sent what
        nobody asked for) since its last answer."""
        connection = self._connections.get(address)
        if connection is not None and connection.sock is not None and not _readable(connection.sock):
            return connection
        self._drop(address)
        return None

    def _connect(self, address: str) -> HttpConnection:
        """A new connection to ``address``, connected within the connect timeout (TLS too)."""
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClusterError(f"{address}: not an http:// or https:// server address")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        context = self._tls_context() if parts.scheme == "https" else None
        connection = HttpConnection(parts.hostname, port, self.timeout, context, connect_timeout=self.connect_timeout)
        self._connections[address] = connection
        connection.connect()
        return connection

    def _exchange(
        self, connection: HttpConnection, method: str, target: str, payload: bytes | None
    ) -> tuple[int, bytes]:
        headers = dict(self._headers)
        if payload is not None:
            headers["Content-Type"] = "application/json"
        answer = connection.request(method, target, payload, headers)
        self._scheduler = answer.header(SCHEDULER_HEADER) or ""
        try:
            self._retry_after = float(answer.header("Retry-After") or 1)
        except ValueError:  # (an HTTP date: not ours)
            self._retry_after = 1.0
        return answer.status, answer.body

    def _drop(self, address: str) -> None:
        connection = self._connections.pop(address, None)
        if connection is not None:
            connection.close()

    def _tls_context(self) -> ssl.SSLContext:
        import ssl

        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cafile=self._ca)
            except (OSError, ssl.SSLError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else exc
                raise ClusterError(f"the cluster CA {self._ca}: {why}") from None
        return self._tls


class _NotSent(Exception):
    """No connection to the server could be made: the request was not sent."""


def _cluster_key(addresses: list[str]) -> str:
    """The cluster a list of servers names, whatever their order (the hint's key)."""
    return ",".join(sorted(a.rstrip("/") for a in addresses))


def _scheduler_hint(addresses: list[str]) -> str:
    """The server that scheduled when a command last talked to these servers (HINTS), or "".
    Only ever used to choose among ``addresses``: the hint cannot send a call elsewhere."""
    from runink.core.cli import index_store

    found = index_store.load(HINTS, _cluster_key(addresses))
    return found if isinstance(found, str) else ""


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _readable(sock: socket.socket) -> bool:
    """Whether a kept connection has input before a request was sent: the server closed it
    (or wrote something unasked). Either way it cannot carry the next request."""
    return bool(select.select([sock], [], [], 0)[0])


def _reason(exc: BaseException) -> str:
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _detail(content: bytes) -> str:
    try:
        detail = json.loads(content).get("detail")
    except (ValueError, AttributeError):
        detail = None
    text = detail if isinstance(detail, str) else content.decode("utf-8", "replace")
    return " ".join(str(text).split())[:2000]
