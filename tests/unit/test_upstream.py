"""Upstream's pool of idle connections: as many are kept as the upstream has had requests in flight at
once, so that a burst of that size reuses them instead of closing half and connecting anew."""

from __future__ import annotations

from helpers.fake_transport import FakeTransport
from proxy.upstream import MIN_IDLE_LIMIT, Upstream
from proxy.upstream_conn import UpstreamConnection


def connection(upstream: Upstream) -> UpstreamConnection:
    conn = UpstreamConnection(upstream)
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    return conn


def burst(upstream: Upstream, size: int) -> int:
    """`size` requests in flight at once, each on its own connection (an idle one, else a connect),
    then every answer released at once (as when they all come back in one loop turn): returns how
    many of them had to connect."""
    exchanges = [object() for _ in range(size)]
    conns, connects = [], 0
    for exchange in exchanges:
        upstream.begin(exchange)  # type: ignore[arg-type]
        if upstream.idle:
            conns.append(upstream.idle.pop())
        else:
            upstream.connecting()  # what ClientConnection._connect does first
            conns.append(connection(upstream))
            connects += 1
    for exchange, conn in zip(exchanges, conns, strict=True):
        conn.release(True)
        upstream.end(exchange)  # type: ignore[arg-type]
    return connects


def test_a_burst_larger_than_the_floor_connects_once_then_reuses_its_connections():
    upstream = Upstream("127.0.0.1:9001")
    assert burst(upstream, 1000) == 1000  # the first burst opens its connections
    assert len(upstream.idle) == 1000 and upstream.idle_limit == 1000
    assert burst(upstream, 1000) == 0  # the next reuses every one of them
    assert all(not c.transport.closing for c in upstream.idle)  # type: ignore[attr-defined]


def test_below_the_floor_nothing_changes_and_the_floor_holds():
    upstream = Upstream("127.0.0.1:9001")
    assert burst(upstream, 100) == 100 and burst(upstream, 100) == 0
    assert upstream.idle_limit == MIN_IDLE_LIMIT
    fresh = Upstream("127.0.0.1:9002")
    conns = [connection(fresh) for _ in range(MIN_IDLE_LIMIT + 5)]
    for conn in conns:  # opened without `connecting` (no burst seen): no more than the floor is kept
        conn.release(True)
    assert len(fresh.idle) == MIN_IDLE_LIMIT
    assert sum(c.transport.closing for c in conns) == 5  # type: ignore[attr-defined]
