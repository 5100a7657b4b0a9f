"""The HTTPS listener: the plain listener's connections (`forward.ClientConnection`) on TLS transports.

Each accepted connection first gets a `Handshake`: bounded per client address and in total, given
`handshake_timeout` to finish, with the certificate chosen by SNI (`CertStore.map`, read once per
handshake). A connection over its address's bound (`max_handshakes_per_client`) waits for a slot, oldest
first, its bytes left in the kernel (reading paused), within the same `handshake_timeout`; only one over
the waiting bound (`TlsConfig.max_waiting_per_client`) is cut. A burst from one address (clients behind
a NAT, the backlog of a loop that stalled or of a hand-over) is served late rather than refused.

Its first bytes start the loop's own TLS layer (the one `create_server(ssl=...)` uses) with the very
same `ClientConnection` class the plain listener uses above it, so everything the plain listener does
holds here; only its listener says `https` (forwarded headers, `Secure` cookies) and adds HSTS when
configured. A failed handshake is counted by reason (`turnout_tls_handshake_failures_total`) and logged
(at most once a second per reason); so is a wait (`turnout_tls_handshake_waits_total`,
`tls.handshake_waiting`).
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from collections import Counter, deque
from typing import Any

import structlog

from ..config import ProxyConfig
from ..forward import now
from ..http import error_response
from ..router import Router
from ..server import ProxyServer
from .certs import server_context
from .config import TlsConfig
from .store import CertStore

log = structlog.get_logger("turnout.proxy.tls")

# OpenSSL's reasons, by what they say about the client.
_VERSION = frozenset({"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "WRONG_SSL_VERSION",
                      "UNKNOWN_PROTOCOL", "VERSION_TOO_LOW"})
_MALFORMED = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                        "UNEXPECTED_MESSAGE", "BAD_PACKET_LENGTH", "LENGTH_MISMATCH", "BAD_PACKET",
                        "DECODE_ERROR", "LENGTH_TOO_SHORT", "BAD_EXTENSION", "UNEXPECTED_RECORD"})
# "too-many-handshakes": over its address's running and waiting bounds; "too-many-connections": the
# proxy's max_connections; "wait-timeout": handshake_timeout passed while waiting for a slot.
REASONS = ("plain-http", "protocol-version", "no-sni", "unknown-sni", "timeout", "too-many-handshakes",
           "too-many-connections", "wait-timeout", "malformed", "no-shared-cipher", "client-closed",
           "tls-error")


def failure_reason(exc: BaseException) -> str:
    """Why a handshake failed, in the words of the metric's `reason` label."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason == "HTTP_REQUEST" or reason == "HTTPS_PROXY_REQUEST":
            return "plain-http"
        if reason in _VERSION:
            return "protocol-version"
        if reason == "NO_SHARED_CIPHER":
            return "no-shared-cipher"
        if reason in _MALFORMED:
            return "malformed"
        if "EOF" in reason or "SHUTDOWN" in reason:
            return "client-closed"
        return "tls-error"
    if isinstance(exc, TimeoutError) or "taking longer" in str(exc):
        return "timeout"
    return "client-closed"


def tls_layer_class(loop: asyncio.AbstractEventLoop) -> Any:
    """The TLS layer the loop itself puts under `create_server(ssl=...)` connections: uvloop's
    SSLProtocol or asyncio's (the same constructor and BufferedProtocol in both)."""
    try:
        import uvloop
        from uvloop.loop import SSLProtocol
    except ImportError:
        return sslproto.SSLProtocol
    return SSLProtocol if isinstance(loop, uvloop.Loop) else sslproto.SSLProtocol


class TlsServer(ProxyServer):
    scheme = b"https"

    def __init__(self, router: Router, config: ProxyConfig, tls: TlsConfig, store: CertStore) -> None:
        super().__init__(router, config, listen=tls.listen, answer_extra=tls.hsts_line)
        self.tick = min(self.tick, max(0.005, tls.handshake_timeout / 8))
        self.tls = tls
        self.store = store
        # Holds no certificate: SNI picks one per handshake (the one `_choose` switches to).
        self.context = server_context(tls.tls_version, tls.session_tickets)
        self.context.sni_callback = self._choose
        self.handshakes: set[Handshake] = set()  # under way or waiting for a slot
        self.per_client: Counter[str] = Counter()  # handshakes under way, by client address
        self.waiting: Counter[str] = Counter()  # handshakes waiting for a slot, by client address
        # In arrival order, by client address; a waiter that ended stays until it comes to the front.
        self.queues: dict[str, deque[Handshake]] = {}
        self.waits = 0  # connections that waited for a slot (started or not)
        self.failures: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self.refusals: deque[str] = deque(maxlen=1024)  # SNI refusals whose handshakes have not ended yet
        self.completed = 0
        self.resumed = 0  # of those, abbreviated handshakes (a session ticket): no certificate signature
        self.closing = False
        self.tls_layer: Any = sslproto.SSLProtocol  # set for the running loop by start()
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    async def start(self) -> None:
        self.tls_layer = tls_layer_class(asyncio.get_running_loop())
        await super().start()

    def _protocol(self) -> asyncio.Protocol:
        return Handshake(self)

    def _tick(self) -> None:
        """The sweeper also closes connections that sent nothing within handshake_timeout."""
        if self.handshakes:
            t = now()
            for handshake in [h for h in self.handshakes if h.waiter is None and h.deadline <= t]:
                handshake.silent()  # a waiter too: its deadline counts from the accept
        super()._tick()

    def _choose(self, sslobj: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> int | None:
        """OpenSSL's servername callback: switch the connection to the certificate's own context."""
        sni = self.store.map
        cert = sni.find(server_name.lower()) if server_name else None
        if cert is None:
            cert = sni.default
            if cert is None:
                # OpenSSL reports this as CALLBACK_FAILED, which the handshake's end reads back here.
                self.refusals.append("unknown-sni" if server_name else "no-sni")
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = cert.context
        return None

    async def stop(self, timeout: float = 10.0) -> int:
        self.closing = True
        for handshake in list(self.handshakes):
            handshake.abort()
        return await super().stop(timeout)

    # ------------------------------------------------------------------ called by handshakes
    def handshake_started(self, handshake: Handshake) -> str | None:
        """Admit a handshake, queue it for a slot of its address (`handshake.queued`), or say why not."""
        if self.closing:
            return "client-closed"
        if len(self.connections) + len(self.handshakes) >= self.config.max_connections:
            return "too-many-connections"
        peer = handshake.peer
        if self.per_client[peer] >= self.tls.max_handshakes_per_client:
            if self.waiting[peer] >= self.tls.max_waiting_per_client:
                return "too-many-handshakes"
            handshake.queued = True
            self.waiting[peer] += 1
            queue = self.queues.get(peer)
            if queue is None:
                queue = self.queues[peer] = deque()
            queue.append(handshake)
            self.waits += 1
            self._log_limited("waiting", "tls.handshake_waiting", client=peer, waiting=self.waiting[peer])
        else:
            self.per_client[peer] += 1
        self.handshakes.add(handshake)
        return None

    def handshake_ended(self, handshake: Handshake) -> None:
        if handshake in self.handshakes:
            self.handshakes.discard(handshake)
            peer = handshake.peer
            if handshake.queued:  # it never started: its place in the queue is skipped
                handshake.queued = False
                _decrement(self.waiting, peer)
            else:
                _decrement(self.per_client, peer)
                self._start_next(peer)
            if peer not in self.per_client and peer not in self.waiting:
                self.queues.pop(peer, None)

    def _start_next(self, peer: str) -> None:
        """A slot of `peer` is free: start its oldest waiter whose deadline has not passed (the others
        are closed on the way)."""
        queue = self.queues.get(peer)
        t = now()
        while queue and not self.closing:
            handshake = queue.popleft()
            if not handshake.queued:
                continue  # it ended while waiting
            if handshake.deadline <= t:
                handshake.silent()
                continue
            handshake.queued = False
            _decrement(self.waiting, peer)
            self.per_client[peer] += 1
            handshake.admitted()
            return

    def handshake_failed(self, peer: str, reason: str, detail: str) -> None:
        self.failures[reason] += 1
        self._log_limited(reason, "tls.handshake_failed", reason=reason, client=peer, detail=detail)

    def _log_limited(self, key: str, event: str, **fields: Any) -> None:
        t = now()
        if t - self._last_logged.get(key, -1e9) < 1.0:  # a flood is counted, not logged line by line
            self._suppressed[key] += 1
            return
        self._last_logged[key] = t
        log.info(event, **fields, suppressed=self._suppressed.pop(key, 0))

    def metrics_lines(self) -> list[str]:
        out = ["# HELP turnout_tls_handshake_failures_total TLS handshakes that failed, by reason.",
               "# TYPE turnout_tls_handshake_failures_total counter"]
        for reason, count in sorted(self.failures.items()):
            out.append(f'turnout_tls_handshake_failures_total{{reason="{reason}"}} {count}')
        out += ["# HELP turnout_tls_handshakes_total TLS handshakes completed, full or resumed.",
                "# TYPE turnout_tls_handshakes_total counter",
                f'turnout_tls_handshakes_total{{resumed="false"}} {self.completed - self.resumed}',
                f'turnout_tls_handshakes_total{{resumed="true"}} {self.resumed}',
                "# HELP turnout_tls_handshake_waits_total Connections that waited for a handshake slot of "
                "their client address (max_handshakes_per_client).",
                "# TYPE turnout_tls_handshake_waits_total counter",
                f"turnout_tls_handshake_waits_total {self.waits}",
                "# HELP turnout_tls_handshakes_waiting Connections waiting for a handshake slot now.",
                "# TYPE turnout_tls_handshakes_waiting gauge",
                f"turnout_tls_handshakes_waiting {sum(self.waiting.values())}"]
        return out


def _decrement(counter: Counter[str], key: str) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]


class Handshake(asyncio.Protocol):
    """One accepted connection until TLS starts; then the loop's TLS layer, with a ClientConnection above.

    The first bytes decide: a TLS handshake record starts TLS (those bytes are handed to the TLS layer);
    a plain HTTP request is answered 400 in plain text, anything else is cut. One over its address's
    bound first waits (`queued`), reading paused, until `admitted`."""

    __slots__ = ("server", "transport", "peer", "waiter", "connection", "deadline", "ended", "queued",
                 "waited", "held")

    def __init__(self, server: TlsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.waiter: asyncio.Future[Any] | None = None  # the TLS handshake under way
        self.connection: Any = None  # the ClientConnection above the TLS layer, until the handshake is over
        self.deadline = 0.0  # for the first byte (the server's sweeper checks it; TLS has its own)
        self.ended = False  # refused, answered or failed before TLS started, or TLS started and over
        self.queued = False  # waiting for a handshake slot of its address
        self.waited = False  # it did: its handshake gets what is left of handshake_timeout
        self.held = b""  # bytes read while waiting (the read that was under way when reading paused)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        refused = self.server.handshake_started(self)
        if refused is not None:
            self.ended = True
            self.server.handshake_failed(self.peer, refused, "refused before the handshake")
            transport.abort()  # type: ignore[attr-defined]
            return
        self.deadline = now() + self.server.tls.handshake_timeout
        if self.queued:
            self.waited = True
            # Not from here: the loop starts reading after connection_made whatever it says (asyncio,
            # uvloop); paused on the loop's next turn, its bytes wait in the kernel.
            self.server.loop.call_soon(self._pause)

    def _pause(self) -> None:
        if self.queued and self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()

    def admitted(self) -> None:
        """A slot is free (called while another handshake ends): go on at the loop's next turn."""
        self.server.loop.call_soon(self._go_on)

    def _go_on(self) -> None:
        """What was read while waiting first, then read on."""
        transport = self.transport
        if self.ended or transport is None:
            return
        held, self.held = self.held, b""
        if held:
            self.data_received(held)
        if not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.ended:
            return
        transport = self.transport
        assert transport is not None
        if self.queued:  # read before reading paused: kept (bounded by one read) until admitted
            self.held += data
            if transport.is_reading():
                transport.pause_reading()
            return
        if data[0] == 0x16:  # a TLS handshake record
            self._start_tls(transport, data)
            return
        self.ended = True
        self.server.handshake_ended(self)
        if 65 <= data[0] <= 90:  # "GET ...", "POST ...": plain HTTP to the HTTPS port
            transport.write(error_response(400, "plain-http-to-https-port"))
            transport.close()
            self.server.handshake_failed(self.peer, "plain-http", "a plain HTTP request on the HTTPS port")
        else:
            transport.abort()
            self.server.handshake_failed(self.peer, "malformed", f"first byte {data[0]:#04x}")

    def _start_tls(self, transport: asyncio.Transport, data: bytes) -> None:
        """Put the loop's own TLS layer (what `create_server(ssl=...)` uses) between the transport and a
        new ClientConnection, and hand it the bytes read so far. No `start_tls` coroutine, no takeover:
        the layer calls the ClientConnection's connection_made when the handshake is done, and
        `_done` (the handshake's future) counts it; a new connection costs fewer steps of the loop."""
        server = self.server
        self.waiter = waiter = server.loop.create_future()
        self.connection = connection = server.connection_class(server)
        timeout = server.tls.handshake_timeout
        if self.waited:  # the wait counted against its handshake_timeout
            timeout = max(0.001, self.deadline - now())
        layer = server.tls_layer(server.loop, connection, server.context, waiter, server_side=True,
                                 ssl_handshake_timeout=timeout)
        waiter.add_done_callback(self._done)
        transport.set_protocol(layer)
        layer.connection_made(transport)
        if transport.is_closing():
            return
        get_buffer = getattr(layer, "get_buffer", None)
        if get_buffer is None:  # a plain Protocol
            layer.data_received(data)
            return
        view = memoryview(data)
        while view:  # a BufferedProtocol, as uvloop's and asyncio's are
            buffer = get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            layer.buffer_updated(n)
            view = view[n:]

    def silent(self) -> None:
        """No byte within handshake_timeout, or no slot (called by the server's sweeper)."""
        if not self.ended and self.waiter is None and self.transport is not None:
            self.ended = True
            queued = self.queued
            self.server.handshake_ended(self)
            self.transport.abort()
            if queued:
                self.server.handshake_failed(self.peer, "wait-timeout",
                                             "no handshake slot of its address within handshake_timeout")
            else:
                self.server.handshake_failed(self.peer, "timeout", "no byte within handshake_timeout")

    def _done(self, waiter: asyncio.Future[Any]) -> None:
        """The handshake is over (the TLS layer has already given the ClientConnection its transport)."""
        server = self.server
        server.handshake_ended(self)
        self.waiter = None
        self.ended = True
        exc = None if waiter.cancelled() else waiter.exception()
        connection, self.connection = self.connection, None
        tls_transport = connection.transport if connection is not None else None
        if exc is not None or tls_transport is None:
            # Failed; or lost without an error before the end (an abort: the layer then wakes its waiter
            # with no exception, and never gave the ClientConnection a transport).
            self.transport.abort()  # type: ignore[union-attr]
            if exc is not None:
                refused = self._sni_refusal(exc)
                server.handshake_failed(self.peer, refused or failure_reason(exc),
                                        str(exc) or type(exc).__name__)
            elif not server.closing:
                server.handshake_failed(self.peer, "client-closed", "closed during the handshake")
            return
        server.completed += 1
        # The TLS transport keeps its extra info once closed (the answer may have been sent already).
        sslobj = tls_transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.session_reused:
            server.resumed += 1
        if server.closing:
            self.transport.abort()  # type: ignore[union-attr]

    def _sni_refusal(self, exc: BaseException) -> str | None:
        """'no-sni' / 'unknown-sni' when the certificate choice refused this handshake."""
        if isinstance(exc, ssl.SSLError) and exc.reason == "CALLBACK_FAILED" and self.server.refusals:
            return self.server.refusals.popleft()
        return None

    def abort(self) -> None:
        if self.transport is not None:  # during the handshake, the TLS layer fails its waiter: `_done`
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None  # the client closed before (or instead of) a handshake: close too

    def connection_lost(self, exc: Exception | None) -> None:
        # Only until TLS starts: then the TLS layer is the transport's protocol.
        if not self.ended:  # closed before its first byte, or aborted by stop()
            self.ended = True
            self.server.handshake_ended(self)
            if not self.server.closing:
                self.server.handshake_failed(self.peer, "client-closed", "closed before any byte")
