"""The controller's handle on the proxy it runs beside (same process, same event loop).

`turnout serve` owns both routing and `docker stop`, so the controller drives the Router directly: a
change is one snapshot swap, and it can wait for removed upstreams to drain before stopping containers.

With remote proxies following it (`fleet`, controller/fleet.py) a change is done once every one of them
acknowledged it (`settle`), a drain once none has a request in flight on the removed upstreams, and the
counters are the sum of all. Without (`fleet` None, or no proxy registered) nothing more happens here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

from proxy.metrics import PoolCounters
from proxy.router import Router
from proxy.specs import PoolSpec, ServiceSpec
from proxy.upstream import DrainResult, Health, Upstream

from .config.model import ServiceConfig
from .fleet import ZERO, Fleet, ProxiesLagging, add_counters


class ProxyControl:
    def __init__(self, router: Router, fleet: Fleet | None = None) -> None:
        self.router = router
        self.listen: str | None = None  # the proxy's plain HTTP address once bound (http hooks use it)
        self.fleet = fleet  # remote proxies following this controller; None: this proxy only
        # The drain timeout each service's last install gave removed upstreams (remote proxies use it).
        self.drain_timeouts: dict[str, float] = {}

    def service_spec(self, config: ServiceConfig, pools: Sequence[PoolSpec],
                     labels: Mapping[str, str] | None = None, state: str = "active") -> ServiceSpec:
        """The proxy's view of a service: its routing rule from the config, with these pools."""
        return ServiceSpec(
            name=config.name,
            pools=tuple(pools),
            hosts=tuple(h.lower() for h in config.hosts),
            path_prefix=config.path_prefix,
            state=state,
            sticky=config.sticky,
            health=config.health.to_proxy() if config.health else None,
            hold_timeout=config.hold_timeout,
            labels=dict(labels or {}),
            override=config.override,
            override_secret=config.override_secret,
            override_networks=config.override_networks,
            rules=config.rules,
            mirror=config.mirror,
        )

    def pools(self, service: str) -> dict[str, PoolSpec]:
        spec = self.router.specs.get(service)
        return {p.name: p for p in spec.pools} if spec else {}

    def install(self, config: ServiceConfig, pools: Sequence[PoolSpec],
                labels: Mapping[str, str] | None = None) -> list[Upstream]:
        """Replace the service's pools in one swap; returns the upstreams now draining."""
        current = self.router.specs.get(config.name)
        state = current.state if current else "active"
        if config.drain_timeout is not None:
            self.drain_timeouts[config.name] = config.drain_timeout
        return self.router.set_service(self.service_spec(config, pools, labels, state),
                                       drain_timeout=config.drain_timeout)

    def install_static(self, config: ServiceConfig) -> None:
        """A service with fixed upstreams (host processes, tests): routed, never managed."""
        pool = PoolSpec("static", 100, tuple(config.upstreams))
        self.router.set_service(self.service_spec(config, [pool]))

    async def settle(self) -> None:
        """Until every remote proxy applied the current table (ProxiesLagging names the one that did not
        within the fleet's ack_timeout). Returns at once without remote proxies."""
        if self.fleet is not None and self.fleet.proxies:
            await self.fleet.wait_acked(self.router.generation)

    async def wait_drained(self, upstreams: Iterable[Upstream]) -> list[DrainResult]:
        """The local drain and, with remote proxies, theirs: the table that removed `upstreams` applied
        everywhere and nothing in flight on them on any proxy."""
        upstreams = list(upstreams)
        fleet = self.fleet
        if fleet is None or not fleet.proxies:
            return await self.router.wait_drained(upstreams)
        generation = self.router.generation
        timeout = max([self.router.drain_timeout, *self.drain_timeouts.values()])
        local = asyncio.ensure_future(self.router.wait_drained(upstreams))
        try:
            # A remote proxy cuts what is left at the same drain timeout: past it (plus the time for
            # the table to reach it and its report to come back), it is lagging.
            await fleet.wait_idle([u.address for u in upstreams], generation, timeout + fleet.ack_timeout)
        except ProxiesLagging:
            local.cancel()
            raise
        return await local

    def counters(self, service: str) -> dict[str, PoolCounters]:
        local = self.router.metrics.counters(service)
        if self.fleet is None:
            return local
        remote = self.fleet.counters(service)
        if not remote:
            return local
        return {pool: add_counters(local.get(pool, ZERO), remote.get(pool, ZERO))
                for pool in {*local, *remote}}

    def mirror_totals(self, service: str) -> tuple[int, int] | None:
        """(compared, differing) of the service's shadow traffic so far; None without a mirror."""
        mirror = self.router.mirrors.get(service)
        return mirror.report.totals() if mirror is not None else None

    def failed_requests(self, service: str) -> int:
        """Requests of `service` the proxy failed itself so far (its errors, hold timeouts included)."""
        remote = self.fleet.failed(service) if self.fleet is not None else 0
        return self.router.metrics.failed(service) + remote

    def set_state(self, service: str, state: str) -> None:
        self.router.set_state(service, state)

    def in_flight(self, addresses: Iterable[str]) -> int:
        addresses = list(addresses)
        remote = self.fleet.in_flight(addresses) if self.fleet is not None else 0
        return remote + sum(len(u.inflight) for a in addresses if (u := self.router.upstreams.get(a)))

    def ejected(self, addresses: Iterable[str]) -> list[str]:
        """Those of `addresses` the proxy took out of routing as unhealthy (active or passive checks), or
        any remote proxy did with its own."""
        addresses = list(addresses)
        fleet = self.fleet
        remote = set(fleet.ejected(addresses)) if fleet is not None and fleet.proxies else set()
        return [a for a in addresses if a in remote
                or ((u := self.router.upstreams.get(a)) is not None and u.health is Health.UNHEALTHY)]
