"""Which containers remain after deploys and repairs, against a fake Docker backend: the serving release
and the previous one (the rollback target), nothing older; exactly `replicas` after a rolling update;
a release the engine stopped is started again."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from test_strategies import collapse, run, web

import controller.operations as operations
from controller.config.model import RollingOptions
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A router, a fake Docker backend and a deployer on them (as in test_strategies)."""
    router = Router(drain_timeout=1.0)
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    tables: list[dict[str, int]] = []
    router.subscribe(lambda table: tables.append(
        {p.name: p.weight for p in table.services["web"].pools} if "web" in table.services else {}))
    yield router, backend, Deployer(backend, ProxyControl(router), journal), tables
    journal.close()


async def wait_until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(0.005)


def present(backend: FakeBackend) -> Counter[tuple[str, bool]]:
    """(version, running) -> how many containers the engine has."""
    return Counter((c.version, c.running) for c in backend.containers.values())


async def test_bluegreen_keeps_only_the_previous_release_for_rollback(world):
    router, backend, deployer, tables = world
    for version in ("v1", "v2", "v3", "v4"):
        active = await run(deployer, web(), f"app:{version}", "bluegreen")
        assert active.status == "succeeded"
        await deployer.settle("web")  # the old set is stopped after the deploy reported success
    # v1 and v2 are removed in the background once they are older than the rollback target
    await wait_until(lambda: {v for v, _ in present(backend)} == {"v3", "v4"})
    assert present(backend) == {("v4", True): 2, ("v3", False): 2}
    assert deployer.status("web")["previous"]["version"] == "v3"


async def test_reconcile_starts_a_release_the_engine_stopped_with_no_stray_present(world):
    router, backend, deployer, tables = world
    await run(deployer, web(), "app:v1", "bluegreen")
    await run(deployer, web(), "app:v2", "bluegreen")
    await deployer.settle("web")
    for container in backend.running():  # an engine restart stops every container; nothing else there
        await backend.stop(container.id)
    assert not backend.running()
    repair = await deployer.reconcile("web")
    assert repair is not None and repair.status == "succeeded", repair and repair.message
    v2 = backend.running("v2")
    assert len(v2) == 2 and not backend.running("v1")  # the rollback target stays stopped, kept
    assert present(backend) == {("v2", True): 2, ("v1", False): 2}
    # routed to the restarted containers' new host ports
    [pool] = router.table.services["web"].pools
    assert (pool.name, {u.address for u in pool.upstreams}) == ("v2", {c.address for c in v2})
    assert deployer.journal.history("web", 1)[0].strategy == "repair"
    assert await deployer.reconcile("web") is None  # whole again: nothing more to do


async def test_rolling_with_a_surge_of_two_ends_with_exactly_replicas(world):
    router, backend, deployer, tables = world
    config = web(replicas=3, rolling=RollingOptions(max_surge=2, max_unavailable=0))
    await run(deployer, config, "app:v1", "rolling")
    tables.clear()
    backend.calls.clear()
    active = await run(deployer, config, "app:v2", "rolling")
    assert active.status == "succeeded"
    assert len(backend.running("v2")) == 3 and not backend.running("v1")
    assert backend.calls.count(("start", "v2")) == 3
    seen = collapse(tables)  # weights follow container counts
    assert seen[-1] == {"v2": 100}
    assert all(3 <= sum(t.values()) <= 3 + 2 for t in seen[:-1]), seen  # never short, at most the surge
