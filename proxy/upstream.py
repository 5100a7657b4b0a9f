"""One upstream (`host:port`): its runtime state, shared by every routing snapshot that names it.

Snapshots are immutable and say *which* upstreams get traffic; this object holds what changes per request
(outstanding count, in-flight exchanges, pooled idle connections) and per probe (health). Identity is
stable for as long as an address is routed, so a snapshot swap never loses a counter or a connection.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass
from typing import Protocol

from .specs import parse_address


class Health(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class Exchange(Protocol):
    """A request in flight on an upstream; drain ends the ones left at its deadline."""

    def abort_for_drain(self) -> bool:
        """Leave this upstream: True when the request went again elsewhere, False when it was cut."""
        ...


class IdleConnection(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DrainResult:
    address: str
    completed: int  # in flight when the drain began and finished in time
    aborted: int  # still in flight at the deadline, cut (504 or a closed stream)
    seconds: float
    replayed: int = 0  # still in flight at the deadline, waiting for an answer: sent to a serving upstream


# Idle connections kept per upstream at least; more once the upstream has had more requests in flight at
# once (`idle_limit`), so that a next burst of that size reuses them instead of connecting anew.
MIN_IDLE_LIMIT = 512


class Upstream:
    __slots__ = ("_drained", "address", "active_health", "draining", "health", "host", "idle", "idle_limit",
                 "inflight", "passive_failures", "port")

    def __init__(self, address: str) -> None:
        self.address = address
        self.host, self.port = parse_address("upstream", address)
        self.inflight: set[Exchange] = set()
        self.idle: list[IdleConnection] = []  # LIFO: the most recently used connection is the warmest
        self.idle_limit = MIN_IDLE_LIMIT  # the most in flight at once seen when connecting (`connecting`)
        self.health = Health.HEALTHY
        self.active_health = Health.HEALTHY  # what the active probe last concluded
        self.passive_failures = 0  # consecutive connect failures / 5xx answers seen by the hot path
        self.draining = False
        self._drained: asyncio.Event | None = None

    @property
    def outstanding(self) -> int:
        return len(self.inflight)

    def begin(self, exchange: Exchange) -> None:
        self.inflight.add(exchange)

    def end(self, exchange: Exchange) -> None:
        self.inflight.discard(exchange)
        if not self.inflight and self._drained is not None:
            self._drained.set()

    def connecting(self) -> None:
        """A request found no idle connection: remember how many are in flight now, so that as many are
        kept when they are released. (Without it, 1,000 clients to one upstream closed half of the
        connections after each answer and reopened them for the next requests: a connect for ~15% of
        requests, the garbage collector's pauses that came with them, and a p99 1.1x nginx's.)"""
        if len(self.inflight) > self.idle_limit:
            self.idle_limit = len(self.inflight)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()

    async def drain(self, timeout: float) -> DrainResult:
        """Let in-flight exchanges finish for up to `timeout` s, then abort the rest.

        The caller has already removed this upstream from routing, so nothing new arrives."""
        started = time.monotonic()  # not loop.time(): uvloop's ticks in whole milliseconds
        self.draining = True
        self.close_idle()
        before = len(self.inflight)
        if self.inflight:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except TimeoutError:
                pass
            finally:
                self._drained = None
        leftover = list(self.inflight)
        replayed = sum(exchange.abort_for_drain() for exchange in leftover)
        self.close_idle()  # connections released while draining were closed, not pooled; be sure
        return DrainResult(self.address, before - len(leftover), len(leftover) - replayed,
                           time.monotonic() - started, replayed)

    def __repr__(self) -> str:
        return f"<Upstream {self.address} {self.health.value} inflight={len(self.inflight)}>"
