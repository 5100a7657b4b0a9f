"""A burst onto an upstream with no pooled connections, on real sockets: the proxy opens at most
`max_connecting` connections at a time, the rest of the burst waits for one, and nothing is lost.

The burst is a big-bang's gap: requests held while a service is paused, all released by one swap.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers.upstreams import fetch, running_proxy, service, start_upstreams, wait_for
from proxy.forward import ClientConnection
from proxy.router import Router

BURST = 40


@pytest.fixture
async def app():
    (upstream,) = await start_upstreams("a")
    yield upstream
    await upstream.close()


@pytest.fixture
def attempts_in_flight(monkeypatch) -> list[tuple[int, int]]:
    """(attempts in flight, requests queued) at the upstream each time a request asked for a connection."""
    seen: list[tuple[int, int]] = []
    real = ClientConnection._open

    def spy(self, upstream):
        real(self, upstream)
        seen.append((upstream.connecting, len(upstream.waiting)))
    monkeypatch.setattr(ClientConnection, "_open", spy)
    return seen


async def held_burst(app, max_connecting: int) -> tuple[list, Router]:
    router = Router()
    router.set_service(service(pools={"blue": (1, [app.address])}, hold_timeout=10))
    router.set_state("app", "paused")
    async with running_proxy(router, max_connecting=max_connecting) as proxy:
        held = [asyncio.create_task(fetch(proxy.port, path=f"/?n={n}")) for n in range(BURST)]
        await wait_for(lambda: sum(c.busy for c in proxy.connections) == BURST)
        assert app.requests == []
        router.set_state("app", "active")  # the gap ends: every held request goes at once
        answers = await asyncio.gather(*held)
        upstream = router.upstreams[app.address]
        await wait_for(lambda: upstream.connecting == 0)
        assert not upstream.waiting
    return answers, router


async def test_a_released_burst_opens_connections_a_few_at_a_time(app, attempts_in_flight):
    answers, _ = await held_burst(app, max_connecting=4)
    assert [a.status for a in answers] == [200] * BURST
    assert len(app.requests) == BURST  # each request reached the app once
    assert max(n for n, _ in attempts_in_flight) == 4  # the limit was reached, and never passed
    assert max(q for _, q in attempts_in_flight) >= BURST - 4  # the rest of the burst waited


async def test_without_a_limit_the_burst_connects_all_at_once(app, attempts_in_flight):
    answers, _ = await held_burst(app, max_connecting=0)
    assert [a.status for a in answers] == [200] * BURST
    assert max(n for n, _ in attempts_in_flight) == BURST  # what the limit prevents: one per request
    assert max(q for _, q in attempts_in_flight) == 0
