"""Active health checking (proxy/health.py) against real upstreams whose /healthz can be flipped."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from helpers.upstreams import TestUpstream, dead_address, fetch, running_proxy, service, wait_for
from proxy.health import HealthChecker
from proxy.router import Router
from proxy.upstream import Health

FAST = {"path": "/healthz", "interval": 0.05, "timeout": 0.5, "healthy": 2, "unhealthy": 3}


async def listeners_ran() -> None:
    """The router calls its listeners (the checker's `_follow`) from `loop.call_soon` right after a
    swap: one turn of the loop lets the ones already queued run."""
    await asyncio.sleep(0)


@dataclass
class FlipUpstream(TestUpstream):
    """A test upstream whose /healthz answers 200 or 503 as told (optionally after a delay)."""

    __test__ = False

    healthy: bool = True
    probe_delay: float = 0.0
    probes: list[int] = field(default_factory=list)  # the status of every probe answered, in order

    async def _answer(self, method, path, query, headers, head, body, total, r, writer) -> bool:
        if path != "/healthz":
            return await super()._answer(method, path, query, headers, head, body, total, r, writer)
        if self.probe_delay:
            await asyncio.sleep(self.probe_delay)
        status = 200 if self.healthy else 503
        self.probes.append(status)
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok" % status)
        await writer.drain()
        return True

    def failures(self) -> int:
        return self.probes.count(503)


@pytest.fixture
def upstream_class() -> type[FlipUpstream]:
    """`ups` (tests/integration/conftest.py) starts FlipUpstreams here."""
    return FlipUpstream


@pytest.fixture
async def checked():
    """Start a HealthChecker for a router; stopped at the end."""
    started: list[HealthChecker] = []

    async def start(router: Router, **kwargs: float) -> HealthChecker:
        checker = HealthChecker(router, **kwargs)
        await checker.start()
        started.append(checker)
        return checker

    yield start
    for checker in started:
        await checker.stop()


def two_upstreams(a: TestUpstream, b: TestUpstream, **health: object) -> Router:
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address, b.address])}, health=FAST | health))
    return router


def eligible(router: Router, service_name: str = "app") -> set[str]:
    return {u.address for p in router.table.services[service_name].pools for u in p.eligible}


async def test_fall_failures_eject_and_rise_passes_readmit(ups, checked):
    a, b = ups
    router = two_upstreams(a, b)
    upstream_b = router.upstreams[b.address]
    failures_at_transition: list[int] = []
    passes_at_transition: list[int] = []

    def on_swap(_table: object) -> None:
        if upstream_b.health is Health.UNHEALTHY and not failures_at_transition:
            failures_at_transition.append(b.failures())
        if upstream_b.health is Health.HEALTHY and failures_at_transition and not passes_at_transition:
            passes_at_transition.append(len(b.probes) - b.probes.index(200, b.probes.index(503)))

    router.subscribe(on_swap)
    await checked(router)
    await wait_for(lambda: len(b.probes) >= 2)
    assert upstream_b.health is Health.HEALTHY and eligible(router) == {a.address, b.address}

    b.healthy = False
    await wait_for(lambda: upstream_b.health is Health.UNHEALTHY)
    await listeners_ran()  # `on_swap` runs from the swap's call_soon, after the health changed
    assert failures_at_transition == [FAST["unhealthy"]]  # exactly `unhealthy` failures, not fewer
    assert eligible(router) == {a.address}
    assert router.table.services["app"].pools[0].eligible == (router.upstreams[a.address],)

    async with running_proxy(router) as proxy:
        bodies = [(await fetch(proxy.port)).body for _ in range(10)]
        assert bodies == [b"a"] * 10

        b.healthy = True
        await wait_for(lambda: upstream_b.health is Health.HEALTHY)
        await listeners_ran()
        assert passes_at_transition == [FAST["healthy"]]  # exactly `healthy` passes
        assert eligible(router) == {a.address, b.address}
        bodies = [(await fetch(proxy.port)).body for _ in range(10)]
        assert set(bodies) == {b"a", b"b"}


async def test_fewer_than_fall_failures_keep_the_upstream(ups, checked):
    a, b = ups
    router = two_upstreams(a, b, unhealthy=3)
    await checked(router)
    for round_ in range(3):  # two failures, then passing again: never ejected
        await wait_for(lambda: len(b.probes) >= 1)
        b.healthy = False
        await wait_for(lambda n=2 * (round_ + 1): b.failures() >= n, interval=0.001)
        b.healthy = True
        await wait_for(lambda: b.probes[-1] == 200)
    assert router.upstreams[b.address].health is Health.HEALTHY
    assert router.generation == 1


async def test_a_probe_timeout_counts_as_a_failure(ups, checked):
    a, b = ups
    router = two_upstreams(a, b, timeout=0.05, unhealthy=2)
    with capture_logs() as logs:
        await checked(router)
        b.probe_delay = 0.5  # answers 200, but after the probe's timeout
        await wait_for(lambda: router.upstreams[b.address].health is Health.UNHEALTHY)
    assert eligible(router) == {a.address}
    failed = [e for e in logs if e["event"] == "health.probe_failed"]
    assert failed and "Timeout" in failed[0]["seen"]


@pytest.mark.parametrize("status", [200, 204, 302, 304, 404, 410, 500, 503])
async def test_only_2xx_and_3xx_answers_count_as_healthy(ups, checked, status):
    # Like most load balancers (and readiness, controller/readiness.py): a 4xx is not healthy, a redirect is.
    a, _ = ups
    router = Router()
    path = f"/status/{status}"
    health = FAST | {"path": path, "unhealthy": 2}
    router.set_service(service(pools={"blue": (1, [a.address])}, health=health))
    await checked(router)
    upstream = router.upstreams[a.address]
    if status < 400:
        # `unhealthy` + 1 probes answered: the checker has judged `unhealthy` of them, enough to eject it
        await wait_for(lambda: sum(r.target == path for r in a.requests) >= FAST["unhealthy"] + 1)
        assert upstream.health is Health.HEALTHY
    else:
        await wait_for(lambda: upstream.health is Health.UNHEALTHY)
        assert eligible(router) == set()


async def test_a_stopped_upstream_is_ejected(ups, checked):
    a, b = ups
    router = two_upstreams(a, b)
    await checked(router)
    await wait_for(lambda: len(b.probes) >= 1)
    upstream_b = router.upstreams[b.address]
    await b.close()
    await wait_for(lambda: upstream_b.health is Health.UNHEALTHY)
    assert eligible(router) == {a.address}


async def test_an_upstream_unhealthy_from_the_start_never_takes_traffic_after_fall(ups, checked):
    a, _ = ups
    dead = dead_address()
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address, dead])}, health=FAST))
    await checked(router)
    await wait_for(lambda: router.upstreams[dead].health is Health.UNHEALTHY)
    async with running_proxy(router) as proxy:
        assert {(await fetch(proxy.port)).body for _ in range(6)} == {b"a"}


async def test_probes_follow_the_table(ups, checked):
    a, b = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}, health=FAST))
    checker = await checked(router)
    assert set(checker._probes) == {("app", a.address)}
    await wait_for(lambda: len(a.probes) >= 1)

    # A new upstream gets a probe, the one that left loses its probe.
    router.set_service(service(pools={"green": (1, [b.address])}, health=FAST))
    await listeners_ran()
    assert set(checker._probes) == {("app", b.address)}
    await wait_for(lambda: len(b.probes) >= 1)
    seen_a = len(a.probes)
    await wait_for(lambda: len(b.probes) >= 4)
    assert len(a.probes) <= seen_a + 1  # at most one probe that was already under way

    # A new health spec restarts the probe with it.
    _, _, old_task = checker._probes[("app", b.address)]
    router.set_service(service(pools={"green": (1, [b.address])}, health=FAST | {"unhealthy": 5}))
    await listeners_ran()
    _, _, new_task = checker._probes[("app", b.address)]
    assert new_task is not old_task
    await wait_for(old_task.done)

    # No health spec: no probe. Removing the service stops its probes.
    router.set_service(service("plain", hosts=["plain.test"], pools={"p": (1, [a.address])}))
    await listeners_ran()
    assert set(checker._probes) == {("app", b.address)}
    router.remove_service("app")
    await listeners_ran()
    assert checker._probes == {}
    await wait_for(new_task.done)
    stopped_at = len(b.probes)
    await asyncio.sleep(0.2)  # four intervals: a live probe would have answered by now
    assert len(b.probes) == stopped_at


async def test_an_address_that_leaves_and_comes_back_gets_a_fresh_probe(ups, checked):
    a, b = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}, health=FAST))
    checker = await checked(router)
    _, first, _ = checker._probes[("app", a.address)]
    router.set_service(service(pools={"blue": (1, [b.address])}, health=FAST))
    router.set_service(service(pools={"blue": (1, [a.address])}, health=FAST))
    await listeners_ran()  # both swaps' listener calls, in swap order
    _, second, task = checker._probes[("app", a.address)]
    assert first is not second and second is router.upstreams[a.address]
    b.healthy = a.healthy = False
    await wait_for(lambda: second.health is Health.UNHEALTHY)
    assert not task.done()


async def test_health_transitions_are_logged(ups, checked):
    a, b = ups
    router = two_upstreams(a, b)
    with capture_logs() as logs:
        await checked(router)
        b.healthy = False
        await wait_for(lambda: router.upstreams[b.address].health is Health.UNHEALTHY)
        b.healthy = True
        await wait_for(lambda: router.upstreams[b.address].health is Health.HEALTHY)
        await listeners_ran()  # the swap's `table.changed` line is logged from call_soon: inside the capture
    changes = [(e["upstream"], e["previous"], e["health"])
               for e in logs if e["event"] == "upstream.health_changed"]
    assert changes == [(b.address, "healthy", "unhealthy"), (b.address, "unhealthy", "healthy")]
    [failed] = [e for e in logs if e["event"] == "health.probe_failed"]
    assert failed["log_level"] == "warning"
    assert (failed["service"], failed["upstream"], failed["seen"], failed["failures"]) == (
        "app", b.address, "HTTP 503", 3)
    [passed] = [e for e in logs if e["event"] == "health.probe_passed"]
    assert (passed["upstream"], passed["passes"]) == (b.address, 2)
    swaps = [e for e in logs if e["event"] == "table.changed" and e["reason"] == "health"]
    assert len(swaps) == 2


async def test_passive_ejection_without_a_health_spec_is_undone_when_the_upstream_is_back(checked):
    router = Router()
    back = TestUpstream("back")
    address = dead_address()
    port = int(address.rsplit(":", 1)[1])
    other = await TestUpstream("other").start()
    try:
        router.set_service(service(pools={"blue": (1, [address, other.address])}))  # no health spec
        checker = await checked(router, recheck_interval=0.05)
        async with running_proxy(router) as proxy:
            for _ in range(8):  # connect failures, retried on the other upstream
                assert (await fetch(proxy.port)).status == 200
            ejected = router.upstreams[address]
            assert ejected.health is Health.UNHEALTHY and eligible(router) == {other.address}
            assert set(checker._rechecks) == {address}
            await asyncio.sleep(0.15)
            assert ejected.health is Health.UNHEALTHY  # still refused: stays out
            await back.start(port)
            await wait_for(lambda: ejected.health is Health.HEALTHY)
            assert eligible(router) == {address, other.address} and checker._rechecks == {}
            bodies = {(await fetch(proxy.port)).body for _ in range(6)}
            assert bodies == {b"back", b"other"}
    finally:
        await back.close()
        await other.close()
