"""Per-service and per-pool (version) counters, cheap enough for the hot path, in Prometheus text.

A `PoolStats` lives as long as its (service, pool) name pair, across snapshot swaps, so a weight change
never resets the counters the canary analysis compares. Requests a tester sent to a pool with the pool
override are counted apart (`PoolStats.overridden`), so they never enter that analysis.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

# Upper bounds in seconds; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Where a status is counted in `by_class`: 1..4 its class; 5 the 5xx that count against a version (500,
# 502, 503, 504: the app failed, or the proxy could not reach it); 6 every other 5xx and anything above
# 599 (501 and 505 answer the request, not the version: any client can provoke them with an unknown
# method or version). One tuple lookup per answer, cheaper than the min() it replaces. llhttp refuses
# statuses above 999, and the proxy's own answers are 4xx/5xx.
ERROR_STATUSES = (500, 502, 503, 504)
_SLOT = tuple(0 if s < 100 else s // 100 if s < 500 else 5 if s in ERROR_STATUSES else 6 for s in range(1000))


class PoolStats:
    """Counters of one pool: answers by status class, proxy-made errors, latency histogram."""

    __slots__ = ("_overridden", "by_class", "buckets", "inflight", "latency_sum", "proxy_errors")

    def __init__(self) -> None:
        self.by_class = [0] * 7  # index: `_SLOT[status]` (1xx..4xx, counted 5xx, other 5xx); 0 unused
        self.proxy_errors = 0  # 502/503/504 the proxy itself made (counted in by_class too)
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.inflight = 0
        self._overridden: PoolStats | None = None

    @property
    def overridden(self) -> PoolStats:
        """The counters of requests routed to this pool by the pool override (testers, a blue-green
        preview): apart from these, so no client can steer the analysis by choosing its pool."""
        if self._overridden is None:
            self._overridden = PoolStats()
        return self._overridden

    def observe(self, status: int, seconds: float, proxy_made: bool = False) -> None:
        self.by_class[_SLOT[status]] += 1
        if proxy_made:
            self.proxy_errors += 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def snapshot(self) -> PoolCounters:
        return PoolCounters(tuple(self.by_class), self.proxy_errors, tuple(self.buckets), self.latency_sum)


@dataclass(frozen=True, slots=True)
class PoolCounters:
    """An immutable reading of a PoolStats; subtract two readings to get a window."""

    by_class: tuple[int, ...]
    proxy_errors: int
    buckets: tuple[int, ...]
    latency_sum: float

    @property
    def requests(self) -> int:
        return sum(self.by_class)

    @property
    def classes(self) -> tuple[int, ...]:
        """Answers by status class, 1xx..5xx (every 5xx in the last)."""
        by_class = self.by_class
        return (*by_class[1:5], by_class[5] + by_class[6])

    @property
    def errors(self) -> int:
        """Answers that count against a version: 500 and 502-504, from the app or made by the proxy for
        it (not 501/505, which any client provokes with an unknown method or HTTP version)."""
        return self.by_class[5]

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding quantile q (None without data; inf past the last bound)."""
        total = sum(self.buckets)
        if not total:
            return None
        rank = q * total
        seen = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")

    def __sub__(self, earlier: PoolCounters) -> PoolCounters:
        return PoolCounters(
            tuple(a - b for a, b in zip(self.by_class, earlier.by_class, strict=True)),
            self.proxy_errors - earlier.proxy_errors,
            tuple(a - b for a, b in zip(self.buckets, earlier.buckets, strict=True)),
            self.latency_sum - earlier.latency_sum,
        )


class RuleStats:
    """Requests one routing rule sent to its pool (rules that matched but fell through are not counted)."""

    __slots__ = ("matches",)

    def __init__(self) -> None:
        self.matches = 0


MIRROR_OUTCOMES = ("sampled", "sent", "compared", "failed", "dropped_queue_full", "dropped_rate",
                   "dropped_body", "dropped_target_down", "unanswered", "internal_errors")


class MirrorStats:
    """What happened to one service's shadow traffic (proxy/mirror.py): copies sampled, sent (answered),
    compared with the client's answer, failed at the mirror target, dropped (queue full, over
    `max_per_second`, body over `max_body`, the target failing every copy of late), not compared for lack
    of the client's whole answer."""

    __slots__ = MIRROR_OUTCOMES

    def __init__(self) -> None:
        for name in MIRROR_OUTCOMES:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in MIRROR_OUTCOMES}


class Metrics:
    """Registry of PoolStats by (service, pool), plus proxy-wide counters."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], PoolStats] = {}
        self.rules: dict[tuple[str, str], RuleStats] = {}  # by (service, rule name), across swaps
        self.mirrors: dict[str, MirrorStats] = {}  # by service, across swaps
        self.unrouted = [0] * 6  # answers with no pool: unknown host (404), hold expired (503) ...
        self.hold_timeouts: dict[str, int] = {}  # by service: held requests answered 503 at their deadline
        self.drain_aborted = 0
        self.drain_replayed = 0  # in flight at a drain deadline, waiting: sent to a serving upstream
        self.internal_errors = 0  # exceptions caught at the data plane's error boundaries: Turnout's bugs
        self.connections = 0  # client connections open now
        self.sources: list[Callable[[], list[str]]] = []  # more exposition lines (the HTTPS listener's)

    def pool(self, service: str, pool: str) -> PoolStats:
        key = (service, pool)
        stats = self.pools.get(key)
        if stats is None:
            stats = self.pools[key] = PoolStats()
        return stats

    def rule(self, service: str, rule: str) -> RuleStats:
        key = (service, rule)
        stats = self.rules.get(key)
        if stats is None:
            stats = self.rules[key] = RuleStats()
        return stats

    def mirror(self, service: str) -> MirrorStats:
        stats = self.mirrors.get(service)
        if stats is None:
            stats = self.mirrors[service] = MirrorStats()
        return stats

    def counters(self, service: str) -> dict[str, PoolCounters]:
        return {pool: s.snapshot() for (svc, pool), s in self.pools.items() if svc == service}

    def failed(self, service: str) -> int:
        """Requests of `service` the proxy failed itself: its 502/503/504 in every pool, plus held
        requests that reached their deadline before any pool served (503 hold-timeout)."""
        return (sum(s.proxy_errors for (svc, _), s in self.pools.items() if svc == service)
                + self.hold_timeouts.get(service, 0))

    def render(self, health: list[tuple[str, str, str, bool]]) -> str:
        """Prometheus text exposition; `health` lists (service, pool, upstream, healthy)."""
        out = [
            "# HELP turnout_requests_total Requests answered, by service, pool and status class.",
            "# TYPE turnout_requests_total counter",
        ]
        for (svc, pool), s in sorted(self.pools.items()):
            for cls, count in enumerate(s.snapshot().classes, 1):
                out.append(f'turnout_requests_total{{service="{svc}",pool="{pool}",code="{cls}xx"}} {count}')
        out += ["# HELP turnout_override_requests_total Requests routed by the pool override (testers), "
                "by class; not in turnout_requests_total nor in the deploy analysis.",
                "# TYPE turnout_override_requests_total counter"]
        for (svc, pool), s in sorted(self.pools.items()):
            if s._overridden is not None:
                for cls, count in enumerate(s._overridden.snapshot().classes, 1):
                    out.append(f'turnout_override_requests_total{{service="{svc}",pool="{pool}",'
                               f'code="{cls}xx"}} {count}')
        out += ["# HELP turnout_rule_matches_total Requests a routing rule sent to its pool, by rule.",
                "# TYPE turnout_rule_matches_total counter"]
        for (svc, rule), r in sorted(self.rules.items()):
            out.append(f'turnout_rule_matches_total{{service="{svc}",rule="{rule}"}} {r.matches}')
        out += ["# HELP turnout_mirror_requests_total Shadow traffic copies, by service and outcome.",
                "# TYPE turnout_mirror_requests_total counter"]
        for svc, m in sorted(self.mirrors.items()):
            for outcome, count in m.as_dict().items():
                out.append(f'turnout_mirror_requests_total{{service="{svc}",outcome="{outcome}"}} {count}')
        out += ["# HELP turnout_proxy_errors_total 502/503/504 answers made by the proxy itself.",
                "# TYPE turnout_proxy_errors_total counter"]
        for (svc, pool), s in sorted(self.pools.items()):
            out.append(f'turnout_proxy_errors_total{{service="{svc}",pool="{pool}"}} {s.proxy_errors}')
        out += ["# HELP turnout_hold_timeouts_total Held requests answered 503 at their hold deadline.",
                "# TYPE turnout_hold_timeouts_total counter"]
        for svc, count in sorted(self.hold_timeouts.items()):
            out.append(f'turnout_hold_timeouts_total{{service="{svc}"}} {count}')
        out += ["# HELP turnout_request_duration_seconds Time to the end of the response.",
                "# TYPE turnout_request_duration_seconds histogram"]
        for (svc, pool), s in sorted(self.pools.items()):
            labels = f'service="{svc}",pool="{pool}"'
            running = 0
            for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), s.buckets, strict=True):
                running += count
                out.append(f'turnout_request_duration_seconds_bucket{{{labels},le="{bound}"}} {running}')
            out.append(f"turnout_request_duration_seconds_sum{{{labels}}} {s.latency_sum:.6f}")
            out.append(f"turnout_request_duration_seconds_count{{{labels}}} {running}")
        out += ["# HELP turnout_requests_in_flight Requests being proxied now.",
                "# TYPE turnout_requests_in_flight gauge"]
        for (svc, pool), s in sorted(self.pools.items()):
            out.append(f'turnout_requests_in_flight{{service="{svc}",pool="{pool}"}} {s.inflight}')
        out += ["# HELP turnout_upstream_healthy 1 when the upstream is in the effective table.",
                "# TYPE turnout_upstream_healthy gauge"]
        for svc, pool, address, healthy in health:
            out.append(f'turnout_upstream_healthy{{service="{svc}",pool="{pool}",upstream="{address}"}} '
                       f"{int(healthy)}")
        out += ["# HELP turnout_unrouted_total Answers made before any pool was chosen, by class.",
                "# TYPE turnout_unrouted_total counter"]
        for cls in range(1, 6):
            out.append(f'turnout_unrouted_total{{code="{cls}xx"}} {self.unrouted[cls]}')
        out += ["# TYPE turnout_drain_aborted_total counter",
                f"turnout_drain_aborted_total {self.drain_aborted}",
                "# HELP turnout_drain_replayed_total Requests still waiting for their answer at a drain "
                "deadline, sent again to a serving upstream.",
                "# TYPE turnout_drain_replayed_total counter",
                f"turnout_drain_replayed_total {self.drain_replayed}",
                "# HELP turnout_internal_errors_total Requests failed by a bug of the proxy's own (logged).",
                "# TYPE turnout_internal_errors_total counter",
                f"turnout_internal_errors_total {self.internal_errors}",
                "# TYPE turnout_client_connections gauge",
                f"turnout_client_connections {self.connections}"]
        for source in self.sources:
            out += source()
        out.append("")
        return "\n".join(out)
