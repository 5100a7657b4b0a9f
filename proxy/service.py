"""A service in the routing snapshot: its pools and how one is chosen for a request."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable

from .http import RequestHead
from .metrics import RuleStats
from .mirror import Mirror
from .override import Override
from .pool import Pool
from .rules import Rules, compiled
from .specs import ServiceSpec

STICKY_COOKIE_PREFIX = "turnout-"  # the sticky cookie is named turnout-<service>


class Service:
    """Immutable: built from a ServiceSpec plus upstream health each time either changes."""

    __slots__ = ("_cumulative", "_weighted", "cookie_name", "forced_pools", "full_path_only", "hold_timeout",
                 "hosts", "mirror", "mirror_pool", "name", "only", "override", "path_prefix", "pools",
                 "pools_by_name", "routable", "rule_pools", "rule_stats", "rules", "spec", "state", "sticky")

    def __init__(self, spec: ServiceSpec, pools: tuple[Pool, ...], hold_timeout: float,
                 rule_stats: tuple[RuleStats, ...] = (), mirror: Mirror | None = None) -> None:
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
        # The routing rules, with the pool each one sends to in this snapshot (None: absent or not
        # routable, so the rule falls through). Rules of which no pool is routable change nothing:
        # `rules` is then None, and the service routes (and takes the fast lane) as if it had none.
        self.rule_pools = tuple(self._rule_target(rule.to) for rule in spec.rules)
        self.rule_stats = rule_stats
        self.rules: Rules | None = (compiled(spec.rules)
                                    if any(p is not None for p in self.rule_pools) else None)
        # Shadow traffic, while its target pool is routable (proxy/mirror.py): requests are sampled on
        # the full path, so such a service never takes the fast lane; neither does a sticky one.
        self.mirror_pool = self._rule_target(spec.mirror.to) if spec.mirror is not None else None
        self.mirror = mirror if self.mirror_pool is not None else None
        self.full_path_only = self.sticky or self.mirror is not None
        # The pool every request without an override gets, when there is no draw, no rule and no cookie to
        # set: what select(None, None) returns then, known in advance (the hot path's shortcut).
        self.only = (self._weighted[0] if len(self._weighted) == 1 and not self.full_path_only
                     and self.rules is None else None)

    def _rule_target(self, to: str) -> Pool | None:
        """The pool a rule's `to` names here: "stable" (the pool labelled stable, else the heaviest),
        "canary" (the pool labelled canary; in a spec without a stable label, the last pool that is not
        the heaviest), or a pool name. The controller labels both, and a canary only while a deploy
        routes its new release beside the stable one (never a kept-warm old set)."""
        name: str | None = to
        if to in ("stable", "canary"):
            labels = self.spec.labels
            heaviest = max(self.pools, key=lambda p: p.weight).name if self.pools else None
            stable = labels.get("stable") or heaviest
            if to == "stable":
                name = stable
            elif "stable" in labels:
                name = labels.get("canary")
            else:
                name = next((p.name for p in reversed(self.pools) if p.name != stable), None)
        pool = self.pools_by_name.get(name) if name is not None else None
        return pool if pool is not None and pool.routable else None

    def by_rules(self, req: RequestHead) -> Pool | None:
        """The pool of the first rule `req` matches whose pool is routable (counted), or None."""
        pools = self.rule_pools
        for i in self.rules.matching(req):  # type: ignore[union-attr]  # only called when rules is set
            pool = pools[i]
            if pool is not None:
                self.rule_stats[i].matches += 1
                return pool
        return None

    def choose_plain(self, req: RequestHead) -> Pool | None:
        """The pool for a request with no override and no Turnout cookie: the rules', else the draw's."""
        return self.by_rules(req) or self.choose()

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

    def select(self, forced: str | None, sticky: str | None, req: RequestHead | None = None,
               rand: Callable[[], float] = random.random) -> tuple[Pool | None, bool]:
        """The pool for a request, and whether to (re)set the sticky cookie.

        Precedence: `forced` (a pool the override allowed: `allowed_pool`) wins when that pool has a
        healthy upstream, even at weight 0, and only when the service has an override; then the rules,
        in order (`req`: the head they match); then `sticky` keeps a client on its pool while that pool
        still gets traffic; then the weighted draw."""
        if forced is not None:
            pool = self.forced_pools.get(forced)
            if pool is not None and pool.routable:
                return pool, False
        if self.rules is not None and req is not None:
            pool = self.by_rules(req)
            if pool is not None:
                return pool, False
        if self.sticky and sticky is not None:
            pool = self.pools_by_name.get(sticky)
            if pool is not None and pool.weight > 0 and pool.routable:
                return pool, False
        pool = self.choose(rand)
        return pool, self.sticky and pool is not None

    def __repr__(self) -> str:
        return f"<Service {self.name} {self.state} pools={list(self.pools)}>"
