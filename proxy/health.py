"""Active health checking: one probe loop per (service, upstream) with `healthy`/`unhealthy`
thresholds.

Probes run in tasks beside the hot path and only ever call `router.set_health`, which rebuilds the
snapshot; the hot path never filters. The checker follows the table: upstreams that appear get a probe,
those that leave lose theirs. An upstream the hot path ejected (repeated connect failures) in a service
without a health spec is re-admitted once it accepts a TCP connection again.
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
    """Active probes for services with a health spec; a reconnect check for passively ejected upstreams.

    `_probes` holds one probe per (service, upstream address) with a health spec; `_rechecks` one task per
    upstream the hot path ejected (connect failures) that no active probe covers: without it such an
    upstream would stay out of routing for good."""

    def __init__(self, router: Router, recheck_interval: float = 1.0) -> None:
        self.router = router
        self.recheck_interval = recheck_interval
        self._probes: dict[tuple[str, str], tuple[HealthSpec, Upstream, asyncio.Task[None]]] = {}
        self._rechecks: dict[str, tuple[Upstream, asyncio.Task[None]]] = {}
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
        tasks = [task for _, _, task in self._probes.values()] + [task for _, task in self._rechecks.values()]
        self._probes.clear()
        self._rechecks.clear()
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
        unprobed: dict[str, Upstream] = {}
        for service in table.services.values():
            for pool in service.pools:
                for upstream in pool.upstreams:
                    if service.spec.health is None:
                        unprobed[upstream.address] = upstream
                    else:
                        wanted[(service.name, upstream.address)] = (service.spec.health, upstream)
        for key in list(self._probes):
            spec, upstream, task = self._probes[key]
            # Gone, a new health spec, or the address left and came back (a new Upstream object).
            if key not in wanted or wanted[key][0] != spec or wanted[key][1] is not upstream:
                task.cancel()
                del self._probes[key]
        loop = asyncio.get_running_loop()
        for key, (spec, upstream) in wanted.items():
            if key not in self._probes:
                task = loop.create_task(self._probe_loop(key[0], spec, upstream))
                self._probes[key] = (spec, upstream, task)
        # Passive ejections nobody probes: check by reconnecting until the upstream answers again.
        probed = {address for _, address in wanted}
        recheck = {a: u for a, u in unprobed.items() if u.health is Health.UNHEALTHY and a not in probed}
        for address in list(self._rechecks):
            upstream, task = self._rechecks[address]
            if recheck.get(address) is not upstream:
                task.cancel()
                del self._rechecks[address]
        for address, upstream in recheck.items():
            if address not in self._rechecks:
                self._rechecks[address] = (upstream, loop.create_task(self._recheck_loop(upstream)))

    async def _probe_loop(self, service: str, spec: HealthSpec, upstream: Upstream) -> None:
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
            upstream.active_health = Health.HEALTHY if passes else Health.UNHEALTHY
            try:
                if upstream.health is Health.UNHEALTHY and passes >= spec.healthy:
                    log.info("health.probe_passed", service=service, upstream=upstream.address, seen=seen,
                             passes=passes)
                    self.router.set_health(upstream, Health.HEALTHY)
                elif upstream.health is Health.HEALTHY and fails >= spec.unhealthy:
                    log.warning("health.probe_failed", service=service, upstream=upstream.address,
                                seen=seen, failures=fails)
                    self.router.set_health(upstream, Health.UNHEALTHY)
            except Exception:  # a failing table listener must not end this upstream's probes for good
                log.exception("health.transition_failed", service=service, upstream=upstream.address)
            await asyncio.sleep(spec.interval)

    async def _recheck_loop(self, upstream: Upstream) -> None:
        """An upstream ejected by the hot path, with no active probe: back once it accepts a connection."""
        while True:
            await asyncio.sleep(self.recheck_interval)
            try:
                async with asyncio.timeout(max(self.recheck_interval, 1.0)):
                    _, writer = await asyncio.open_connection(upstream.host, upstream.port)
            except (OSError, TimeoutError):
                continue
            writer.transport.abort()
            if self._rechecks.get(upstream.address, (None,))[0] is upstream:
                del self._rechecks[upstream.address]  # done: the swap below must not cancel this task
            upstream.passive_failures = 0
            log.info("health.reconnected", upstream=upstream.address)
            self.router.set_health(upstream, Health.HEALTHY)
            return

    async def _probe(self, url: str, timeout: aiohttp.ClientTimeout) -> tuple[bool, str]:
        """One probe: a 2xx or 3xx answer passes (redirects not followed), like most load balancers and
        the controller's readiness; a 4xx (a missing health path) or 5xx fails."""
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
