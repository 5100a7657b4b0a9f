"""The remote proxies that follow this controller (`turnout serve --role proxy`), as their pulls report.

Each pull of the routing table (controller/routing_api.py) says which generation the proxy has applied
(its acknowledgement), its requests in flight per upstream address (slot), and its per-pool counters. The
controller waits on this bookkeeping: a routing change is done when every proxy acknowledged it, a drain
when every proxy reports 0 in flight for the removed slots; the canary analysis sums the proxies'
counters with the local proxy's.

A proxy is in the set from its first pull until it is unseen for `unseen_timeout` seconds with no pull
open: then it is dropped (`proxy.dropped`, with what it last acknowledged) and nothing waits for it any
more. Its counters stay in the sums (`_retired`), so a window taken across the drop never goes negative.
A proxy that keeps pulling but does not acknowledge within `ack_timeout` fails the wait with an error
naming it (ProxiesLagging): the deploy fails and the old version is put back.

With no proxy registered nothing here waits: `wait_acked` and `wait_idle` return at once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from proxy.metrics import LATENCY_BUCKETS, PoolCounters

from .errors import TurnoutError

log = structlog.get_logger("turnout.controller.fleet")

RECHECK = 0.1  # seconds between looks at liveness while waiting (acks and reports wake the wait at once)
ZERO = PoolCounters((0,) * 7, 0, (0,) * (len(LATENCY_BUCKETS) + 1), 0.0)


class ProxiesLagging(TurnoutError, TimeoutError):
    """Some live proxy did not acknowledge a generation (or finish a drain) in time."""


class BadReport(TurnoutError, ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass
class RemoteProxy:
    id: str
    instance: str  # changes when the proxy process restarts under the same id
    address: str  # where it serves clients, as it reports it
    first_seen: float
    last_seen: float
    acked: int = -1  # the controller generation it has applied; -1 before its first table
    in_flight: dict[str, int] = field(default_factory=dict)  # upstream address -> requests in flight
    counters: dict[str, dict[str, PoolCounters]] = field(default_factory=dict)  # service -> pool -> ...
    failed: dict[str, int] = field(default_factory=dict)  # service -> requests it failed itself
    unhealthy: frozenset[str] = frozenset()  # upstreams its own health checks took out of routing
    pulls_open: int = 0  # long-polls held open now: a proxy waiting on us is alive

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "acked_generation": self.acked,
                "last_seen_seconds": round(max(0.0, now - self.last_seen), 3),
                "connected": self.pulls_open > 0,
                "in_flight": sum(self.in_flight.values()),
                "in_flight_by_upstream": dict(self.in_flight)}


@dataclass(frozen=True, slots=True)
class Report:
    """One pull's report, validated (it comes from the network)."""

    id: str
    instance: str
    address: str
    applied: int  # -1 when it was applied under another controller epoch (see Fleet.report)
    in_flight: dict[str, int]
    counters: dict[str, dict[str, PoolCounters]]
    failed: dict[str, int]
    unhealthy: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, data: Any, current_epoch: str | None = None) -> Report:
        if not isinstance(data, dict):
            raise BadReport("body", "must be a JSON object")
        proxy_id, address = data.get("id"), data.get("address", "")
        if not isinstance(proxy_id, str) or not 0 < len(proxy_id) <= 128 or not proxy_id.isprintable():
            raise BadReport("id", "must be a printable string of 1-128 characters")
        if not isinstance(address, str) or len(address) > 256:
            raise BadReport("address", "must be a string (host:port)")
        instance = data.get("instance", "")
        if not isinstance(instance, str) or len(instance) > 64:
            raise BadReport("instance", "must be a string of at most 64 characters")
        applied = data.get("applied", -1)
        if isinstance(applied, bool) or not isinstance(applied, int):
            raise BadReport("applied", "must be an integer (the generation applied)")
        epoch = data.get("epoch")
        if epoch is not None and not isinstance(epoch, str):
            raise BadReport("epoch", "must be a string (the controller epoch of the table applied)")
        if epoch != current_epoch:
            applied = -1  # a table of another controller run: nothing of this run is applied yet
        unhealthy = data.get("unhealthy", [])
        if not isinstance(unhealthy, list) or not all(isinstance(a, str) for a in unhealthy):
            raise BadReport("unhealthy", "must be a list of upstream addresses")
        return cls(proxy_id, instance, address, applied, _counts(data.get("in_flight", {}), "in_flight"),
                   _service_counters(data.get("counters", {})), _counts(data.get("failed", {}), "failed"),
                   frozenset(unhealthy))


class Fleet:
    def __init__(self, ack_timeout: float = 10.0, unseen_timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ack_timeout = ack_timeout
        self.unseen_timeout = unseen_timeout
        self.clock = clock
        self.proxies: dict[str, RemoteProxy] = {}
        self.listen: str | None = None  # the routing listener's address as bound (for status)
        # Generations restart with the controller: a proxy's acknowledgement counts only with this
        # controller's epoch (a proxy that applied generation 57 of the last run has applied nothing here).
        self.epoch = secrets.token_hex(8)
        self._retired: dict[tuple[str, str], PoolCounters] = {}  # counts of dropped or restarted proxies
        self._retired_failed: dict[str, int] = {}
        self._changed = asyncio.Event()  # set on every report, pull end and drop; waiters re-check
        self._generation = 0  # the table generation pulls wait past (Fleet.published)
        self._published = asyncio.Event()
        self.moved = False  # the routing listener was handed to a new controller (serve --takeover)

    # ------------------------------------------------------------ from the pulls
    def report(self, report: Report) -> RemoteProxy:
        now = self.clock()
        proxy = self.proxies.get(report.id)
        if proxy is None:
            proxy = RemoteProxy(report.id, report.instance, report.address, now, now)
            self.proxies[report.id] = proxy
            log.info("proxy.registered", proxy=report.id, address=report.address)
        proxy.address = report.address or proxy.address
        proxy.last_seen = now
        if report.instance != proxy.instance:  # it restarted: what it counted before stays in the sums
            log.info("proxy.restarted", proxy=proxy.id, acked=proxy.acked, applied=report.applied)
            self._retire(proxy)
            proxy.instance, proxy.acked = report.instance, report.applied
        elif report.applied < proxy.acked:
            return proxy  # an older pull of the same process, overtaken by a newer one: nothing new
        else:
            self._fold_resets(proxy, report.counters)
        proxy.acked = report.applied
        proxy.in_flight = {a: n for a, n in report.in_flight.items() if n}
        proxy.counters = report.counters
        proxy.failed = report.failed
        proxy.unhealthy = report.unhealthy
        self._wake()
        return proxy

    def pull_opened(self, proxy: RemoteProxy) -> None:
        proxy.pulls_open += 1

    def pull_closed(self, proxy: RemoteProxy) -> None:
        proxy.pulls_open = max(0, proxy.pulls_open - 1)
        proxy.last_seen = self.clock()
        self._wake()

    def published(self, generation: int) -> None:
        """The controller's table changed (router listener): wake the pulls waiting past it."""
        self._generation = generation
        self._published.set()
        self._published = asyncio.Event()

    def handed_over(self) -> None:
        """A new controller took the routing listener over: the held pulls are answered now, and every
        answer from here closes its connection, so each proxy's next pull reaches the new controller."""
        self.moved = True
        self._published.set()
        self._published = asyncio.Event()

    async def wait_published(self, after: int, timeout: float) -> None:
        """Until the table's generation is past `after`, or `timeout` seconds (a quiet poll)."""
        if self._generation > after:
            return
        try:
            await asyncio.wait_for(self._published.wait(), timeout)
        except TimeoutError:
            pass

    # ------------------------------------------------------------ liveness
    def live(self) -> list[RemoteProxy]:
        """The proxies in the set now; those unseen for `unseen_timeout` (no pull open) are dropped."""
        now = self.clock()
        for proxy in list(self.proxies.values()):
            if proxy.pulls_open == 0 and now - proxy.last_seen > self.unseen_timeout:
                self.drop(proxy, f"unseen for {now - proxy.last_seen:.1f}s")
        return list(self.proxies.values())

    def drop(self, proxy: RemoteProxy, reason: str) -> None:
        if self.proxies.get(proxy.id) is not proxy:
            return
        del self.proxies[proxy.id]
        self._retire(proxy)
        log.warning("proxy.dropped", proxy=proxy.id, address=proxy.address, reason=reason,
                    acked=proxy.acked, in_flight=sum(proxy.in_flight.values()))
        self._wake()

    # ------------------------------------------------------------ what the controller waits on
    async def wait_acked(self, generation: int, timeout: float | None = None) -> None:
        """Until every live proxy applied `generation` (or a later one). No proxy: returns at once."""
        if not self.proxies:
            return
        await self._wait(lambda p: p.acked >= generation, timeout or self.ack_timeout,
                         lambda p: _not_acked(p, generation))

    async def wait_idle(self, addresses: Iterable[str], generation: int, timeout: float) -> None:
        """Until every live proxy applied `generation` (which took `addresses` out of routing) and
        reports nothing in flight on them: the remote half of a drain."""
        if not self.proxies:
            return
        wanted = tuple(addresses)

        def idle(p: RemoteProxy) -> bool:
            return p.acked >= generation and not any(p.in_flight.get(a) for a in wanted)

        def lag(p: RemoteProxy) -> str:
            if p.acked < generation:
                return _not_acked(p, generation)
            busy = {a: p.in_flight[a] for a in wanted if p.in_flight.get(a)}
            return f"still has requests in flight on {', '.join(f'{a} ({n})' for a, n in busy.items())}"

        await self._wait(idle, timeout, lag)

    async def _wait(self, done: Callable[[RemoteProxy], bool], timeout: float,
                    lag: Callable[[RemoteProxy], str]) -> None:
        deadline = self.clock() + timeout
        while True:
            lagging = [p for p in self.live() if not done(p)]
            if not lagging:
                return
            remaining = deadline - self.clock()
            if remaining <= 0:
                now = self.clock()
                raise ProxiesLagging("; ".join(
                    f"proxy {p.id} ({p.address or 'no address'}) {lag(p)} after {timeout:g}s "
                    f"(last seen {now - p.last_seen:.1f}s ago)" for p in lagging))
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), min(remaining, RECHECK))
            except TimeoutError:
                pass

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ sums for the analysis
    def counters(self, service: str) -> dict[str, PoolCounters]:
        """The per-pool counters of every proxy that ever reported (dropped ones too), summed."""
        total: dict[str, PoolCounters] = {}
        for (svc, pool), counters in self._retired.items():
            if svc == service:
                total[pool] = add_counters(total.get(pool, ZERO), counters)
        for proxy in self.proxies.values():
            for pool, counters in proxy.counters.get(service, {}).items():
                total[pool] = add_counters(total.get(pool, ZERO), counters)
        return total

    def failed(self, service: str) -> int:
        return self._retired_failed.get(service, 0) + sum(p.failed.get(service, 0)
                                                          for p in self.proxies.values())

    def in_flight(self, addresses: Iterable[str]) -> int:
        wanted = tuple(addresses)
        return sum(p.in_flight.get(a, 0) for p in self.live() for a in wanted)

    def ejected(self, addresses: Iterable[str]) -> list[str]:
        """Those of `addresses` some live proxy's own health checks took out of routing."""
        out = set().union(*(p.unhealthy for p in self.live()))
        return [a for a in addresses if a in out]

    def describe(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [p.describe(now) for p in sorted(self.live(), key=lambda p: p.id)]

    def _retire(self, proxy: RemoteProxy) -> None:
        for service, pools in proxy.counters.items():
            for pool, counters in pools.items():
                key = (service, pool)
                self._retired[key] = add_counters(self._retired.get(key, ZERO), counters)
        for service, n in proxy.failed.items():
            self._retired_failed[service] = self._retired_failed.get(service, 0) + n
        proxy.counters, proxy.failed = {}, {}

    def _fold_resets(self, proxy: RemoteProxy, fresh: dict[str, dict[str, PoolCounters]]) -> None:
        """A pool whose count went down was reset on the proxy (it restarted between two pulls, or
        forgot a pool): keep what it had counted."""
        for service, pools in proxy.counters.items():
            for pool, before in pools.items():
                now = fresh.get(service, {}).get(pool)
                if now is None or now.requests < before.requests:
                    key = (service, pool)
                    self._retired[key] = add_counters(self._retired.get(key, ZERO), before)


def _not_acked(proxy: RemoteProxy, generation: int) -> str:
    if proxy.acked < 0:
        return f"has applied no table of this controller yet (waiting for generation {generation})"
    return f"acknowledged generation {proxy.acked}, not {generation}"


def add_counters(a: PoolCounters, b: PoolCounters) -> PoolCounters:
    return PoolCounters(tuple(x + y for x, y in zip(a.by_class, b.by_class, strict=True)),
                        a.proxy_errors + b.proxy_errors,
                        tuple(x + y for x, y in zip(a.buckets, b.buckets, strict=True)),
                        a.latency_sum + b.latency_sum)


def counters_to_dict(counters: PoolCounters) -> dict[str, Any]:
    """A reading as a pull carries it (proxy/follower.py writes the same shape)."""
    return {"by_class": list(counters.by_class), "proxy_errors": counters.proxy_errors,
            "buckets": list(counters.buckets), "latency_sum": counters.latency_sum}


def _counts(raw: Any, key: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise BadReport(key, "must be an object of name to count")
    for name, n in raw.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise BadReport(f"{key}.{name}", "must be a count (an integer of 0 or more)")
    return dict(raw)


def _service_counters(raw: Any) -> dict[str, dict[str, PoolCounters]]:
    if not isinstance(raw, dict):
        raise BadReport("counters", "must be an object of service to pool to counters")
    out: dict[str, dict[str, PoolCounters]] = {}
    for service, pools in raw.items():
        if not isinstance(pools, dict):
            raise BadReport(f"counters.{service}", "must be an object of pool to counters")
        out[service] = {pool: _pool_counters(c, f"counters.{service}.{pool}") for pool, c in pools.items()}
    return out


def _pool_counters(raw: Any, key: str) -> PoolCounters:
    if not isinstance(raw, dict):
        raise BadReport(key, "must be an object")
    by_class, buckets = raw.get("by_class"), raw.get("buckets")
    errors, latency = raw.get("proxy_errors"), raw.get("latency_sum")
    if not _ints(by_class, len(ZERO.by_class)):
        raise BadReport(f"{key}.by_class", f"must be {len(ZERO.by_class)} counts")
    if not _ints(buckets, len(ZERO.buckets)):
        raise BadReport(f"{key}.buckets", f"must be {len(ZERO.buckets)} counts")
    if not _ints([errors], 1):
        raise BadReport(f"{key}.proxy_errors", "must be a count")
    if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
        raise BadReport(f"{key}.latency_sum", "must be a number of seconds")
    return PoolCounters(tuple(by_class), errors, tuple(buckets), float(latency))  # type: ignore[arg-type]


def _ints(values: Any, length: int) -> bool:
    return (isinstance(values, list) and len(values) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values))
