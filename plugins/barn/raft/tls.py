"""Mutual TLS for a Barn member: between members (Raft) and on its HTTP API.

``TlsFiles`` names a member's certificate, key and the cluster CA (``runink barn serve
--tls-cert --tls-key --tls-ca``; made by ``runink.core.server.pki``). The member's certificate
serves both ways (usage "both": serverAuth and clientAuth), since every member accepts
connections from the others and opens connections to them.

Raft: pysyncobj's TCP transport has no TLS, so ``TlsTransport`` (a ``TCPTransport`` passed to
``SyncObj`` as its transport class) replaces its connections with ``TlsConnection``: TLS run by
an ``ssl.SSLObject`` over two ``MemoryBIO``s on pysyncobj's own non-blocking socket and poller
(the tick thread), so nothing blocks and pysyncobj's framing, callbacks and optional Fernet
sealing (``--secret-file``) are unchanged above it. Both sides present a certificate of the
cluster CA, and a member's must carry both usages: a client certificate of the same CA (an
agent's, a user's) does not make its holder a member, whose messages are unpickled. The
connecting side checks the other's name (its Raft host) against the certificate's SANs; the
accepting side checks the member address the other announces first (pysyncobj's own
handshake) the same way, so a member's certificate speaks for that member only, and refuses
pysyncobj's read-only nodes (they would be sent the whole log). With
TLS 1.3 a client learns that the server refused its certificate only after its own handshake
has finished, so the accepting side sends one byte (``ACCEPTED``) once it has checked the
certificate, and the connecting side reports the connection to pysyncobj only when that byte
arrives: a refused member never looks connected, even briefly.

A refused connection (plaintext, another CA's certificate, a client-only certificate, a
handshake not finished within the connection timeout) is closed and logged as a warning with
the reason, once per peer and reason every ``REFUSAL_LOG_INTERVAL`` seconds (pysyncobj
reconnects every election timeout). Nothing about a peer's bytes can raise out of the tick
thread: an unexpected error closes that connection and is logged.

pysyncobj's ``TcpConnection`` keeps its socket and buffers in name-mangled private attributes
and does its I/O in private methods, so ``TlsConnection`` is a class of its own with the same
interface (what ``TCPTransport`` calls), not a subclass that would reach into those names.
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, _getAddrType, set_keepalive
from pysyncobj.transport import TCPTransport

from runink.core.server import pki

log = logging.getLogger("runink.barn")

ACCEPTED = b"\x01"  # the accepting side's first plaintext byte: "your certificate is accepted"
REFUSAL_LOG_INTERVAL = 600.0  # seconds before the same refusal of the same peer is logged again
DEADLINE_CHECK = 0.1  # seconds between looks for handshakes past their deadline
READ_CHUNK = 1 << 17  # plaintext bytes taken from the TLS object at a time
LISTEN_BACKLOG = 128
# OpenSSL's reasons when the bytes received are not TLS at all
NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"}


@dataclass(frozen=True)
class TlsFiles:
    """A member's certificate and key (usage "both"), and the cluster CA that signed it."""

    cert: Path
    key: Path
    ca: Path

    def check(self) -> None:
        """Raise pki.PkiError (one line: which file, why) unless the three load as a TLS
        identity; a member must not start and then refuse every connection."""
        pki.server_context(self.cert, self.key, self.ca)
        held = pki.usages(pki.read_certificate(self.cert))
        if held != {"server", "client"}:
            raise pki.PkiError(
                f"{self.cert}: a member's certificate needs both usages (server and client), "
                f"it has {', '.join(sorted(held)) or 'none'} (issue it with usage 'both')"
            )

    def http_server_context(self, *, tokens_too: bool = False) -> ssl.SSLContext:
        """The HTTP API's: clients must present a certificate of the cluster CA, or, with
        ``tokens_too``, may present none (they then need a cluster admin's token) but not
        another's."""
        return pki.server_context(self.cert, self.key, self.ca, require_client_cert=not tokens_too)

    def http_client_context(self) -> ssl.SSLContext:
        """A follower forwarding to the leader's HTTP API: this member's certificate, the
        leader's name checked."""
        return pki.client_context(self.cert, self.key, self.ca)


class RefusalLog:
    """Warnings about refused connections, once per (peer, reason) per interval."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.interval = interval
        self._logged: dict[tuple[str, str], float] = {}

    def refused(self, peer: str, where: str, reason: str) -> None:
        """``peer``: who, for counting (an address to connect to, or the host a connection came
        from: its port changes at every attempt); ``where``: who, for the message."""
        now = time.monotonic()
        if now - self._logged.get((peer, reason), -self.interval) < self.interval:
            return
        if len(self._logged) > 1024:  # bounded, whatever peers come and go
            self._logged = {k: t for k, t in self._logged.items() if now - t < self.interval}
        self._logged[(peer, reason)] = now
        log.warning("Raft connection %s refused: %s", where, reason)


def refusal_reason(error: BaseException) -> str:
    """Why a TLS handshake or read failed, in words an operator can act on."""
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or str(error)
        if "local issuer" in detail or "self-signed" in detail or "self signed" in detail:
            detail += " (it is of another CA than this cluster's)"
        return f"the peer's certificate failed verification: {detail}"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        if reason in NOT_TLS:
            return f"the peer does not speak TLS (a member started without --tls-*?): {reason}"
        if "UNKNOWN_CA" in reason:
            return f"the peer does not trust this cluster's CA (its certificates are of another CA): {reason}"
        if "ALERT" in reason:
            return f"the peer refused this member's certificate or TLS parameters: {reason}"
        return f"TLS error: {reason or error}"
    return f"{type(error).__name__}: {error}"


class TlsConnection:
    """One Raft connection over TLS, with pysyncobj's ``TcpConnection`` interface.

    ``server_side``: accepted by this member (``TlsServer``), else opened by ``connect``.
    States: CONNECTING until the handshake and the certificate checks are done (and, when
    connecting, until the other side's ``ACCEPTED``), then CONNECTED: only then does pysyncobj
    learn of it. Runs on the tick thread only.
    """

    def __init__(
        self,
        poller: Any,
        context: ssl.SSLContext,
        refusals: RefusalLog,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        sock: socket.socket | None = None,
        timeout: float = 10.0,
        send_buffer: int = 2**16,
        recv_buffer: int = 2**16,
        keepalive: tuple[int, int, int] | None = None,
    ) -> None:
        # what TCPTransport reads and sets (pysyncobj's names)
        self.sendRandKey: bytes | None = None
        self.recvRandKey: bytes | None = None
        self.recvLastTimestamp = 0
        self.encryptor: Any = None
        self._poller = poller
        self._context = context
        self._refusals = refusals
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._timeout = timeout
        self._send_buffer = send_buffer
        self._recv_buffer = recv_buffer
        self._keepalive = keepalive
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None
        self._sock: socket.socket | None = None
        self._fileno: int | None = None
        self._state = CONNECTION_STATE.DISCONNECTED
        self._reset()
        if sock is not None:
            self._sock, self._fileno = sock, sock.fileno()
            self._peer, self._where = _peer_name(sock)
            self._state = CONNECTION_STATE.CONNECTING
            self._set_keepalive()
            self._start_tls()
            self._subscribe()

    def _reset(self) -> None:
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tcp_connecting = False
        self._handshaken = False
        self._received_any = False  # a connection closed before sending a byte is a port probe
        self._awaiting_accept = False
        self._plain_out = bytearray()  # frames sent before the handshake finished
        self._raw_out = bytearray()  # TLS records not yet taken by the socket
        self._read_buffer = bytearray()
        self._last_read = monotonic()
        self._mask = 0  # the events the poller watches for
        self._peer = self._where = "?"
        self.peer_certificate = b""  # DER, once the handshake is done

    # --- TcpConnection's interface ----------------------------------------------------------

    def setOnConnectedCallback(self, callback: Callable[[], None] | None) -> None:
        self._on_connected = callback

    def setOnMessageReceivedCallback(self, callback: Callable[[Any], None] | None) -> None:
        self._on_message = callback

    def setOnDisconnectedCallback(self, callback: Callable[[], None] | None) -> None:
        self._on_disconnected = callback

    @property
    def state(self) -> int:
        return int(self._state)

    def fileno(self) -> int | None:
        return self._fileno

    def getSendBufferSize(self) -> int:
        return len(self._raw_out) + len(self._plain_out)

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:  # pysyncobj's node whose name did not resolve
            return False
        self._close_socket()
        self._reset()
        self._peer = f"{self._server_hostname or host}:{port}"
        self._where = f"to {self._peer}"
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self._set_keepalive()
        try:
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            self._close_socket()
            return False
        self._fileno = sock.fileno()
        self._state = CONNECTION_STATE.CONNECTING
        self._tcp_connecting = True
        self._subscribe()
        return True

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = zlib.compress(pysyncobj_pickle.dumps(message), 3)
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(monotonic()))
        frame = struct.pack("i", len(data)) + data
        if self._state != CONNECTION_STATE.CONNECTED:
            self._plain_out += frame  # written once the handshake is done
            return
        self._encrypt(frame)
        self._flush()
        self._subscribe()  # what the socket did not take goes when it is writable

    def disconnect(self) -> None:
        notify = self._on_disconnected is not None and self._state != CONNECTION_STATE.DISCONNECTED
        self.sendRandKey = None
        self.recvRandKey = None
        self.recvLastTimestamp = 0
        self._close_socket()
        self._reset()
        self._state = CONNECTION_STATE.DISCONNECTED
        if notify and self._on_disconnected is not None:
            self._on_disconnected()

    # --- deadlines (TlsTransport's tick) -----------------------------------------------------

    def check_deadline(self, now: float) -> None:
        """Close a connection whose handshake (or the other side's ACCEPTED) is overdue: a peer
        that does not speak TLS may just wait for more bytes, sending no event at all."""
        if self._state == CONNECTION_STATE.CONNECTING and now - self._last_read > self._timeout:
            self._refuse(f"no TLS handshake within {self._timeout:g}s (does the peer speak TLS?)")

    # --- events -----------------------------------------------------------------------------

    def _on_event(self, descriptor: int, event: int) -> None:
        if descriptor != self._fileno:
            self._poller.unsubscribe(descriptor)
            return
        try:
            self._handle(event)
        except Exception:  # never out of the tick thread: this connection goes, the member stays
            log.exception("Raft connection %s: unexpected error; closed", self._where)
            self.disconnect()

    def _handle(self, event: int) -> None:
        if monotonic() - self._last_read > self._timeout:
            self.disconnect()
            return
        if self._tcp_connecting:
            assert self._sock is not None
            if event & POLL_EVENT_TYPE.ERROR or self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()  # refused or unreachable: pysyncobj retries, nothing to log
                return
            self._tcp_connecting = False
            self._last_read = monotonic()
            self._start_tls()
        if event & (POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR):
            # on an error too: what arrived before it (a TLS alert saying why) is read first
            closed = self._receive()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
            if closed or event & POLL_EVENT_TYPE.ERROR:
                # (a probe of the port, such as the check before adding a member, sends nothing: not logged)
                if self._state == CONNECTION_STATE.CONNECTING and self._received_any:
                    self._refuse("the peer closed the connection during the TLS handshake")
                else:
                    self.disconnect()
                return
        if event & POLL_EVENT_TYPE.WRITE:
            self._flush()
        if self._state != CONNECTION_STATE.DISCONNECTED:
            self._subscribe()

    def _receive(self) -> bool:
        """Read what the socket has, decrypt it, deliver whole messages; True if the peer
        closed its side."""
        assert self._sock is not None
        closed = False
        while True:
            try:
                data = self._sock.recv(self._recv_buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            self._incoming.write(data)
            self._received_any = True
            self._last_read = monotonic()
        if not self._handshaken:
            self._advance_handshake()
            if not self._handshaken:
                return closed
        self._decrypt()
        if self._state == CONNECTION_STATE.DISCONNECTED:
            return closed
        self._flush()  # TLS may answer on its own (a key update)
        self._deliver()
        return closed

    def _decrypt(self) -> None:
        assert self._tls is not None
        while True:
            try:
                chunk = self._tls.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.disconnect()
                return
            except ssl.SSLError as error:
                self._refuse(refusal_reason(error))
                return
            if not chunk:
                return
            if self._awaiting_accept:
                if chunk[:1] != ACCEPTED:
                    self._refuse("the peer did not accept this connection (no ACCEPTED byte)")
                    return
                chunk = chunk[1:]
                self._awaiting_accept = False
                self._established()
                if self._state == CONNECTION_STATE.DISCONNECTED:
                    return
            self._read_buffer += chunk

    def _deliver(self) -> None:
        buffer = self._read_buffer
        start = 0
        while self._state == CONNECTION_STATE.CONNECTED and len(buffer) - start >= 4:
            (length,) = struct.unpack_from("i", buffer, start)
            if length < 0:
                self._refuse(f"a frame of negative length {length}")
                return
            if len(buffer) - start - 4 < length:
                break
            data = bytes(buffer[start + 4 : start + 4 + length])
            start += 4 + length
            message = self._decode(data)
            if self._state != CONNECTION_STATE.CONNECTED:
                return
            if self._on_message is not None:
                self._on_message(message)
        if self._state != CONNECTION_STATE.DISCONNECTED:
            del buffer[:start]

    def _decode(self, data: bytes) -> Any:
        # pysyncobj's own checks (TcpConnection.__processParseMessage): any failure drops the connection
        try:
            if self.encryptor:
                timestamp = self.encryptor.extract_timestamp(data)
                if timestamp < self.recvLastTimestamp:
                    raise ValueError("a sealed message older than the last")
                self.recvLastTimestamp = timestamp
                data = self.encryptor.decrypt(data)
            message = pysyncobj_pickle.loads(zlib.decompress(data))
            if self.recvRandKey:
                random_key, message = message
                if random_key != self.recvRandKey:
                    raise ValueError("wrong connection key")
        except Exception:
            self.disconnect()  # as pysyncobj does; with --secret-file: a peer with another secret
            return None
        return message

    # --- TLS --------------------------------------------------------------------------------

    def _start_tls(self) -> None:
        self._tls = self._context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=self._server_side,
            server_hostname=None if self._server_side else self._server_hostname,
        )
        self._advance_handshake()

    def _advance_handshake(self) -> None:
        assert self._tls is not None
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as error:
            self._flush()  # the alert telling the peer why
            self._refuse(refusal_reason(error))
            return
        self._handshaken = True
        der = self._tls.getpeercert(binary_form=True)
        self.peer_certificate = der or b""
        held = pki.usages(der) if der else set()
        if held != {"server", "client"}:
            self._refuse(
                "the peer's certificate is not a member's (usages: "
                f"{', '.join(sorted(held)) or 'none'}; a member's has server and client)"
            )
            return
        if self._server_side:
            self._tls.write(ACCEPTED)
            self._established()
        else:
            self._awaiting_accept = True
        self._flush()

    def _established(self) -> None:
        self._state = CONNECTION_STATE.CONNECTED
        self._last_read = monotonic()
        if self._plain_out:
            self._encrypt(bytes(self._plain_out))
            self._plain_out.clear()
        if not self._server_side and self._on_connected is not None:
            self._on_connected()

    def _encrypt(self, data: bytes) -> None:
        assert self._tls is not None
        self._tls.write(data)

    def _flush(self) -> None:
        """Move TLS records to the socket, as much as it takes now."""
        if self._outgoing.pending:
            self._raw_out += self._outgoing.read()
        if not self._raw_out or self._sock is None or self._tcp_connecting:
            return
        try:
            sent = self._sock.send(self._raw_out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.disconnect()
            return
        del self._raw_out[:sent]

    def refuse(self, reason: str) -> None:
        """Close this connection and log why (once per peer and reason: RefusalLog)."""
        self._refuse(reason)

    def _refuse(self, reason: str) -> None:
        self._refusals.refused(self._peer, self._where, reason)
        self.disconnect()

    # --- the socket -------------------------------------------------------------------------

    def _subscribe(self) -> None:
        if self._fileno is None:
            return
        events = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        if self._tcp_connecting or self._raw_out or self._outgoing.pending:
            events |= POLL_EVENT_TYPE.WRITE
        if events != self._mask:
            self._poller.subscribe(self._fileno, self._on_event, events)
            self._mask = events

    def _set_keepalive(self) -> None:
        if self._sock is not None and self._keepalive is not None:
            set_keepalive(self._sock, *self._keepalive)

    def _close_socket(self) -> None:
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
            self._mask = 0
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class TlsServer:
    """pysyncobj's ``TcpServer`` (bind, unbind) accepting ``TlsConnection``s."""

    def __init__(  # noqa: PLR0917 (TcpServer's arguments)
        self,
        poller: Any,
        host: str,
        port: int,
        make: Callable[[socket.socket], TlsConnection],
        on_new: Callable[[TlsConnection], None],
        send_buffer: int,
        recv_buffer: int,
    ) -> None:
        self._poller = poller
        self._address = (host, int(port))
        self._family = _getAddrType(host)
        self._make = make
        self._on_new = on_new
        self._send_buffer = send_buffer
        self._recv_buffer = recv_buffer
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind(self._address)
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._poller.subscribe(sock.fileno(), self._accept, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self) -> None:
        if self._sock is not None:
            self._poller.unsubscribe(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _accept(self, descriptor: int, event: int) -> None:
        if self._sock is None:
            return
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:  # out of descriptors...: keep listening, say so
                log.warning("accepting a Raft connection failed: %s", error)
                return
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                connection = self._make(sock)
            except OSError:
                sock.close()
                return
            self._on_new(connection)


class TlsTransport(TCPTransport):  # type: ignore[misc]  # pysyncobj has no type hints
    """pysyncobj's TCP transport with every connection a ``TlsConnection``: pass
    ``functools.partial(TlsTransport, tls=files)`` as ``SyncObj(transportClass=...)``."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *, tls: TlsFiles) -> None:
        # set before TCPTransport.__init__, which adds the nodes and creates the server
        self._accepting = pki.server_context(tls.cert, tls.key, tls.ca, require_client_cert=True)
        self._accepting.num_tickets = 0  # members never resume a session: no tickets to make and send
        self._connecting = pki.client_context(tls.cert, tls.key, tls.ca)
        self._refusals = RefusalLog()
        self._next_deadline_check = 0.0
        super().__init__(syncObj, selfNode, otherNodes)

    def _connection(
        self, *, server_side: bool, host: str | None = None, sock: socket.socket | None = None
    ) -> TlsConnection:
        conf = self._syncObj.conf
        return TlsConnection(
            self._syncObj._poller,
            self._accepting if server_side else self._connecting,
            self._refusals,
            server_side=server_side,
            server_hostname=host,
            sock=sock,
            timeout=conf.connectionTimeout,
            send_buffer=conf.sendBufferSize,
            recv_buffer=conf.recvBufferSize,
            keepalive=conf.tcp_keepalive,
        )

    def _createServer(self) -> None:
        # TCPTransport._createServer's choice of address, with a TLS server
        conf = self._syncObj.conf
        if conf.bindAddress is not None:
            host, port = conf.bindAddress.rsplit(":", 1)
        elif self._selfNode.address is not None:
            host, port = self._selfNode.address.rsplit(":", 1)
            host = "::" if ":" in host else "0.0.0.0"
        else:
            raise RuntimeError("Unable to determine bind address")
        if host != "0.0.0.0":
            host = globalDnsResolver().resolve(host)
        self._server = TlsServer(
            self._syncObj._poller,
            host,
            int(port),
            lambda sock: self._connection(server_side=True, sock=sock),
            self._onNewIncomingConnection,
            conf.sendBufferSize,
            conf.recvBufferSize,
        )

    def addNode(self, node: Any) -> None:
        # TCPTransport.addNode, with a TLS connection checking the node's name
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conn = self._connection(server_side=False, host=node.host)
            conn.encryptor = self._syncObj.encryptor
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def _onIncomingMessageReceived(self, conn: TlsConnection, message: Any) -> None:
        # After pysyncobj's key exchange (with --secret-file) an accepted connection's first
        # message names the member it comes from: its certificate must be for that member's
        # host, as the connecting side checks the name of the member it connects to. Otherwise
        # any member's certificate could speak as any other member.
        if isinstance(message, str) and (conn.sendRandKey or not self._syncObj.encryptor):
            problem = self._claim_problem(conn, message)
            if problem:
                conn.refuse(problem)
                self._unknownConnections.discard(conn)
                return
        super()._onIncomingMessageReceived(conn, message)

    def _claim_problem(self, conn: TlsConnection, claimed: str) -> str | None:
        if claimed == "readonly":
            return "a read-only pysyncobj node: not accepted over TLS (only members)"
        node = self._nodeAddrToNode.get(claimed)
        if node is None:
            return f"it says it is {claimed!r}, which is no member of this group"
        if not pki.names_host(conn.peer_certificate, node.host):
            held = ", ".join(sorted(pki.names(conn.peer_certificate))) or "no names"
            return f"it says it is the member at {claimed}, but its certificate is for {held}, not {node.host}"
        return None

    def _onTick(self) -> None:
        super()._onTick()
        now = monotonic()
        if now >= self._next_deadline_check:
            self._next_deadline_check = now + DEADLINE_CHECK
            for conn in [*self._connections.values(), *self._unknownConnections]:
                conn.check_deadline(now)


def _peer_name(sock: socket.socket) -> tuple[str, str]:
    """(the host, for counting refusals; "from host (port p)", for messages)"""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?", "from an unknown address"
    return str(host), f"from {host} (port {port})"
