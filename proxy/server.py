"""The listening side: accept client connections, sweep their deadlines, stop gracefully.

Lifecycle, top to bottom: `start()` listens; `stop(timeout)` stops accepting, closes idle keep-alive
connections at once and the others after their current answer, waits up to `timeout`, then aborts what is
left and returns how many it aborted.
"""

from __future__ import annotations

import asyncio

import structlog

from . import access_log
from .config import ProxyConfig
from .forward import ClientConnection, now
from .router import Router

log = structlog.get_logger("turnout.proxy.server")


class ProxyServer:
    def __init__(self, router: Router, config: ProxyConfig) -> None:
        self.router = router
        self.config = config
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[ClientConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._empty: asyncio.Event | None = None
        # Deadlines are floats on each connection; one sweeper checks them (no timer per request).
        shortest = min(config.header_timeout, config.body_idle_timeout, config.idle_timeout,
                       config.upstream_timeout)
        self.tick = min(0.5, max(0.005, shortest / 8))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        host, port = self.config.listen_host_port
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, backlog=1024, reuse_address=True)
        self._tick_handle = self.loop.call_later(self.tick, self._tick)
        log.info("proxy.listening", listen=self.config.listen, port=self.port)

    async def stop(self, timeout: float = 10.0) -> int:
        """Graceful stop; returns how many connections had to be aborted at the deadline."""
        if self._server is None:
            return 0
        self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            self._empty = asyncio.Event()
            try:
                await asyncio.wait_for(self._empty.wait(), timeout)
            except TimeoutError:
                pass
        aborted = len(self.connections)
        for connection in list(self.connections):
            connection.transport.abort()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for upstream in list(self.router.upstreams.values()) + list(self.router.draining.values()):
            upstream.close_idle()
        await self._server.wait_closed()
        self._server = None
        access_log.flush()  # the last requests' lines go out before "stopped"
        log.info("proxy.stopped", aborted=aborted)
        return aborted

    @property
    def sockets(self) -> tuple:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1] if self.sockets else 0

    # ------------------------------------------------------------------ called by connections
    def connection_opened(self, connection: ClientConnection) -> bool:
        if len(self.connections) >= self.config.max_connections:
            return False
        self.connections.add(connection)
        self.router.metrics.connections += 1
        return True

    def connection_closed(self, connection: ClientConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.router.metrics.connections -= 1
        if not self.connections and self._empty is not None:
            self._empty.set()

    def _tick(self) -> None:
        t = now()  # the connections' clock
        for connection in list(self.connections):
            if connection.dkind and t >= connection.deadline:
                try:
                    connection.on_deadline()
                except Exception:  # one bad connection must not stop the sweeper
                    log.exception("proxy.deadline_failed")
                    self.router.metrics.internal_errors += 1
                    connection.transport.abort()
        self._tick_handle = self.loop.call_later(self.tick, self._tick)
