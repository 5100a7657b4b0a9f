"""The HTTPS listener: the plain listener's connections (`forward.ClientConnection`) on TLS transports.

Each accepted connection first gets a `Handshake`: bounded per client address and in total, given
`handshake_timeout` to finish, with the certificate chosen by SNI (`CertStore.map`, read once per
handshake). Once done, the very same `ClientConnection` class the plain listener uses takes the TLS
transport, so everything the plain listener does holds here; only its listener says `https` (forwarded
headers, `Secure` cookies) and adds HSTS when configured. A failed handshake is counted by reason
(`turnout_tls_handshake_failures_total`) and logged (at most once a second per reason).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
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
REASONS = ("plain-http", "protocol-version", "no-sni", "unknown-sni", "timeout", "too-many-handshakes",
           "malformed", "no-shared-cipher", "client-closed", "tls-error")


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
        self.handshakes: set[Handshake] = set()
        self.per_client: Counter[str] = Counter()  # handshakes under way, by client address
        self.failures: Counter[str] = Counter({reason: 0 for reason in REASONS})
        self.refusals: deque[str] = deque(maxlen=1024)  # SNI refusals whose handshakes have not ended yet
        self.completed = 0
        self.resumed = 0  # of those, abbreviated handshakes (a session ticket): no certificate signature
        self.closing = False
        self._last_logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def _protocol(self) -> asyncio.Protocol:
        return Handshake(self)

    def _tick(self) -> None:
        """The sweeper also closes connections that sent nothing within handshake_timeout."""
        if self.handshakes:
            t = now()
            for handshake in [h for h in self.handshakes if h.step is None and h.deadline <= t]:
                handshake.silent()
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
        """Admit a handshake, or say why not."""
        if self.closing:
            return "client-closed"
        if self.per_client[handshake.peer] >= self.tls.max_handshakes_per_client:
            return "too-many-handshakes"
        if len(self.connections) + len(self.handshakes) >= self.config.max_connections:
            return "too-many-handshakes"
        self.handshakes.add(handshake)
        self.per_client[handshake.peer] += 1
        return None

    def handshake_ended(self, handshake: Handshake) -> None:
        if handshake in self.handshakes:
            self.handshakes.discard(handshake)
            left = self.per_client[handshake.peer] - 1
            if left > 0:
                self.per_client[handshake.peer] = left
            else:
                del self.per_client[handshake.peer]

    def handshake_failed(self, peer: str, reason: str, detail: str) -> None:
        self.failures[reason] += 1
        now = time.monotonic()
        if now - self._last_logged.get(reason, -1e9) < 1.0:  # a flood is counted, not logged line by line
            self._suppressed[reason] += 1
            return
        self._last_logged[reason] = now
        log.info("tls.handshake_failed", reason=reason, client=peer, detail=detail,
                 suppressed=self._suppressed.pop(reason, 0))

    def metrics_lines(self) -> list[str]:
        out = ["# HELP turnout_tls_handshake_failures_total TLS handshakes that failed, by reason.",
               "# TYPE turnout_tls_handshake_failures_total counter"]
        for reason, count in sorted(self.failures.items()):
            out.append(f'turnout_tls_handshake_failures_total{{reason="{reason}"}} {count}')
        out += ["# HELP turnout_tls_handshakes_total TLS handshakes completed, full or resumed.",
                "# TYPE turnout_tls_handshakes_total counter",
                f'turnout_tls_handshakes_total{{resumed="false"}} {self.completed - self.resumed}',
                f'turnout_tls_handshakes_total{{resumed="true"}} {self.resumed}']
        return out


class Handshake(asyncio.Protocol):
    """One accepted connection until its TLS handshake is over; then a ClientConnection takes over.

    The first bytes decide: a TLS handshake record starts TLS (those bytes are handed to the TLS layer);
    a plain HTTP request is answered 400 in plain text, anything else is cut."""

    def __init__(self, server: TlsServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.step: _Steps | None = None  # the TLS handshake under way
        self.deadline = 0.0  # for the first byte (the server's sweeper checks it; TLS has its own)
        self.early: list[bytes] = []  # application data that arrived with the end of the handshake
        self.connection: Any = None  # the ClientConnection that took over
        self.eof = False
        self.lost = False
        self.ended = False  # refused, answered or failed before TLS started

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

    def data_received(self, data: bytes) -> None:
        step = self.step
        if step is not None:  # from the TLS layer: the request that came with the handshake's end
            self.early.append(data)
            step.poll()  # the handshake is over: take over now rather than a turn of the loop later
            return
        if self.ended:
            return
        transport = self.transport
        assert transport is not None
        if data[0] == 0x16:  # a TLS handshake record
            # start_tls runs now up to its wait (a task would start a turn later): the TLS layer becomes
            # the transport's protocol and reading pauses; these bytes go to it once it is set up, in the
            # same turn of the loop as its connection_made, so nothing can come between.
            self.step = step = _Steps(self.server.loop.start_tls(
                transport, self, self.server.context, server_side=True,
                ssl_handshake_timeout=self.server.tls.handshake_timeout), self._done)
            step.start()
            if self.step is step:  # not over already
                self.server.loop.call_soon(self._hand_over, data)
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

    def _hand_over(self, data: bytes) -> None:
        """The bytes read before TLS started, to the TLS layer (a BufferedProtocol, as uvloop's and
        asyncio's are)."""
        transport = self.transport
        if self.step is None or transport is None or transport.is_closing():
            return
        layer = transport.get_protocol()
        get_buffer = getattr(layer, "get_buffer", None)
        if get_buffer is None:
            layer.data_received(data)  # type: ignore[attr-defined]
            return
        view = memoryview(data)
        while view:
            buffer = get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            layer.buffer_updated(n)  # type: ignore[attr-defined]
            view = view[n:]

    def silent(self) -> None:
        """No byte within handshake_timeout (called by the server's sweeper)."""
        if not self.ended and self.step is None and self.transport is not None:
            self.ended = True
            self.server.handshake_ended(self)
            self.transport.abort()
            self.server.handshake_failed(self.peer, "timeout", "no byte within handshake_timeout")

    def _done(self, tls_transport: asyncio.Transport | None, exc: BaseException | None) -> None:
        server = self.server
        server.handshake_ended(self)
        self.step = None
        self.ended = True
        if tls_transport is None:
            if self.transport is not None:
                self.transport.abort()
            if exc is not None and not isinstance(exc, asyncio.CancelledError):
                refused = self._sni_refusal(exc)
                server.handshake_failed(self.peer, refused or failure_reason(exc),
                                        str(exc) or type(exc).__name__)
            return
        server.completed += 1
        sslobj = tls_transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.session_reused:
            server.resumed += 1
        if server.closing or self.lost or tls_transport.is_closing():
            tls_transport.abort()
            return
        self.connection = connection = server.connection_class(server)
        tls_transport.set_protocol(connection)
        connection.connection_made(tls_transport)
        if self.early and not connection.closed:
            connection.data_received(b"".join(self.early))
        if self.eof and not connection.closed and not connection.eof_received():
            tls_transport.close()

    def _sni_refusal(self, exc: BaseException) -> str | None:
        """'no-sni' / 'unknown-sni' when the certificate choice refused this handshake."""
        if isinstance(exc, ssl.SSLError) and exc.reason == "CALLBACK_FAILED" and self.server.refusals:
            return self.server.refusals.popleft()
        return None

    def abort(self) -> None:
        if self.step is not None:
            self.step.cancel()
        elif self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        if self.step is None:  # the client closed before (or instead of) a handshake: close too
            return None
        self.eof = True  # from the TLS layer: handed to the ClientConnection with the early data
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.connection is not None:  # lost while the takeover was under way: tell the new owner
            self.connection.connection_lost(exc)
            return
        if self.step is None and not self.ended:  # closed before its first byte, or aborted by stop()
            self.ended = True
            self.server.handshake_ended(self)
            if not self.server.closing:
                self.server.handshake_failed(self.peer, "client-closed", "closed before any byte")



class _Steps:
    """Drives one coroutine like a task would, but runs its first step now (a Task's would run at the
    loop's next turn); `done(result, None)` or `done(None, exc)` when it ends. Python 3.12's eager tasks
    do this; 3.11 has none."""

    __slots__ = ("coro", "done", "waiting")

    def __init__(self, coro: Coroutine[Any, Any, Any],
                 done: Callable[[Any, BaseException | None], None]) -> None:
        self.coro = coro
        self.done = done
        self.waiting: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self._send(None)

    def _send(self, exc: BaseException | None) -> None:
        try:
            future = self.coro.send(None) if exc is None else self.coro.throw(exc)
        except StopIteration as stop:
            self.waiting = None
            return self.done(stop.value, None)
        except BaseException as error:  # the coroutine failed: that is its outcome
            self.waiting = None
            return self.done(None, error)
        self.waiting = future
        future.add_done_callback(self._wake)
        return None

    def _wake(self, future: asyncio.Future[Any]) -> None:
        if self.waiting is future:
            self._send(None)  # the awaited future is done: `await` returns or raises its outcome

    def poll(self) -> None:
        """Go on now if what the coroutine awaits is already done (its callback would come a turn later)."""
        future = self.waiting
        if future is not None and future.done():
            future.remove_done_callback(self._wake)
            self._send(None)

    def cancel(self) -> None:
        if self.waiting is not None:
            self.waiting.remove_done_callback(self._wake)
            self.waiting = None
            self._send(asyncio.CancelledError())
