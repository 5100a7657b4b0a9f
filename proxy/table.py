"""The routing table: an immutable snapshot of every service, matched by Host and path prefix.

The hot path reads `router.table` once per request and uses only that object, so a swap (one
assignment) takes effect on the next request and never changes one in flight.
"""

from __future__ import annotations

from collections.abc import Mapping

from .metrics import Metrics
from .mirror import Mirror
from .pool import Pool
from .service import Service
from .specs import ServiceSpec
from .upstream import Upstream


class RoutingTable:
    __slots__ = ("_by_host", "_default", "_hostless", "only", "services")

    def __init__(self, services: tuple[Service, ...]) -> None:
        self.services = {s.name: s for s in services}
        by_host: dict[str, list[Service]] = {}
        hostless: list[Service] = []
        for service in services:
            for host in service.hosts:
                by_host.setdefault(host, []).append(service)
            if not service.hosts:
                hostless.append(service)
        # Longest path prefix first, so /api/v2 wins over /api and / .
        def longest_first(s: Service) -> int:
            return -len(s.path_prefix)
        self._by_host = {h: tuple(sorted(v, key=longest_first)) for h, v in by_host.items()}
        self._hostless = tuple(sorted(hostless, key=longest_first))
        # With exactly one service it is the default route, whatever the Host.
        self._default = services[0] if len(services) == 1 else None
        # The one service, when it takes every path: what match() returns for any path starting with "/"
        # (the hot path's shortcut past match()).
        self.only = self._default if self._default is not None and self._default.path_prefix == "/" else None

    def match(self, host: str, path: str) -> Service | None:
        """The service for a request's Host (lower-case, port stripped) and path, or None."""
        for service in self._by_host.get(host, self._hostless):
            if path.startswith(service.path_prefix):
                return service
        if self._default is not None and path.startswith(self._default.path_prefix):
            return self._default
        return None


def build_table(specs: Mapping[str, ServiceSpec], upstreams: Mapping[str, Upstream], metrics: Metrics,
                hold_timeout: float, mirrors: dict[str, Mirror] | None = None) -> RoutingTable:
    """Derive the effective snapshot from the desired specs and the upstreams' current health. `mirrors`:
    the shadow traffic runtime per service, kept across snapshots (created here on first use)."""
    mirrors = {} if mirrors is None else mirrors
    services = []
    for spec in specs.values():
        pools = tuple(
            Pool(p.name, p.weight, tuple(upstreams[a] for a in p.upstreams), spec.balance,
                 metrics.pool(spec.name, p.name))
            for p in spec.pools
        )
        rule_stats = tuple(metrics.rule(spec.name, rule.name) for rule in spec.rules)
        mirror = None
        if spec.mirror is not None:
            mirror = mirrors.get(spec.name)
            if mirror is None:
                mirror = mirrors[spec.name] = Mirror(spec.name, metrics.mirror(spec.name))
            mirror.configure(spec.mirror)
        services.append(Service(spec, pools, hold_timeout, rule_stats, mirror))
    return RoutingTable(tuple(services))
