"""The controller's handle on the proxy it runs beside (same process, same event loop).

`turnout serve` owns both routing and `docker stop`, so the controller drives the Router directly: a
change is one snapshot swap, and it can wait for removed upstreams to drain before stopping containers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from proxy.metrics import PoolCounters
from proxy.router import Router
from proxy.specs import PoolSpec, ServiceSpec
from proxy.upstream import DrainResult, Health, Upstream

from .config.model import ServiceConfig


class ProxyControl:
    def __init__(self, router: Router) -> None:
        self.router = router
        self.listen: str | None = None  # the proxy's plain HTTP address once bound (http hooks use it)

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
        return self.router.set_service(self.service_spec(config, pools, labels, state),
                                       drain_timeout=config.drain_timeout)

    def install_static(self, config: ServiceConfig) -> None:
        """A service with fixed upstreams (host processes, tests): routed, never managed."""
        pool = PoolSpec("static", 100, tuple(config.upstreams))
        self.router.set_service(self.service_spec(config, [pool]))

    async def wait_drained(self, upstreams: Iterable[Upstream]) -> list[DrainResult]:
        return await self.router.wait_drained(upstreams)

    def counters(self, service: str) -> dict[str, PoolCounters]:
        return self.router.metrics.counters(service)

    def mirror_totals(self, service: str) -> tuple[int, int] | None:
        """(compared, differing) of the service's shadow traffic so far; None without a mirror."""
        mirror = self.router.mirrors.get(service)
        return mirror.report.totals() if mirror is not None else None

    def failed_requests(self, service: str) -> int:
        """Requests of `service` the proxy failed itself so far (its errors, hold timeouts included)."""
        return self.router.metrics.failed(service)

    def set_state(self, service: str, state: str) -> None:
        self.router.set_state(service, state)

    def in_flight(self, addresses: Iterable[str]) -> int:
        return sum(len(u.inflight) for a in addresses if (u := self.router.upstreams.get(a)))

    def ejected(self, addresses: Iterable[str]) -> list[str]:
        """Those of `addresses` the proxy took out of routing as unhealthy (active or passive checks)."""
        return [a for a in addresses
                if (u := self.router.upstreams.get(a)) is not None and u.health is Health.UNHEALTHY]
