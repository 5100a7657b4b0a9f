"""A service in the routing snapshot: its pools and how one is chosen for a request."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable

from .override import Override
from .pool import Pool
from .specs import ServiceSpec

STICKY_COOKIE_PREFIX = "turnout-"  # the sticky cookie is named turnout-<service>


class Service:
    """Immutable: built from a ServiceSpec plus upstream health each time either changes."""

    __slots__ = ("_cumulative", "_weighted", "cookie_name", "forced_pools", "hold_timeout", "hosts", "name",
                 "only", "override", "path_prefix", "pools", "pools_by_name", "routable", "spec", "state",
                 "sticky")

    def __init__(self, spec: ServiceSpec, pools: tuple[Pool, ...], hold_timeout: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.hosts = spec.hosts
        self.path_prefix = spec.path_prefix
        self.state = spec.state
        self.sticky = spec.sticky
        self.cookie_name = STICKY_COOKIE_PREFIX + spec.name
        self.hold_timeout = spec.hold_timeout if spec.hold_timeout is not None else hold_timeout
        self.pools = pools
        self.pools_by_name = {p.name: p for p in pools}
        # The pool override, when the service allows one: a request it routes gets a view of the pool
        # (the same upstreams) whose counters are `stats.overridden`, so what testers send never enters
        # the deploy analysis, at no cost to any other request.
        self.override = Override(spec) if spec.override != "off" else None
        self.forced_pools = {p.name: p.view(p.stats.overridden) for p in pools} if self.override else {}
        # Only pools that can take traffic enter the weighted draw: weight 0 or no healthy
        # upstream means "receives nothing" (a forced pool may still be reached by the override).
        self._weighted = tuple(p for p in pools if p.weight > 0 and p.routable)
        total, cumulative = 0, []
        for pool in self._weighted:
            total += pool.weight
            cumulative.append(total)
        self._cumulative = tuple(cumulative)
        self.routable = spec.state == "active" and total > 0
        # The pool every request without an override gets, when there is no draw and no cookie to set:
        # what select(None, None) returns then, known in advance (the hot path's shortcut).
        self.only = self._weighted[0] if len(self._weighted) == 1 and not self.sticky else None

    def choose(self, rand: Callable[[], float] = random.random) -> Pool | None:
        """Weighted draw across routable pools (None when nothing is routable)."""
        weighted = self._weighted
        if len(weighted) == 1:
            return weighted[0]
        if not weighted:
            return None
        return weighted[bisect_right(self._cumulative, rand() * self._cumulative[-1])]

    def allowed_pool(self, value: str | None, peer: bytes) -> str | None:
        """The pool an override value (header or cookie) names, when this client may use it."""
        override = self.override
        if value is None or override is None:
            return None
        return override.pool(value, peer)

    def select(self, forced: str | None, sticky: str | None,
               rand: Callable[[], float] = random.random) -> tuple[Pool | None, bool]:
        """The pool for a request, and whether to (re)set the sticky cookie.

        `forced` (a pool the override allowed: `allowed_pool`) wins when that pool has a healthy
        upstream, even at weight 0, and only when the service has an override; `sticky` keeps a client
        on its pool while that pool still gets traffic."""
        if forced is not None:
            pool = self.forced_pools.get(forced)
            if pool is not None and pool.routable:
                return pool, False
        if self.sticky and sticky is not None:
            pool = self.pools_by_name.get(sticky)
            if pool is not None and pool.weight > 0 and pool.routable:
                return pool, False
        pool = self.choose(rand)
        return pool, self.sticky and pool is not None

    def __repr__(self) -> str:
        return f"<Service {self.name} {self.state} pools={list(self.pools)}>"
