"""Big-bang's gap against a fake Docker backend: how long requests are held, drain before stop, an old
version killed after its stop grace, and what the deploy's result says about it."""

from __future__ import annotations

import asyncio

import pytest
from test_strategies import run, web

import controller.operations as operations
from controller.config.model import HealthCheck
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from controller.strategies.bigbang import GAP_MARGIN, MAX_HOLD, gap_hold_timeout
from helpers.fake_docker import FakeBackend
from proxy.router import Router


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A router, a fake Docker backend and a deployer on them (as in test_strategies)."""
    router = Router(drain_timeout=1.0)
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    yield router, backend, Deployer(backend, ProxyControl(router), journal), []
    journal.close()


async def wait_until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(0.005)


def steps(deployer, active) -> list[str]:
    return [s.name for s in deployer.journal.steps(active.id)]


# ------------------------------------------------------------------ the hold deadline
def test_the_gap_hold_covers_drain_stop_and_start():
    config = web(stop_timeout=2.0, drain_timeout=1.0, health=HealthCheck(start_timeout=5.0))
    assert gap_hold_timeout(config, proxy_drain_timeout=30.0) == 1.0 + 2.0 + 5.0 + GAP_MARGIN
    # no service drain_timeout: the proxy's; Docker's stop grace is whole seconds, rounded up
    config = web(stop_timeout=0.5, health=HealthCheck(start_timeout=5.0))
    assert gap_hold_timeout(config, proxy_drain_timeout=30.0) == 30.0 + 1.0 + 5.0 + GAP_MARGIN
    # the defaults: 10 s stop grace and 60 s to become healthy outlast the proxy's 10 s hold
    assert gap_hold_timeout(web(), proxy_drain_timeout=30.0) == 30.0 + 10.0 + 60.0 + GAP_MARGIN
    assert gap_hold_timeout(web(stop_timeout=7200.0), proxy_drain_timeout=30.0) == MAX_HOLD


def test_a_hold_timeout_set_on_the_service_is_kept():
    assert gap_hold_timeout(web(hold_timeout=3.0, stop_timeout=20.0), proxy_drain_timeout=30.0) == 3.0


async def test_bigbang_holds_requests_for_the_whole_gap_then_the_usual_hold(world):
    router, backend, deployer, tables = world
    holds: list[tuple[tuple[str, ...], float]] = []
    router.subscribe(lambda table: holds.append(
        (tuple(p.name for p in table.services["web"].pools), table.services["web"].hold_timeout)))
    config = web(stop_timeout=2.0, drain_timeout=0.5, health=HealthCheck(start_timeout=4.0))
    await run(deployer, config, "app:v1", "bigbang")
    holds.clear()
    active = await run(deployer, config, "app:v2", "bigbang")
    assert active.status == "succeeded"
    # the gap's table (no pool) holds for the gap's bound, not the proxy's 10 s; the next one is usual
    assert holds == [((), 0.5 + 2.0 + 4.0 + GAP_MARGIN), (("v2",), router.hold_timeout)]
    [holding] = [s for s in deployer.journal.steps(active.id) if s.name == "holding"]
    assert holding.detail["hold_timeout"] == 0.5 + 2.0 + 4.0 + GAP_MARGIN


# ------------------------------------------------------------------ drain before stop
class InFlight:
    """A request in flight on an upstream, as the proxy's exchange registers it."""

    def __init__(self, calls: list[tuple[str, str]]) -> None:
        self.calls = calls

    def abort_for_drain(self) -> bool:
        self.calls.append(("request_aborted", "v1"))
        return False  # cut, not sent elsewhere


async def test_bigbang_does_not_stop_the_old_container_while_a_request_is_in_flight(world):
    router, backend, deployer, tables = world
    config = web(replicas=1, drain_timeout=30.0)
    await run(deployer, config, "app:v1", "bigbang")
    [old] = backend.running("v1")
    request, upstream = InFlight(backend.calls), router.upstreams[old.address]
    upstream.begin(request)
    backend.calls.clear()
    active = deployer.deploy(config, "app:v2", "bigbang")
    await wait_until(lambda: "holding" in steps(deployer, active))
    await wait_until(lambda: old.address in router.draining)
    assert ("stop", "v1") not in backend.calls  # held by the request in flight
    backend.calls.append(("request_done", "v1"))
    upstream.end(request)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded"
    assert backend.calls.index(("request_done", "v1")) < backend.calls.index(("stop", "v1"))
    [drained] = [s for s in deployer.journal.steps(active.id) if s.name == "drained"]
    assert (drained.detail["completed"], drained.detail["aborted"]) == (1, 0)


async def test_bigbang_stops_the_old_container_at_drain_timeout_when_a_request_never_ends(world):
    router, backend, deployer, tables = world
    config = web(replicas=1, drain_timeout=0.2)
    await run(deployer, config, "app:v1", "bigbang")
    [old] = backend.running("v1")
    router.upstreams[old.address].begin(InFlight(backend.calls))
    backend.calls.clear()
    active = await run(deployer, config, "app:v2", "bigbang")
    assert active.status == "succeeded"
    # the drain waited for it until drain_timeout, cut it, and only then was the container stopped
    assert backend.calls[:2] == [("request_aborted", "v1"), ("stop", "v1")]
    [drained] = [s for s in deployer.journal.steps(active.id) if s.name == "drained"]
    assert (drained.detail["completed"], drained.detail["aborted"]) == (0, 1)


# ------------------------------------------------------------------ killed after the grace
async def test_an_old_version_killed_after_its_grace_is_noticed_and_explained(world):
    router, backend, deployer, tables = world
    backend.sigterm_ignoring_images.add("app:v1")
    config = web(stop_timeout=2.0)
    await run(deployer, config, "app:v1", "bigbang")
    active = await run(deployer, config, "app:v2", "bigbang")
    assert active.status == "succeeded"
    assert backend.stop_timeouts == [2.0, 2.0]  # the service's stop_timeout reaches `docker stop`
    [killed] = [s for s in deployer.journal.steps(active.id) if s.name == "killed_after_grace"]
    assert killed.detail["versions"] == ["v1"] and len(killed.detail["containers"]) == 2
    assert killed.detail["stop_timeout"] == 2.0 and killed.detail["exit_code"] == 137
    [stopped] = [s for s in deployer.journal.steps(active.id) if s.name == "old_stopped"]
    assert stopped.detail["killed"] == 2
    [finished] = [e for e in active.events.events if e["event"] == "finished"]
    assert any("killed after the 2s stop_timeout" in note for note in finished["notes"])
    assert any("big-bang's gap lasted" in note and "waiting for v1 to exit" in note
               for note in finished["notes"])
    assert deployer.journal.get(active.id).options["result"]["notes"] == finished["notes"]


async def test_an_old_version_that_exits_on_sigterm_leaves_no_note(world):
    router, backend, deployer, tables = world
    await run(deployer, web(), "app:v1", "bigbang")
    active = await run(deployer, web(), "app:v2", "bigbang")
    assert "killed_after_grace" not in steps(deployer, active)
    assert [e["notes"] for e in active.events.events if e["event"] == "finished"] == [[]]
    assert deployer.journal.get(active.id).options["result"] == {"proxy_failed": 0, "notes": []}


# ------------------------------------------------------------------ requests the proxy failed
@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen"])
async def test_the_result_counts_the_requests_the_proxy_failed_during_the_deploy(world, strategy):
    router, backend, deployer, tables = world
    metrics = router.metrics
    await run(deployer, web(), "app:v1", strategy)
    metrics.pool("web", "v1").observe(502, 0.01, proxy_made=True)  # before the deploy: not its own
    metrics.hold_timeouts["web"] = 1
    start, counted = backend.start, []

    async def start_counting_failures(spec):  # what the proxy counts while the new version starts
        if spec.version == "v2" and not counted:
            counted.append(spec)
            metrics.hold_timeouts["web"] += 2  # held requests answered 503 hold-timeout
            metrics.pool("web", "v1").observe(504, 0.01, proxy_made=True)
            metrics.pool("web", "v1").observe(500, 0.01)  # the app's own 500: not the proxy's doing
            metrics.pool("other", "v1").observe(502, 0.01, proxy_made=True)  # another service
        return await start(spec)

    backend.start = start_counting_failures
    active = deployer.deploy(web(), "app:v2", strategy)
    await asyncio.wait_for(active.task, 10)
    [finished] = [e for e in active.events.events if e["event"] == "finished"]
    assert finished["proxy_failed"] == 3
    assert deployer.journal.get(active.id).options["result"]["proxy_failed"] == 3
    assert deployer.journal.history("web", 1)[0].options["result"]["proxy_failed"] == 3

