"""The dashboard's one stream of state: numbered events any number of readers follow, resumable.

Fed from three sources: the router's swap notifications (`table`: weights and health as they change),
a sample of the per-pool counters once a second (`tick`: requests/s, 5xx, p99 and observed share per
pool, in-flight and draining upstreams, the countdown of a deploy in progress), and each deployment's
event log (`deploy`, then `history` from the journal once it finished).

Every event is serialised once, whoever reads it. Ids are `<run>-<seq>`: a reader that reconnects with
`Last-Event-ID` gets exactly what it missed while that is still in the buffer, else a fresh `snapshot`
(the full picture and the last minutes of samples) — so does a reader of an earlier daemon run.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from proxy.metrics import PoolCounters
from proxy.router import Router
from proxy.table import RoutingTable

from ..deployer import ActiveDeployment, Deployer
from .view import describe_deployment, describe_history, describe_services, now, pool_rates, shown

log = structlog.get_logger("turnout.dashboard")

TICK_SECONDS = 1.0
BUFFER_EVENTS = 600  # what a reconnecting reader can catch up on (about 10 minutes of ticks)
SERIES_TICKS = 300  # samples a new reader gets for its charts (5 minutes)
SHARE_TICKS = 5  # the observed share of answers is over this many samples
MARKERS = 200  # deploy events kept as chart markers
SWAP_COALESCE = 0.05  # seconds: a burst of swaps (health flapping) becomes one `table` event


@dataclass(frozen=True, slots=True)
class FeedEvent:
    seq: int
    id: str
    kind: str
    data: str  # JSON, made once


class Feed:
    def __init__(self, router: Router, deployer: Deployer, interval: float = TICK_SECONDS,
                 certificates: Callable[[], dict[str, Any]] | None = None) -> None:
        self.router = router
        self.deployer = deployer
        # The HTTPS listener's certificates (hosts, issuer, expiry, source, files refused), when there is
        # one: in every snapshot and tick, so an expiry or a reload shows within a second.
        self.certificates = certificates
        self.interval = interval
        self.run = secrets.token_hex(4)
        self.seq = 0
        self.closed = False
        self.buffer: deque[FeedEvent] = deque(maxlen=BUFFER_EVENTS)
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_TICKS)
        self.markers: deque[dict[str, Any]] = deque(maxlen=MARKERS)
        self._changed = asyncio.Event()
        self._homes: dict[str, tuple[str, str]] = {}  # upstream address -> (service, pool) last routed
        self._previous: dict[tuple[str, str], PoolCounters] = {}
        self._recent: deque[dict[tuple[str, str], int]] = deque(maxlen=SHARE_TICKS)
        self._sampled_at = time.monotonic()
        self._followed: set[str] = set()  # deployment ids whose events are being published
        self._tasks: set[asyncio.Task[None]] = set()
        self._swap_pending = False
        self._sampler: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._remember_homes(self.router.table)
        self._followed = {a.id for a in self.deployer.finished.values()}  # in every snapshot already
        self._previous = self._readings()
        self._sampled_at = time.monotonic()
        self.router.subscribe(self._on_swap)
        self._sampler = self._spawn(self._sample_forever())

    async def stop(self) -> None:
        """Readers see the end of the stream (their responses finish), then the feed's tasks end."""
        self.closed = True
        self._wake()
        tasks = [*self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ reading
    async def follow(self, last_id: str | None = None) -> AsyncIterator[FeedEvent]:
        """What `last_id` missed (or a snapshot first), then every new event until the feed stops."""
        cursor = self._resume_point(last_id)
        while not self.closed:
            first = self.buffer[0].seq if self.buffer else self.seq + 1
            if cursor is None or cursor + 1 < first:  # new, from another run, or fell too far behind
                cursor = self.seq
                yield self._snapshot_event()
                continue
            if cursor < self.seq:
                event = self.buffer[cursor + 1 - first]
                cursor = event.seq
                yield event
                continue
            await self._changed.wait()  # nothing awaited since the checks above: no event slips by

    def _resume_point(self, last_id: str | None) -> int | None:
        run, _, seq = (last_id or "").partition("-")
        if run != self.run or not seq.isdigit() or int(seq) > self.seq:
            return None
        return int(seq)

    def snapshot(self) -> dict[str, Any]:
        deployer = self.deployer
        deployments = {name: describe_deployment(a, with_events=True)
                       for name, a in {**deployer.finished, **deployer.active}.items()}
        return {"run": self.run, "seq": self.seq, "t": now(), "interval": self.interval,
                "services": describe_services(self.router, deployer, self._homes),
                "series": list(self.series), "markers": list(self.markers), "deployments": deployments,
                "history": {name: describe_history(deployer, name) for name in deployer.configs},
                "certificates": self._certificates()}

    def _certificates(self) -> dict[str, Any] | None:
        if self.certificates is None:
            return None
        described = self.certificates()
        return {"listen": described.get("listen"), "certificates": described.get("certificates", []),
                "errors": described.get("errors", [])}

    def _snapshot_event(self) -> FeedEvent:
        data = json.dumps({"kind": "snapshot", **self.snapshot()}, default=str, separators=(",", ":"))
        return FeedEvent(self.seq, f"{self.run}-{self.seq}", "snapshot", data)

    # ------------------------------------------------------------ writing
    def publish(self, kind: str, **payload: Any) -> FeedEvent:
        self.seq += 1
        data = json.dumps({"kind": kind, **payload}, default=str, separators=(",", ":"))
        event = FeedEvent(self.seq, f"{self.run}-{self.seq}", kind, data)
        self.buffer.append(event)
        self._wake()
        return event

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------ sources
    def _on_swap(self, table: RoutingTable) -> None:
        """A router listener: runs right after every swap, so it only schedules the work."""
        self._remember_homes(table)
        if not self._swap_pending and not self.closed:
            self._swap_pending = True
            asyncio.get_running_loop().call_later(SWAP_COALESCE, self._publish_table)

    def _publish_table(self) -> None:
        self._swap_pending = False
        if not self.closed:
            self.publish("table", t=now(), generation=self.router.generation,
                         services=describe_services(self.router, self.deployer, self._homes))

    def _remember_homes(self, table: RoutingTable) -> None:
        for service in table.services.values():
            for pool in service.pools:
                for upstream in pool.upstreams:
                    self._homes[upstream.address] = (service.name, pool.name)

    async def _sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                self.sample()
            except Exception:  # one bad sample must not end the feed
                log.exception("dashboard.sample_failed")

    def _readings(self) -> dict[tuple[str, str], PoolCounters]:
        return {key: stats.snapshot() for key, stats in list(self.router.metrics.pools.items())}

    def sample(self) -> None:
        """One sample of the per-pool counters, published as a `tick` (the sampler calls it each second)."""
        self._follow_new_deployments()
        readings = self._readings()
        sampled_at = time.monotonic()
        seconds = sampled_at - self._sampled_at
        previous = self._previous
        windows = {key: c - previous[key] if key in previous else c for key, c in readings.items()}
        self._previous, self._sampled_at = readings, sampled_at
        self._recent.append({key: w.requests for key, w in windows.items()})
        served: dict[str, int] = {}
        by_pool: dict[tuple[str, str], int] = {}
        for counts in self._recent:
            for (service, pool), n in counts.items():
                served[service] = served.get(service, 0) + n
                by_pool[(service, pool)] = by_pool.get((service, pool), 0) + n
        stats = self.router.metrics.pools
        rates: dict[str, dict[str, Any]] = {}
        for key, window in windows.items():
            service, pool = key
            in_flight = stats[key].inflight if key in stats else 0
            if not window.requests and not in_flight and not by_pool.get(key):
                continue  # idle for SHARE_TICKS samples: a missing pool reads as 0 (samples stay small)
            entry = pool_rates(window, seconds, in_flight)
            entry["share"] = round(by_pool.get(key, 0) / served[service], 4) if served.get(service) else None
            rates.setdefault(service, {})[pool] = entry
        sample = {"t": now(), "rates": rates}
        self.series.append(sample)
        deployments = {name: describe_deployment(a) for name, a in self.deployer.active.items()}
        self.publish("tick", **sample, deployments=deployments,
                     services=describe_services(self.router, self.deployer, self._homes),
                     certificates=self._certificates())
        self._forget_homes()

    def _forget_homes(self) -> None:
        if len(self._homes) > 4 * max(1, len(self.router.upstreams) + len(self.router.draining)):
            keep = self.router.upstreams.keys() | self.router.draining.keys()
            self._homes = {a: home for a, home in self._homes.items() if a in keep}

    def _follow_new_deployments(self) -> None:
        """Deployments that began since the last sample (one that already ended too): their events are
        published from the first, so joining up to a sample late loses nothing."""
        known = [*self.deployer.finished.values(), *self.deployer.active.values()]
        for active in known:
            if active.id not in self._followed:
                self._followed.add(active.id)
                self._spawn(self._publish_deployment(active))
        self._followed &= {a.id for a in known}

    async def _publish_deployment(self, active: ActiveDeployment) -> None:
        info = {"id": active.id, "strategy": active.strategy, "version": active.version,
                "image": active.image, "started": round(active.started, 3)}
        async for event in active.events.follow():
            if event.get("event") in ("step", "finished"):
                label = event.get("step") or f"{event.get('status')}"
                self.markers.append({"service": active.service, "t": event.get("time"), "label": label,
                                     "deployment": active.id})
            self.publish("deploy", service=active.service, deployment=info, event=shown(event))
        self.publish("history", service=active.service,
                     deployments=describe_history(self.deployer, active.service))
