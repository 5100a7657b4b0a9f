"""Active health checking: one probe loop per (service, upstream) with rise/fall thresholds.

Probes run in tasks beside the hot path and only ever call `router.set_health`, which rebuilds the
snapshot; the hot path never filters. The checker follows the table: upstreams that appear get a probe,
those that leave lose theirs.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog

from .router import Router
from .specs import HealthSpec
from .table import RoutingTable
from .upstream import Health, Upstream

log = structlog.get_logger("turnout.proxy.health")


class HealthChecker:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._probes: dict[tuple[str, str], tuple[HealthSpec, asyncio.Task[None]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._running = False

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0), cookie_jar=aiohttp.DummyCookieJar()
        )
        self._running = True
        self.router.subscribe(self._follow)
        self._follow(self.router.table)

    async def stop(self) -> None:
        self._running = False
        tasks = [task for _, task in self._probes.values()]
        self._probes.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _follow(self, table: RoutingTable) -> None:
        """Start probes for new (service, upstream) pairs, stop those that left the table."""
        if not self._running:
            return
        wanted: dict[tuple[str, str], tuple[HealthSpec, Upstream]] = {}
        for service in table.services.values():
            if service.spec.health is None:
                continue
            for pool in service.pools:
                for upstream in pool.upstreams:
                    wanted[(service.name, upstream.address)] = (service.spec.health, upstream)
        for key in list(self._probes):
            spec, task = self._probes[key]
            if key not in wanted or wanted[key][0] != spec or \
                    self.router.upstreams.get(key[1]) is not wanted[key][1]:
                task.cancel()
                del self._probes[key]
        for key, (spec, upstream) in wanted.items():
            if key not in self._probes:
                task = asyncio.get_running_loop().create_task(self._probe_loop(spec, upstream))
                self._probes[key] = (spec, task)

    async def _probe_loop(self, spec: HealthSpec, upstream: Upstream) -> None:
        url = f"http://{_hostport(upstream)}{spec.path}"
        timeout = aiohttp.ClientTimeout(total=spec.timeout)
        passes = fails = 0
        while True:
            ok, seen = await self._probe(url, timeout)
            if ok:
                passes, fails = passes + 1, 0
                upstream.passive_failures = 0
            else:
                passes, fails = 0, fails + 1
            if upstream.health is Health.UNHEALTHY and passes >= spec.rise:
                self.router.set_health(upstream, Health.HEALTHY)
            elif upstream.health is Health.HEALTHY and fails >= spec.fall:
                log.warning("health.probe_failed", upstream=upstream.address, seen=seen, failures=fails)
                self.router.set_health(upstream, Health.UNHEALTHY)
            upstream.active_health = Health.HEALTHY if passes else Health.UNHEALTHY
            await asyncio.sleep(spec.interval)

    async def _probe(self, url: str, timeout: aiohttp.ClientTimeout) -> tuple[bool, str]:
        assert self._session is not None
        try:
            async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
                await response.read()
                return 200 <= response.status < 400, f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"


def _hostport(upstream: Upstream) -> str:
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return f"{host}:{upstream.port}"

