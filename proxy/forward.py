"""The client side of the hot path: one asyncio.Protocol per client connection.

Per request: the raw head is buffered until CRLF CRLF and validated (`http.parse_request_head`; a head
seen before, from the same client address, is looked up with its upstream rewrite in `HEADS`), the
routing snapshot is read once, a pool and an upstream are chosen, and the request head (plus whatever body
came with it) goes upstream in one write, on a pooled keep-alive connection when there is one. Bodies are
streamed both ways with back-pressure; the connection object itself is the exchange that
`Upstream.begin/end/drain` track, so the fast path allocates no task, future or timer. Deadlines are
plain floats checked by the server's sweeper (`ProxyServer._tick`).

The usual request (no body, no override or Turnout cookie, keep-alive; `http.is_plain`) to an active,
non-sticky service takes a fast lane, `_fast`, that does in one frame what `_request` → `_route` →
`_dispatch` → `_bind` do; an answer that comes whole under a known head ends its exchange in one call,
`answered_whole`. tests/unit/test_fast_lane.py holds both to what the full path does.

With the access log on, the server makes `LoggedClientConnection`s: the same, plus the bytes of a whole
answer counted for the log (every other write to the client counts them where it is made, in both classes,
off the fast lane). The log's own fields (`sent`, `lmark`, `lhead`, `lpool`, `lup`, `lerror`) are read and
reset by `access_log.AccessLog.emit` when an exchange ends.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING, Protocol

import structlog

from .http import (
    IDEMPOTENT,
    BadRequest,
    CachedHead,
    ChunkedFramer,
    RequestHead,
    RequestHeads,
    error_response,
    forced_and_sticky,
    forwarded_suffix,
    head_tag,
    next_request_id,
    sticky_cookie,
)
from .mirror import Job as MirrorJob
from .pool import Pool
from .service import Service
from .table import RoutingTable
from .upstream import Health, Upstream
from .upstream_conn import UpstreamConnection

if TYPE_CHECKING:
    from .access_log import AccessLog
    from .config import ProxyConfig
    from .router import Router

log = structlog.get_logger("turnout.proxy.forward")

# Why reading from the client is paused (a bit mask; reading resumes when no reason is left).
_P_UPSTREAM = 1  # the upstream's socket buffer is full (request body back-pressure)
_P_PENDING = 2  # body bytes waiting for an upstream connection reached the limit
_P_PIPELINE = 4  # pipelined requests waiting behind the current one reached the limit
PENDING_LIMIT = 256 * 1024

# Deadline kinds (ClientConnection.dkind); 0 = none.
D_HEADER, D_IDLE, D_BODY, D_UPSTREAM, D_LINGER = 1, 2, 3, 4, 5
# A lingering close (after a proxy-made answer that closes): how long and how much more of the client's
# bytes are read and thrown away before the socket is closed for good (nginx's lingering_close).
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
PASSIVE_FAILURES_TO_EJECT = 3
Target = tuple[Service, Pool, Upstream]  # where an exchange goes again (a retry, a drain's replay)
# The proxy's clock for request timing and deadlines (the server's sweeper reads the same one). Not
# loop.time(): uvloop's has a resolution of 1 ms, too coarse for sub-millisecond latency buckets.
now = time.monotonic
HEADS = RequestHeads()  # validated request heads and their upstream rewrite, shared by all connections


class Listener(Protocol):
    """What a client connection needs of the server that accepted it (`server.ProxyServer`)."""

    router: Router
    config: ProxyConfig
    loop: asyncio.AbstractEventLoop
    access_log: AccessLog | None  # None: the log is off
    scheme: bytes  # b"http" or b"https": X-Forwarded-Proto, and `Secure` on the sticky cookie
    forwarded_port: int  # the listener's port, as X-Forwarded-Port says
    answer_extra: bytes  # header lines every answer of this listener carries (HSTS on HTTPS), or b""

    def connection_opened(self, connection: ClientConnection) -> bool: ...  # False: over the limit
    def connection_closed(self, connection: ClientConnection) -> None: ...


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "alog", "attempts", "body_left", "buf", "busy", "chunker", "closed", "config", "deadline", "dkind",
        "extra0", "head_sent", "head_tag", "http11", "is_head", "keep_alive", "lerror", "lhead", "lmark",
        "loop", "lparts", "lpool", "lsame", "lup", "mjob", "peer", "pending", "pending_size", "pool",
        "reading_body", "req", "resp_extra", "router", "rpause", "sent", "server", "service", "status",
        "stopping", "suffix", "t0", "t_end", "task", "transport", "trusted", "tunnel", "upconn", "upstream",
        "websocket", "wpaused", "_dispatch_needed", "linger", "client_eof",
    )

    def __init__(self, server: Listener) -> None:
        self.server = server
        self.router = server.router
        self.config = server.config
        self.loop = server.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.buf = b""
        self.busy = False  # an exchange is under way: from its head to the end of its response
        self.closed = False
        self.stopping = False
        self.reading_body = False
        self.body_left = 0
        self.chunker: ChunkedFramer | None = None
        self.req: RequestHead | None = None
        self.service: Service | None = None
        self.pool: Pool | None = None
        self.upstream: Upstream | None = None
        self.upconn: UpstreamConnection | None = None
        self.pending: list[bytes] | None = None
        self.pending_size = 0
        self.task: asyncio.Task[None] | None = None
        self.head_sent = False
        self.status = 0
        self.t0 = self.t_end = 0.0
        self.keep_alive = True
        self.http11 = True
        self.is_head = False
        self.websocket = False
        self.tunnel = False
        self.extra0 = server.answer_extra  # what `resp_extra` is back to after each exchange
        self.resp_extra = self.extra0
        self.rpause = 0
        self.wpaused = False
        self.deadline = 0.0
        self.dkind = 0
        self.attempts = 0
        self._dispatch_needed = False
        self.peer = b""
        self.trusted = False
        self.suffix = b""
        self.head_tag = b""
        self.alog = server.access_log  # None when the access log is off
        # For the access log: bytes written to the client so far (whole answers counted only when logging),
        # `sent` at the start of the exchange, the head sent upstream, where it was routed, a proxy reason.
        self.sent = self.lmark = 0
        self.lhead = b""
        self.lpool: Pool | None = None
        self.lup: Upstream | None = None
        self.lerror = ""
        self.lsame: tuple | None = None  # the access log's texts of this connection's last line
        self.lparts: tuple = ()
        self.mjob: MirrorJob | None = None  # a sampled request's copy, waiting for the rest of its body
        self.linger = False  # the close after this answer lingers (a proxy-made answer: `_fail`)
        self.client_eof = False  # the client half-closed: nothing more can come, no need to linger

    # ================================================================== asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else ""
        self.peer = ip.encode()
        self.trusted = ip in self.config.trusted_proxies
        server = self.server
        self.suffix = forwarded_suffix(ip, self.trusted, server.scheme, server.forwarded_port)
        self.head_tag = head_tag(self.peer, self.trusted, b"%s:%d" % (server.scheme, server.forwarded_port))
        if not self.server.connection_opened(self):
            self.closed = True
            transport.write(error_response(503, "too-many-connections"))
            transport.close()
            return
        self._set_deadline(D_HEADER, self.config.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connection_closed(self)
        self._abandon_upstream()
        if self.busy:
            self.busy = False
            self.status = self.status or 499  # the client went away first
            self._end_exchange(False)
            if self.alog is not None:
                self.alog.emit(self, "client-closed")

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            if self.upconn is not None:
                self.upconn.transport.write(data)
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        self._feed(data)

    def eof_received(self) -> bool | None:
        if self.tunnel:
            conn = self.upconn
            if conn is not None and conn.transport.can_write_eof():
                conn.transport.write_eof()
            return True
        if self.busy:  # half-close: finish writing the answer, then close
            self.keep_alive = False
            self.client_eof = True
            return True
        return None

    def pause_writing(self) -> None:
        self.wpaused = True
        conn = self.upconn
        if conn is not None and not conn.read_paused:
            conn.read_paused = True
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.wpaused = False
        conn = self.upconn
        if conn is not None and conn.read_paused:
            conn.read_paused = False
            conn.transport.resume_reading()

    # ================================================================== reading requests
    def _feed(self, data: bytes) -> None:
        """Read request heads (and bodies) out of `data`; then send what was read upstream, in one write."""
        config = self.config
        try:
            if not self.busy and len(data) <= HEADS.max_head:
                # The usual read on a keep-alive connection: exactly one request head, one seen before
                # (a stored head holds one CRLF CRLF, at its end, so a hit means nothing else came).
                cached = HEADS.entries.get((data, self.head_tag))
                if cached is not None and cached[0].plain and self._fast(data, cached):
                    return
            while data:
                if self.closed:
                    break
                if self.reading_body:
                    data = self._body(data)
                    continue
                if self.busy:  # pipelined: wait for the current answer
                    self.buf = data
                    if len(data) > config.max_header_bytes + 65536:
                        self._pause(_P_PIPELINE)
                    break
                if data[0] in b"\r\n":  # tolerate empty lines between requests
                    data = data.lstrip(b"\r\n")
                    if not data:
                        break
                end = data.find(b"\r\n\r\n")
                if end < 0 or end + 4 > config.max_header_bytes:
                    self._partial_head(data)
                    break
                end += 4
                self._request(data[:end])
                data = data[end:]
        except BadRequest as exc:
            self._reject(exc)
            return
        except Exception:  # the one error boundary per request: 500 before the head, close after
            log.exception("proxy.request_failed", where="client")
            self.router.metrics.internal_errors += 1
            self.keep_alive = False
            self.buf = b""
            self._error(500, "internal")
            return
        if self._dispatch_needed:
            self._dispatch_needed = False
            self._dispatch()

    def _fast(self, head: bytes, cached: CachedHead) -> bool:
        """The fast lane: a plain request (`http.is_plain`) for an active service, when no sticky cookie
        is involved. Leaves the connection exactly as `_request` → `_route` → `_dispatch` (→ `_bind`)
        would, in one frame; returns False, having changed nothing, when it cannot (the full path then
        takes the request: no route, a paused or stopped service, nothing routable, a sticky service)."""
        req = cached[0]
        table = self.router.table
        service = table.only or table.match(req.host, req.path)
        if (service is None or service.state != "active" or self.closed
                or len(head) > self.config.max_header_bytes):
            return False
        pool = service.only  # one weighted pool, no rule: no draw (the usual case)
        if pool is None:
            if service.full_path_only:  # sticky, or mirrored (proxy/mirror.py)
                return False
            # What select(None, None, req) does: the rules (remembered per head), else the draw.
            pool = service.choose() if service.rules is None else service.choose_plain(req)
            if pool is None:
                return False
        upstream = pool.only or pool.pick()  # a drawn pool is routable: pick() finds an upstream
        _, upstream_head, numbered = cached
        self.busy = True
        self.req = req
        self.t0 = t0 = now()
        self.http11 = True
        self.keep_alive = not self.stopping
        self.is_head = self.websocket = False
        self.status = self.attempts = 0
        if numbered:
            upstream_head = upstream_head % next_request_id()
        if self.alog is not None:
            self.lhead = upstream_head
        self.service = service
        self.pool = pool
        self.upstream = upstream
        upstream.begin(self)
        pool.stats.inflight += 1
        idle = upstream.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.dkind = D_UPSTREAM
                self.deadline = t0 + self.config.upstream_timeout
                self.upconn = conn
                conn.bind(self, upstream_head)
                return True
        self.dkind = 0
        self.pending = [upstream_head]
        self.pending_size = 0
        self.task = self.loop.create_task(self._connect(upstream))
        return True

    def _partial_head(self, data: bytes) -> None:
        """No complete head (yet) in `data`: refuse it now when it can never become one, else wait."""
        config = self.config
        self.is_head = data[:5] == b"HEAD "  # a refusal of a HEAD request carries no body
        if len(data) > config.max_header_bytes:
            if data.find(b"\r\n", 0, config.max_header_bytes) < 0:  # the request line alone
                raise BadRequest(414, "request line too long", "uri-too-long")
            raise BadRequest(431, "request head too large", "header-too-large")
        if b"\n\n" in data or b"\n\r\n" in data:  # a head ended by bare LF: refuse now, not at 408
            raise BadRequest(400, "bare LF in the request head")
        self.buf = data
        if self.dkind != D_HEADER:
            self._set_deadline(D_HEADER, config.header_timeout)

    def _request(self, head: bytes) -> None:
        key = (head, self.head_tag)
        cached = HEADS.entries.get(key)
        if cached is None:
            try:
                cached = HEADS.miss(key, self.peer, self.trusted, self.suffix, self.server.scheme)
            except BadRequest:
                self.is_head = head[:5] == b"HEAD "  # a refusal of a HEAD request carries no body
                raise
            if cached[0].plain and self._fast(head, cached):  # a new head can take the fast lane too
                return
        req, upstream_head, numbered = cached
        config = self.config
        self.busy = True
        self.req = req
        self.t0 = t0 = now()
        self.http11 = req.http11
        self.keep_alive = req.keep_alive and not self.stopping
        self.is_head = req.method == b"HEAD"
        self.websocket = req.websocket
        self.head_sent = False
        self.status = 0
        self.attempts = 0
        self.mjob = None
        if req.chunked:
            self.chunker = ChunkedFramer()
            self.reading_body = True
        elif req.content_length > 0:
            if config.max_body_bytes and req.content_length > config.max_body_bytes:
                self.busy = False
                raise BadRequest(413, "request body too large", "body-too-large")
            self.body_left = req.content_length
            self.reading_body = True
        if self.reading_body:
            self.deadline = t0 + config.body_idle_timeout
            self.dkind = D_BODY
        else:
            self.dkind = 0
        if numbered:
            upstream_head = upstream_head % next_request_id()
        self.pending = [upstream_head]
        self.pending_size = 0
        if self.alog is not None:
            self.lhead = upstream_head
        held = self._route(self.router.table)
        if held is not None:
            self.task = self.loop.create_task(self._hold(held))

    def _body(self, data: bytes) -> bytes:
        """Forward the request body part of `data`; return what follows the body."""
        chunker = self.chunker
        if chunker is not None:
            n = chunker.feed(data)
            max_body = self.config.max_body_bytes
            if max_body and chunker.total > max_body:
                raise BadRequest(413, "request body too large", "body-too-large")
            done = chunker.done
        else:
            n = self.body_left
            if n >= len(data):
                n = len(data)
            self.body_left -= n
            done = not self.body_left
        if n:
            piece = data if n == len(data) else data[:n]
            conn = self.upconn
            if conn is not None:
                conn.transport.write(piece)
            elif self.pending is not None:
                self.pending.append(piece)
                self.pending_size += n
                if self.pending_size > PENDING_LIMIT:
                    self._pause(_P_PENDING)
            job = self.mjob
            if job is not None and not job.mirror.add_body(job, piece):
                self.mjob = None
        if done:
            self.reading_body = False
            self.chunker = None
            job = self.mjob
            if job is not None:  # the whole request is read: its copy may go
                self.mjob = None
                job.mirror.submit(job)
            if self.upconn is not None and not self.head_sent:
                self._set_deadline(D_UPSTREAM, self.config.upstream_timeout)
            elif self.dkind == D_BODY:
                self.dkind = 0
        else:
            self.deadline = now() + self.config.body_idle_timeout
        return data[n:] if n < len(data) else b""

    # ================================================================== routing
    def _route(self, table: RoutingTable) -> Service | None:
        """Choose pool and upstream from one snapshot; returns the service when the request must hold."""
        req = self.req
        assert req is not None
        service = table.match(req.host, req.path)
        if service is None:
            self._local_error(404, "no-route")
            return None
        state = service.state
        if state == "stopped":
            self._local_error(503, "maintenance", retry_after=30)
            return None
        if state != "active":
            return service
        pool = service.only  # one pool takes all traffic, no rule, no sticky cookie: no draw (the usual case)
        if pool is not None and req.forced is None and req.cookies is None:
            set_cookie = False
        elif req.forced is not None or req.cookies is not None:
            forced, sticky = forced_and_sticky(req, service.cookie_name)
            pool, set_cookie = service.select(service.allowed_pool(forced, self.peer), sticky, req)
        else:
            pool, set_cookie = service.select(None, None, req)
        if pool is None:
            return service
        upstream = pool.only or pool.pick()
        if upstream is None:
            return service
        self.service = service
        if set_cookie:
            self.resp_extra = sticky_cookie(service.cookie_name, pool.name, self.server.scheme, self.extra0)
        self.pool = pool
        self.upstream = upstream
        upstream.begin(self)
        pool.stats.inflight += 1
        self._dispatch_needed = True
        mirror = service.mirror
        if mirror is not None:  # shadow traffic: a copy of this request, maybe (never delays this one)
            self.mjob = mirror.sample(self, pool, upstream, service.mirror_pool, req)  # type: ignore[arg-type]
        return None

    async def _hold(self, service: Service) -> None:
        """No upstream for now (paused, weights all 0, nothing healthy): wait for a swap."""
        deadline = self.t0 + service.hold_timeout
        router = self.router
        while True:
            remaining = deadline - now()
            if remaining <= 0:
                self.task = None
                timeouts = self.router.metrics.hold_timeouts  # per service: a deploy reports its own
                timeouts[service.name] = timeouts.get(service.name, 0) + 1
                self._local_error(503, "hold-timeout", retry_after=max(1, round(service.hold_timeout)))
                return
            await router.wait_for_change(remaining)
            if self.closed:
                return
            if self._route(router.table) is None:
                if self.task is asyncio.current_task():
                    self.task = None
                if self._dispatch_needed:
                    self._dispatch_needed = False
                    self._dispatch()
                return

    def _end_exchange(self, proxy_made: bool) -> None:
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.end(self)
            stats = self.pool.stats  # type: ignore[union-attr]
            stats.inflight -= 1
            self.t_end = t_end = now()
            stats.observe(self.status, t_end - self.t0, proxy_made)
            if self.alog is not None:  # the log names them once the exchange is over
                self.lpool = self.pool
                self.lup = upstream
            self.pool = None

    # ================================================================== upstream connections
    def _dispatch(self) -> None:
        upstream = self.upstream
        if upstream is None or self.closed:
            return
        idle = upstream.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return self._bind(conn)
        self.task = self.loop.create_task(self._connect(upstream))
        return None

    def _bind(self, conn: UpstreamConnection) -> None:
        self.upconn = conn
        pending = self.pending
        self.pending = None
        if len(pending) == 1:  # type: ignore[arg-type]
            conn.bind(self, pending[0])  # type: ignore[index]
        else:
            conn.bind(self, b"".join(pending))  # type: ignore[arg-type]
            conn.request = None  # body bytes went with the head: never replayed, so not kept either
        if self.rpause & _P_PENDING:
            self._resume(_P_PENDING)
        if not self.reading_body:
            self.dkind = D_UPSTREAM
            self.deadline = self.t0 + self.config.upstream_timeout

    async def _connect(self, upstream: Upstream) -> None:
        loop = self.loop
        upstream.connecting()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                _, conn = await loop.create_connection(
                    partial(UpstreamConnection, upstream), upstream.host, upstream.port)
        except (OSError, TimeoutError):
            self.task = None
            return self._connect_failed(upstream)
        self.task = None
        upstream.passive_failures = 0
        if self.closed or self.upstream is not upstream or self.upconn is not None:
            conn.release(True)  # type: ignore[attr-defined]
            return None
        self._bind(conn)  # type: ignore[arg-type]
        conn.first = conn.request  # type: ignore[attr-defined]  # a first exchange replays elsewhere
        return None

    def _connect_failed(self, upstream: Upstream) -> None:
        upstream.passive_failures += 1
        if upstream.passive_failures >= PASSIVE_FAILURES_TO_EJECT and upstream.health is Health.HEALTHY:
            self.router.set_health(upstream, Health.UNHEALTHY)
        if self.closed or self.upstream is not upstream:
            return
        req = self.req
        if self.attempts < self.config.retries and req is not None and req.method in IDEMPOTENT:
            target = self._retry_target(upstream)
            if target is not None:
                self._go_again(target)
                return self._dispatch()
        return self._fail(502, "upstream-connect")

    def _current_route(self) -> tuple[Service, Pool | None] | None:
        """The request's service in the routing table of now, with its pool of the same name while that
        pool serves. A retry reads this, not the snapshot the request was routed by: routing may have
        changed since (a connect can take `connect_timeout`), and what that snapshot named may be
        draining or gone."""
        req, pool = self.req, self.pool
        assert req is not None and pool is not None
        service = self.router.table.match(req.host, req.path)
        if service is None or service.state != "active":
            return None
        return service, next((p for p in service.pools if p.name == pool.name and p.routable), None)

    def _retry_target(self, failed: Upstream) -> Target | None:
        route = self._current_route()
        if route is None:
            return None
        service, pool = route
        mine = (pool,) if pool is not None else ()
        others = [c for c in service.pools if c is not pool and c.weight > 0 and c.routable]
        picked = pool.pick(avoid=failed) if pool is not None else None
        if picked is failed:
            picked = None
        if pool is not None and picked is not None and picked.host != failed.host:
            return service, pool, picked
        # A host that refused one connection likely refuses them all (its engine or machine is gone, as
        # a lost Swarm node's): an upstream on another host first, this pool's then another pool's.
        for candidate in (*mine, *others):
            elsewhere = [u for u in candidate.eligible if u.host != failed.host]
            if elsewhere:
                return service, candidate, min(elsewhere, key=lambda u: len(u.inflight))
        if pool is not None and picked is not None:
            return service, pool, picked
        for candidate in others:  # this pool has no other upstream: try another pool
            other = candidate.pick(avoid=failed)
            if other is not None and other is not failed:
                return service, candidate, other
        return None

    def _go_again(self, target: Target) -> None:
        """Send the exchange once more, to `target` (from `_retry_target` or `_drain_retry_target`)."""
        self.attempts += 1
        service, pool, upstream = target
        self.service = service
        self._move(pool, upstream)

    def _move(self, pool: Pool, upstream: Upstream) -> None:
        old = self.upstream
        if old is not None:
            old.end(self)
        if pool is not self.pool:
            self.pool.stats.inflight -= 1  # type: ignore[union-attr]
            pool.stats.inflight += 1
            if self.resp_extra != self.extra0 and self.service is not None:  # a sticky cookie is set
                self.resp_extra = sticky_cookie(self.service.cookie_name, pool.name, self.server.scheme,
                                                self.extra0)
        self.pool = pool
        self.upstream = upstream
        upstream.begin(self)

    # ------------------------------------------------------------------ called by UpstreamConnection
    def response_started(self, status: int) -> None:
        self.head_sent = True
        self.status = status
        if self.dkind == D_UPSTREAM:
            self.dkind = 0

    def answered_whole(self, conn: UpstreamConnection, status: int, answer: bytes) -> None:
        """The whole answer at once, on a connection that can be reused (the upstream's known-answer
        path; the request was read to its end): what `response_started` + `upstream_complete` do."""
        self.status = status
        self.transport.write(answer)
        self.upconn = None
        conn.release(True)
        self.busy = False
        self._end_exchange(False)
        self._next()

    def upstream_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.upconn = None
        request_done = not self.reading_body
        conn.release(reusable and request_done)
        self.busy = False
        self._end_exchange(False)
        if not request_done:  # answered before the body was read: the connection cannot go on
            self.keep_alive = False
            self.reading_body = False
        self._next()

    def upstream_lost(self, replay: bytes | None, first: bool = False) -> None:
        """The upstream connection closed before its answer was complete. `replay`: what was sent on it,
        when it closed without a byte of an answer. An idempotent request without a body then goes again:
        on a pooled connection (closed while idle), once, on a fresh connection to the same upstream (so
        does Go's Transport); on the connection's `first` exchange (the upstream took the request and went
        away: its app stopped, its node was lost), within `retries`, to an upstream on another host (as
        nginx's `proxy_next_upstream error` does). Not to one on the same host: there the close may be
        the app's answer to this very request, which would only fail again."""
        self.upconn = None
        if not self.head_sent:
            req = self.req
            upstream = self.upstream
            if (replay is not None and req is not None and req.method in IDEMPOTENT
                    and req.content_length <= 0 and not req.chunked
                    and upstream is not None and not self.closed and self.task is None):
                if not first:
                    self.pending, self.pending_size = [replay], 0
                    self.task = self.loop.create_task(self._connect(upstream))
                    return None
                target = self._retry_target(upstream) if self.attempts < self.config.retries else None
                if target is not None and target[2].host != upstream.host:
                    self._go_again(target)
                    self.pending, self.pending_size = [replay], 0
                    return self._dispatch()
        return self._error(502, "upstream-closed")

    def upstream_error(self, reason: str, unsent: bool) -> None:
        """A bad answer (`unsent`: its head had not been written to the client yet)."""
        self.upconn = None
        if unsent:
            self.head_sent = False
        return self._error(502, reason)

    def internal_error(self, where: str, error: BaseException, unsent: bool) -> None:
        """A bug of the proxy's own surfaced on the upstream side (`where`), not the upstream's fault:
        logged once with the original exception, counted, answered 500 (cut once the head went out)."""
        self.upconn = None
        if unsent:
            self.head_sent = False
        log.error("proxy.request_failed", where=where, exc_info=error,
                  upstream=self.upstream.address if self.upstream is not None else "")
        self.router.metrics.internal_errors += 1
        self.keep_alive = False
        return self._error(500, "internal")

    def close_after_answer(self) -> None:
        self.keep_alive = False

    def tunnel_started(self) -> None:
        self.tunnel = True
        self.reading_body = False
        self.dkind = 0
        if self.buf and self.upconn is not None:
            self.upconn.transport.write(self.buf)
            self.buf = b""

    def tunnel_closed(self) -> None:
        self.upconn = None
        self._cut()

    def pause_reading_for_upstream(self) -> None:
        self._pause(_P_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._resume(_P_UPSTREAM)

    # ------------------------------------------------------------------ drain (Upstream.drain)
    def abort_for_drain(self) -> bool:
        """The drain deadline passed with this exchange still in flight. The upstream is leaving and its
        answer may never come (a stalled connection, an app that hangs as it goes): an idempotent request
        without a body that has had no byte of its answer goes once more, within `retries`, to a serving
        upstream of the current table. Returns True then; the rest end in 504 (or a cut) and False."""
        replay = self._drain_replay()
        self._abandon_upstream()
        if self.tunnel:
            self._cut()
            return False
        if replay is not None:
            target = self._drain_retry_target()
            if target is not None:
                self._go_again(target)
                self.pending, self.pending_size = [replay], 0
                self._dispatch()
                return True
        self.keep_alive = False
        self._error(504, "drain-deadline")
        return False

    def _drain_replay(self) -> bytes | None:
        """What the exchange sent upstream, when it may be sent again (see `abort_for_drain`)."""
        req = self.req
        if (req is None or self.head_sent or self.reading_body or self.closed or req.method not in IDEMPOTENT
                or req.content_length > 0 or req.chunked or self.attempts >= self.config.retries):
            return None
        if self.upconn is not None:
            return self.upconn.request
        return b"".join(self.pending) if self.pending else None  # still connecting

    def _drain_retry_target(self) -> Target | None:
        """A serving upstream for a request leaving a drained one: in its version's pool while that still
        serves, else where a new request would go."""
        route = self._current_route()
        if route is None:
            return None
        service, pool = route
        if pool is None:
            pool, _ = service.select(None, None, self.req)
        left = self.upstream
        upstream = pool.pick(avoid=left) if pool is not None else None
        if pool is None or upstream is None or upstream is left or upstream.draining:
            return None
        return service, pool, upstream

    # ================================================================== ending exchanges
    def _abandon_upstream(self) -> None:
        """Stop what the exchange has going upstream: the connect or hold task, and the connection (aborted,
        never pooled: its request or answer is half-way)."""
        task = self.task
        if task is not None:
            self.task = None
            if task is not asyncio.current_task():
                task.cancel()
        conn = self.upconn
        if conn is not None:
            self.upconn = None
            conn.abort()

    def _next(self) -> None:
        """The exchange is over: go on with the next request, or close."""
        if self.alog is not None:
            self.alog.emit(self, "")
        self.req = None
        self.service = None
        self.pending = None
        self.resp_extra = self.extra0
        self.head_sent = False
        self.is_head = False
        self.websocket = False
        if not self.keep_alive or self.closed:
            self.closed = True
            self.dkind = 0
            if self.linger:
                return Lingering.close(self)
            self.transport.close()
            return
        self.dkind = D_IDLE
        self.deadline = self.t_end + self.config.idle_timeout
        if self.rpause:  # nothing of the finished exchange may keep the client paused
            self._resume(_P_UPSTREAM | _P_PENDING | _P_PIPELINE)
        if self.buf:
            data = self.buf
            self.buf = b""
            self._feed(data)

    def _fail(self, status: int, reason: str, retry_after: int = 0) -> None:
        """A proxy-made answer for the current exchange (before any of the upstream's answer)."""
        self._abandon_upstream()
        self._dispatch_needed = False
        if self.reading_body or (status >= 500 and status != 503):
            self.keep_alive = False
        if self.reading_body:
            self.reading_body = False
            self.chunker = None
        self.status = status
        self.lerror = reason
        if self.upstream is None:
            self.router.metrics.unrouted[min(status // 100, 5)] += 1
            self.t_end = now()
        else:
            self._end_exchange(status >= 500)
        self.busy = False
        if not self.closed:
            answer = error_response(status, reason, close=not self.keep_alive, retry_after=retry_after,
                                    head_only=self.is_head)
            self.transport.write(answer)
            self.sent += len(answer)
            # The client may still be sending (a head, a body): a plain close with its bytes unread would
            # send a RST, and a reset client may report the reset instead of this answer.
            self.linger = not self.keep_alive and not self.client_eof
        self._next()

    def _error(self, status: int, reason: str) -> None:
        """End the exchange on an error: the proxy's own answer while nothing of the upstream's has gone
        out, else a cut (the client must not take a half answer for a whole one)."""
        if self.head_sent:
            return self._cut()
        return self._fail(status, reason)

    def _local_error(self, status: int, reason: str, retry_after: int = 0) -> None:
        """An answer made before any pool was chosen (404, 503 maintenance/hold)."""
        self._fail(status, reason, retry_after)

    def _cut(self) -> None:
        """Too late for a clean answer (the head went out): close, so the client sees it incomplete."""
        if self.busy:
            self.busy = False
            self._end_exchange(False)
            if self.alog is not None:
                self.alog.emit(self, "" if self.tunnel else "cut")
        self._abandon_upstream()
        self.closed = True
        self.dkind = 0
        if self.transport is not None:
            self.transport.close()

    def _reject(self, exc: BadRequest) -> None:
        """Hostile or oversized request: answer 4xx and close, forward nothing (more)."""
        self.keep_alive = False
        self.buf = b""
        self.pending = None
        return self._error(exc.status, exc.reason)

    # ================================================================== timers and flow control
    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.dkind = kind
        self.deadline = now() + seconds

    def on_deadline(self) -> None:
        """Called by the server's sweeper once `deadline` has passed."""
        kind = self.dkind
        self.dkind = 0
        if kind == D_LINGER:  # the client had its time to read the answer
            self.transport.abort()
            return
        if self.closed:
            return
        if kind == D_IDLE or (kind == D_HEADER and not self.buf):
            self.closed = True
            self.transport.close()
        elif kind == D_HEADER:
            self.keep_alive = False
            self._fail(408, "header-timeout")
        elif kind == D_BODY:
            self.keep_alive = False
            self._error(408, "body-timeout")
        elif kind == D_UPSTREAM and not self.head_sent:
            self.keep_alive = False
            self._fail(504, "upstream-timeout")

    def shutdown(self) -> None:
        """Graceful stop: close now when idle, else after the current answer."""
        self.stopping = True
        self.keep_alive = False
        if self.dkind == D_LINGER:
            self.transport.abort()
        elif not self.busy and not self.closed:
            self.closed = True
            self.transport.close()

    def _pause(self, reason: int) -> None:
        if not self.rpause and not self.closed:
            self.transport.pause_reading()
        self.rpause |= reason

    def _resume(self, reason: int) -> None:
        if self.rpause & reason:
            self.rpause &= ~reason
            if not self.rpause and not self.closed:
                self.transport.resume_reading()

    # ------------------------------------------------------------------ introspection for tests
    @property
    def outstanding(self) -> bool:
        return self.busy

    def __repr__(self) -> str:
        return f"<ClientConnection {self.peer.decode()} busy={self.busy} tunnel={self.tunnel}>"


class Lingering(asyncio.Protocol):
    """A client connection's last moments after a proxy-made answer that closes it: the write side is shut
    (the answer, then FIN), and what the client still sends is read and dropped, until its EOF, more than
    LINGER_BYTES, or LINGER_SECONDS (the connection's deadline, checked by the server's sweeper). Only then
    is the socket closed, with nothing unread in it: a close with unread bytes sends a RST instead of a FIN.
    Takes the transport over from the connection (off the hot path: nothing changes there)."""

    __slots__ = ("connection", "left")

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.left = LINGER_BYTES

    @classmethod
    def close(cls, connection: ClientConnection) -> None:
        transport = connection.transport
        if not transport.can_write_eof():  # TLS: no half-close, so close as before
            transport.close()
            return
        transport.set_protocol(cls(connection))
        transport.write_eof()  # once the answer is written
        if connection.rpause:
            connection.rpause = 0
            transport.resume_reading()
        connection.dkind = D_LINGER
        connection.deadline = now() + LINGER_SECONDS

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.connection.transport.abort()

    def eof_received(self) -> bool:
        return False  # the client is done too: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)


_LOGGED: dict[type[ClientConnection], type[ClientConnection]] = {}


def logged(cls: type[ClientConnection]) -> type[ClientConnection]:
    """The connection class to use instead of `cls` while the access log is on (`ClientConnection` or a
    subclass of it, e.g. the HTTPS front door's): the same, with `LoggedClientConnection`'s count."""
    if issubclass(cls, LoggedClientConnection) or cls in _LOGGED.values():
        return cls
    if cls is ClientConnection:
        return LoggedClientConnection
    made = _LOGGED.get(cls)
    if made is None:
        made = _LOGGED[cls] = type(f"Logged{cls.__name__}", (cls,), {
            "__slots__": (), "answered_whole": LoggedClientConnection.answered_whole,
            "__doc__": f"{cls.__name__} while the access log is on (see LoggedClientConnection)."})
    return made


class LoggedClientConnection(ClientConnection):
    """A client connection while the access log is on: a whole answer's bytes are counted for it. The
    one write the plain class leaves uncounted, so that the fast lane pays nothing when the log is off."""

    __slots__ = ()

    def answered_whole(self, conn: UpstreamConnection, status: int, answer: bytes) -> None:
        # ClientConnection.answered_whole's body, plus the count (a call to it would cost a frame).
        self.status = status
        self.transport.write(answer)
        self.sent += len(answer)
        self.upconn = None
        conn.release(True)
        self.busy = False
        self._end_exchange(False)
        self._next()
