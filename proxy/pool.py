"""A pool: one version's upstreams with a weight. Part of an immutable routing snapshot."""

from __future__ import annotations

import itertools

from .metrics import PoolStats
from .upstream import Health, Upstream


class Pool:
    """Immutable after construction; only the round-robin cursor moves (it is private to the pool)."""

    __slots__ = ("_cursor", "balance", "eligible", "name", "only", "stats", "upstreams", "weight")

    def __init__(self, name: str, weight: int, upstreams: tuple[Upstream, ...], balance: str,
                 stats: PoolStats) -> None:
        self.name = name
        self.weight = weight
        self.upstreams = upstreams
        # Health is applied when the snapshot is built, never filtered per request.
        self.eligible = tuple(u for u in upstreams if u.health is Health.HEALTHY)
        self.only = self.eligible[0] if len(self.eligible) == 1 else None  # what pick() returns, then
        self.balance = balance
        self.stats = stats
        self._cursor = itertools.count()

    def view(self, stats: PoolStats) -> Pool:
        """The same pool (name, weight, upstreams) counted in other stats: what the override routes to."""
        return Pool(self.name, self.weight, self.upstreams, self.balance, stats)

    @property
    def routable(self) -> bool:
        return bool(self.eligible)

    def pick(self, avoid: Upstream | None = None) -> Upstream | None:
        """An upstream for the next request (not `avoid`, when another exists), or None."""
        eligible = self.eligible
        if avoid is not None and len(eligible) > 1:
            eligible = tuple(u for u in eligible if u is not avoid)
        n = len(eligible)
        if n == 0:
            return None
        if n == 1:
            return eligible[0]
        start = next(self._cursor) % n
        if self.balance == "round_robin":
            return eligible[start]
        # least outstanding; the rotating start spreads ties instead of piling onto the first
        best = eligible[start]
        for i in range(1, n):
            candidate = eligible[(start + i) % n]
            if len(candidate.inflight) < len(best.inflight):
                best = candidate
        return best

    def __repr__(self) -> str:
        return f"<Pool {self.name} w={self.weight} {len(self.eligible)}/{len(self.upstreams)} eligible>"
