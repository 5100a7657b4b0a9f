"""`turnout serve --role proxy`: the data plane alone on a node, following a controller.

Lifecycle: proxy listener → health checks → follower (pulls the table; the first one is awaited a
moment so the proxy starts with routes when the controller is up) → serve until SIGTERM → stop
following, stop accepting, finish in flight. No admin API, no Docker, no journal: whatever steers is on
the controller.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack

import structlog

from .config import ProxyConfig
from .follower import Follower, FollowerRefused, wait_first_table
from .health import HealthChecker
from .limits import files_for_proxy, raise_open_files_limit
from .metrics import Metrics
from .router import Router
from .server import ProxyServer, reopen_on_sighup

log = structlog.get_logger("turnout.proxy.node")

FIRST_TABLE_WAIT = 5.0  # seconds the start waits for the first table (it serves 404s without one)


class ProxyNode:
    def __init__(self, config: ProxyConfig, controller: str, token: str, proxy_id: str | None = None,
                 advertise: str | None = None) -> None:
        self.config = config
        self.router = Router(Metrics(), hold_timeout=config.hold_timeout, drain_timeout=config.drain_timeout)
        self.server = ProxyServer(self.router, config)
        self.health = HealthChecker(self.router)
        self.controller, self.token, self.proxy_id, self.advertise = controller, token, proxy_id, advertise
        self.follower: Follower | None = None
        self._stack = AsyncExitStack()
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with AsyncExitStack() as stack:
            raise_open_files_limit(files_for_proxy(self.config.max_connections))
            await self.server.start()
            stack.push_async_callback(self.server.stop, 30.0)
            await self.health.start()
            stack.push_async_callback(self.health.stop)
            host, _ = self.config.listen_host_port
            address = self.advertise or f"{host}:{self.server.port}"
            self.follower = Follower(self.router, self.controller, self.token, self.proxy_id, address)
            await self.follower.start()
            stack.push_async_callback(self.follower.close)
            self._following = asyncio.get_running_loop().create_task(self.follower.run())
            stack.push_async_callback(_cancel, self._following)
            if not await wait_first_table(self.follower, FIRST_TABLE_WAIT) and self._following.done():
                self._following.result()  # refused (a wrong token): say so now, not later
            log.info("node.started", listen=address, controller=self.controller, proxy=self.follower.id,
                     generation=self.follower.applied)
            self._stack = stack.pop_all()

    async def stop(self) -> None:
        await self._stack.aclose()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        loop.add_signal_handler(signal.SIGHUP, reopen_on_sighup(self.server))
        await self.start()
        assert self._following is not None
        try:
            await asyncio.wait([stop, self._following], return_when=asyncio.FIRST_COMPLETED)
            if self._following.done() and not self._following.cancelled():
                self._following.result()  # FollowerRefused ends the node with its message
        finally:
            await self.stop()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


__all__ = ["FollowerRefused", "ProxyNode"]
