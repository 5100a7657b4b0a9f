"""The exact sequence of pools each strategy installs, and rollback, against a fake Docker backend."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import controller.operations as operations
from controller.config.model import BlueGreenOptions, CanaryOptions, RollingOptions
from controller.config.overrides import service_from_flags
from controller.deployer import Deployer
from controller.errors import DeployInProgress
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router


@pytest.fixture
def world(tmp_path, monkeypatch):
    router = Router(drain_timeout=1.0)
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(backend, ProxyControl(router), journal)
    tables: list[dict[str, int]] = []
    router.subscribe(lambda table: tables.append(
        {p.name: p.weight for p in table.services["web"].pools} if "web" in table.services else {}))
    yield router, backend, deployer, tables
    journal.close()


def web(replicas=2, **changes):
    config = service_from_flags("web", "app:v1", port=8080, replicas=replicas)
    changes.setdefault("verify", 0.0)  # tests of the verification window set it themselves
    return replace(config, **changes)


async def run(deployer, config, image, strategy):
    active = deployer.deploy(config, image, strategy)
    await asyncio.wait_for(active.task, 10)
    return active


def collapse(tables):
    out = []
    for t in tables:
        if not out or out[-1] != t:
            out.append(t)
    return out


async def test_first_deploy_routes_the_new_release(world):
    router, backend, deployer, tables = world
    active = await run(deployer, web(), "app:v1", "rolling")
    assert active.status == "succeeded"
    assert collapse(tables) == [{"v1": 100}]
    assert len(router.table.services["web"].pools[0].upstreams) == 2


async def test_bigbang_holds_then_switches(world):
    router, backend, deployer, tables = world
    await run(deployer, web(), "app:v1", "bigbang")
    tables.clear()
    backend.calls.clear()
    active = await run(deployer, web(), "app:v2", "bigbang")
    assert active.status == "succeeded"
    assert collapse(tables) == [{}, {"v2": 100}]  # empty table: requests are held in the gap
    # old stopped before the new started
    assert backend.calls[:2] == [("stop", "v1"), ("stop", "v1")]
    assert ("start", "v2") in backend.calls


async def test_bluegreen_switches_in_one_swap_and_keeps_old_stopped(world):
    router, backend, deployer, tables = world
    await run(deployer, web(), "app:v1", "bluegreen")
    tables.clear()
    active = await run(deployer, web(), "app:v2", "bluegreen")
    assert active.status == "succeeded"
    assert collapse(tables) == [{"v2": 100}]
    await deployer.settle("web")  # the drained old set is stopped after the deploy reported success
    v1 = [c for c in backend.containers.values() if c.version == "v1"]
    assert len(v1) == 2 and not any(c.running for c in v1)  # present, stopped: rollback target


async def test_bluegreen_rollback_reuses_kept_containers(world):
    router, backend, deployer, tables = world
    await run(deployer, web(), "app:v1", "bluegreen")
    await run(deployer, web(), "app:v2", "bluegreen")
    starts_before = sum(1 for verb, _ in backend.calls if verb == "start")
    active = await deployer.rollback("web")
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded"
    assert [p.name for p in router.table.services["web"].pools] == ["v1"]
    assert sum(1 for verb, _ in backend.calls if verb == "start") == starts_before  # nothing new
    assert len(backend.running("v1")) == 2 and not backend.running("v2")


async def test_bluegreen_keep_old_warm_leaves_blue_at_weight_zero(world):
    router, backend, deployer, tables = world
    config = web(bluegreen=BlueGreenOptions(keep_old=60.0))
    await run(deployer, config, "app:v1", "bluegreen")
    await run(deployer, config, "app:v2", "bluegreen")
    assert {p.name: p.weight for p in router.table.services["web"].pools} == {"v2": 100, "v1": 0}
    assert len(backend.running("v1")) == 2


async def test_rolling_replaces_one_by_one(world):
    router, backend, deployer, tables = world
    config = web(replicas=3, rolling=RollingOptions(max_surge=1, max_unavailable=0))
    await run(deployer, config, "app:v1", "rolling")
    tables.clear()
    active = await run(deployer, config, "app:v2", "rolling")
    assert active.status == "succeeded"
    # weights follow container counts: never fewer than 3 serving containers
    seen = collapse(tables)
    assert seen[-1] == {"v2": 100}
    for t in seen[:-1]:
        assert sum(t.values()) >= 3, seen
    assert {"v2": 1, "v1": 3} in seen and {"v2": 2, "v1": 1} in seen
    assert not backend.running("v1")


async def test_canary_steps_through_weights(world):
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(10, 50, 100), step_pause=0.05, analysis_interval=0.02))
    await run(deployer, config, "app:v1", "canary")
    tables.clear()
    active = await run(deployer, config, "app:v2", "canary")
    assert active.status == "succeeded"
    assert collapse(tables) == [{"v1": 90, "v2": 10}, {"v1": 50, "v2": 50}, {"v2": 100}]


async def test_canary_auto_rollback_on_errors(world):
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=5.0, analysis_interval=0.02,
                                      min_requests=10))
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")
    while {p.name for p in router.table.services["web"].pools} != {"v1", "v2"} or \
            router.table.services["web"].pools_by_name["v2"].weight == 0:
        await asyncio.sleep(0.01)
    for _ in range(30):  # what the proxy would count: the canary answers 500, stable 200
        router.metrics.pool("web", "v2").observe(500, 0.001)
        router.metrics.pool("web", "v1").observe(200, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "rolled_back" and "error rate" in active.message
    assert [p.name for p in router.table.services["web"].pools] == ["v1"]
    assert not [c for c in backend.containers.values() if c.version == "v2"]


async def test_manual_canary_waits_for_promote(world):
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(5, 100), step_pause=None, analysis_interval=0.02))
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")
    await asyncio.sleep(0.2)
    assert not active.task.done()
    assert {p.name: p.weight for p in router.table.services["web"].pools} == {"v1": 95, "v2": 5}
    deployer.signals_of("web").signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded"
    assert [p.name for p in router.table.services["web"].pools] == ["v2"]


async def test_abort_rolls_back_at_once(world):
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(5, 100), step_pause=None, analysis_interval=0.02))
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")
    await asyncio.sleep(0.1)
    deployer.signals_of("web").signals.abort()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "aborted"
    assert [p.name for p in router.table.services["web"].pools] == ["v1"]


@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling", "canary"])
async def test_failed_start_leaves_old_serving_and_nothing_behind(world, strategy):
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=0.01, analysis_interval=0.01))
    await run(deployer, config, "app:v1", strategy)
    backend.failing_images.add("app:bad")
    active = await run(deployer, config, "app:bad", strategy)
    assert active.status == "failed" and "exit code 3" in active.message
    assert {p.name: p.weight for p in router.table.services["web"].pools} == {"v1": 100}
    assert len(backend.running("v1")) == 2
    assert not [c for c in backend.containers.values() if c.version == "bad"]
    record = deployer.journal.history("web", 1)[0]
    assert record.status == "failed"


async def test_missing_image_fails_before_touching_anything(world):
    router, backend, deployer, tables = world
    await run(deployer, web(), "app:v1", "bigbang")
    backend.missing_images.add("app:nope")
    tables.clear()
    active = await run(deployer, web(), "app:nope", "bigbang")
    assert active.status == "failed" and "never pulls" in active.message
    assert collapse(tables) in ([], [{"v1": 100}])
    assert len(backend.running("v1")) == 2


async def test_second_deploy_while_one_runs_is_refused(world):
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(5, 100), step_pause=None))
    await run(deployer, config, "app:v1", "canary")
    running = deployer.deploy(config, "app:v2", "canary")
    with pytest.raises(DeployInProgress):
        deployer.deploy(config, "app:v3", "canary")
    deployer.signals_of("web").signals.abort()
    await asyncio.wait_for(running.task, 10)


async def test_bluegreen_preview_routes_green_only_for_testers_until_promote(world):
    router, backend, deployer, tables = world
    config = web(bluegreen=BlueGreenOptions(preview=True))
    await run(deployer, config, "app:v1", "bluegreen")
    active = deployer.deploy(config, "app:v2", "bluegreen")
    while {p.name for p in router.table.services["web"].pools} != {"v1", "v2"}:
        await asyncio.sleep(0.01)
    svc = router.table.services["web"]
    assert {p.name: p.weight for p in svc.pools} == {"v1": 100, "v2": 0}
    assert svc.select(forced="v2", sticky=None)[0].name == "v2"  # X-Turnout-Pool: v2 reaches green
    assert svc.choose().name == "v1"  # everyone else stays on blue
    await asyncio.sleep(0.1)
    assert not active.task.done()
    deployer.signals_of("web").signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded"
    assert [p.name for p in router.table.services["web"].pools] == ["v2"]


async def test_rolling_with_max_unavailable_takes_old_down_first(world):
    router, backend, deployer, tables = world
    config = web(replicas=2, rolling=RollingOptions(max_surge=0, max_unavailable=1))
    await run(deployer, config, "app:v1", "rolling")
    tables.clear()
    backend.calls.clear()
    active = await run(deployer, config, "app:v2", "rolling")
    assert active.status == "succeeded"
    # never more than 2 containers: each batch removes an old one before starting a new one
    assert backend.calls[:2] == [("remove", "v1"), ("start", "v2")]
    assert max(sum(t.values()) for t in collapse(tables)[:-1]) <= 2  # weights = container counts
    assert collapse(tables)[-1] == {"v2": 100}


async def test_pause_freezes_a_canary_step_and_resume_continues(world):
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=0.3, analysis_interval=0.05))
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")
    while "v2" not in router.table.services["web"].pools_by_name:
        await asyncio.sleep(0.01)
    active.signals.pause()
    await asyncio.sleep(0.6)  # twice the step pause: paused, the step must not have ended
    assert not active.task.done()
    assert {p.name: p.weight for p in router.table.services["web"].pools} == {"v1": 50, "v2": 50}
    active.signals.resume()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded"


@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling"])
async def test_post_switch_verification_rolls_back_on_5xx(world, strategy):
    router, backend, deployer, tables = world
    config = web(verify=1.0, canary=CanaryOptions(min_requests=10, max_error_rate=0.05))
    await run(deployer, web(verify=0.0), "app:v1", strategy)
    active = deployer.deploy(config, "app:v2", strategy)
    # The window's baseline is taken as `verifying` is journalled: errors counted before it (a slow
    # drain after the switch) would not be in the window.
    while "verifying" not in [s.name for s in deployer.journal.steps(active.id)]:
        await asyncio.sleep(0.01)
    for _ in range(20):  # what the proxy would count after the switch: the new version answers 500
        router.metrics.pool("web", "v2").observe(500, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "rolled_back" and "after the switch" in active.message
    assert {p.name: p.weight for p in router.table.services["web"].pools} == {"v1": 100}
    assert len(backend.running("v1")) == 2 and not backend.running("v2")


async def test_verification_passes_a_good_version_and_zero_skips_it(world):
    router, backend, deployer, tables = world
    await run(deployer, web(verify=0.0), "app:v1", "bluegreen")
    active = await run(deployer, web(verify=0.2), "app:v2", "bluegreen")
    assert active.status == "succeeded"
    steps = [s.name for s in deployer.journal.steps(active.id)]
    assert "verifying" in steps and "verified" in steps
    active = await run(deployer, web(verify=0.0), "app:v3", "bluegreen")
    assert "verifying" not in [s.name for s in deployer.journal.steps(active.id)]


async def test_reconcile_restarts_a_stopped_release_and_removes_strays(world):
    router, backend, deployer, tables = world
    await run(deployer, web(verify=0.0), "app:v1", "bluegreen")
    assert await deployer.reconcile("web") is None  # all well: nothing to do, nothing journalled
    for container in backend.running("v1"):  # what an engine restart does
        await backend.stop(container.id)
    from controller.docker_backend import ContainerSpec

    stray = await backend.start(ContainerSpec(service="web", version="v9", image="app:v9", port=8080,
                                              deployment_id="d-999999", pool="v9"))
    repair = await deployer.reconcile("web")
    assert repair is not None and repair.status == "succeeded"
    assert len(backend.running("v1")) == 2
    assert stray.id not in backend.containers
    assert [p.name for p in router.table.services["web"].pools] == ["v1"]
    assert deployer.journal.history("web", 1)[0].strategy == "repair"


async def test_canary_tells_its_plan_and_each_change_of_analysis_verdict(world):
    """Followers (the dashboard, `turnout deploy`) see the weights to come and the verdicts: waiting for
    requests, passing once judged, failing with the reason as it rolls back."""
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=5.0, analysis_interval=0.02,
                                      min_requests=10))
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")

    def verdicts() -> list[str]:
        return [e["verdict"] for e in active.events.events if e["event"] == "analysis"]

    while verdicts() != ["waiting"]:
        await asyncio.sleep(0.01)
    for _ in range(12):
        router.metrics.pool("web", "v2").observe(200, 0.001)
        router.metrics.pool("web", "v1").observe(200, 0.001)
    while verdicts() != ["waiting", "passing"]:
        await asyncio.sleep(0.01)
    for _ in range(30):
        router.metrics.pool("web", "v2").observe(500, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "rolled_back"
    [plan] = [e for e in active.events.events if e["event"] == "plan"]
    assert plan["steps"] == [50, 100] and plan["step_pause"] == 5.0
    analysis = [e for e in active.events.events if e["event"] == "analysis"]
    assert [e["verdict"] for e in analysis] == ["waiting", "passing", "failing"]
    assert analysis[1]["requests"] >= 10 and analysis[1]["error_rate"] == 0.0
    assert "error rate" in analysis[2]["reason"]
    assert [s.name for s in deployer.journal.steps(active.id)].count("weight") == 1  # not journal steps
