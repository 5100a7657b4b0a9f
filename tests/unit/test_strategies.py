"""The exact sequence of pools each strategy installs, and rollback, against a fake Docker backend."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import controller.operations as operations
from controller.config.model import BlueGreenOptions, CanaryOptions, ConfigError, RollingOptions
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


async def run(deployer, config, image, strategy, version=None):
    active = deployer.deploy(config, image, strategy, version)
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


async def wait_weights(router, weights):
    while {p.name: p.weight for p in router.table.services["web"].pools} != weights:
        await asyncio.sleep(0.01)


async def test_canary_is_not_rolled_back_when_the_stable_pool_errs_as_much(world):
    """Issue 10, item 13: the canary's 55% is chance beside the stable's 50% (a client making both
    fail, a broken dependency): not the new version's doing."""
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=0.3, analysis_interval=0.02,
                                      min_requests=20))
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")
    await wait_weights(router, {"v1": 50, "v2": 50})
    canary, stable = router.metrics.pool("web", "v2"), router.metrics.pool("web", "v1")
    for status in [500] * 11 + [200] * 9:
        canary.observe(status, 0.001)
    for status in [500] * 190 + [200] * 190:
        stable.observe(status, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded", active.message


async def test_canary_is_rolled_back_when_its_p99_is_100x_the_stable(world):
    """Issue 10, item 13: ~100 ms against ~1 ms (the old check wanted 100 ms more, so it promoted)."""
    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=5.0, analysis_interval=0.02,
                                      min_requests=20, max_p99_ratio=2.0))
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")
    await wait_weights(router, {"v1": 50, "v2": 50})
    for _ in range(100):
        router.metrics.pool("web", "v2").observe(200, 0.09)
        router.metrics.pool("web", "v1").observe(200, 0.0009)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "rolled_back" and "p99 latency" in active.message, active.message
    assert [p.name for p in router.table.services["web"].pools] == ["v1"]


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
    # The service's override is off: the preview gets one of its own, a secret made for it, which the
    # deploy's followers see (`turnout deploy` prints it) and the journal does not.
    access = next(e for e in active.events.events if e["event"] == "preview_access")
    header = access["header"]
    assert header.startswith("X-Turnout-Pool: v2:") and access["cookie"] == "turnout-pool=" + header[16:]
    assert svc.allowed_pool(header[16:], b"203.0.113.9") == "v2"  # with the secret, anyone reaches green
    assert svc.select(svc.allowed_pool(header[16:], b"::1"), sticky=None)[0].name == "v2"
    assert svc.allowed_pool("v2", b"127.0.0.1") is None  # without it, nobody
    assert svc.choose().name == "v1"  # everyone else stays on blue
    assert header[16:] not in str([(s.name, s.detail) for s in deployer.journal.steps(active.id)])
    await asyncio.sleep(0.1)
    assert not active.task.done()
    deployer.signals_of("web").signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded"
    assert [p.name for p in router.table.services["web"].pools] == ["v2"]
    assert router.table.services["web"].override is None  # the preview's secret ended with it


async def test_a_service_with_its_own_override_keeps_it_in_the_preview_and_after(world):
    router, backend, deployer, tables = world
    config = web(bluegreen=BlueGreenOptions(preview=True), override="trusted",
                 override_networks=("10.0.0.0/8",))
    await run(deployer, config, "app:v1", "bluegreen")
    assert router.table.services["web"].allowed_pool("v1", b"10.0.0.1") == "v1"
    active = deployer.deploy(config, "app:v2", "bluegreen")
    await wait_weights(router, {"v1": 100, "v2": 0})
    svc = router.table.services["web"]
    assert svc.allowed_pool("v2", b"10.1.1.1") == "v2" and svc.allowed_pool("v2", b"127.0.0.1") is None
    access = next(e for e in active.events.events if e["event"] == "preview_access")
    assert access["header"] == "X-Turnout-Pool: v2"
    deployer.signals_of("web").signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert router.table.services["web"].allowed_pool("v2", b"10.0.0.1") == "v2"


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


async def test_post_switch_verification_judges_against_the_old_version_before_the_switch(world):
    """Issue 18: 30 requests failing on any version rolled a blue-green back during its verification.
    After the switch the old set gets no traffic: the new one is judged against the old one's rate in
    the deploy before the switch (here: while the preview waits for promote)."""
    router, backend, deployer, tables = world
    config = web(verify=1.0, bluegreen=BlueGreenOptions(preview=True),
                 canary=CanaryOptions(min_requests=20, max_error_rate=0.05))
    await run(deployer, web(verify=0.0), "app:v1", "bluegreen")
    old = router.metrics.pool("web", "v1")
    for _ in range(1000):  # a clean past (over its whole life v1 would err in 2% with what follows)
        old.observe(200, 0.001)
    active = deployer.deploy(config, "app:v2", "bluegreen")
    await wait_weights(router, {"v1": 100, "v2": 0})
    for status in [500, 200] * 20:  # then a client makes half of all requests fail
        old.observe(status, 0.001)
    deployer.signals_of("web").signals.promote()
    while "verifying" not in [s.name for s in deployer.journal.steps(active.id)]:
        await asyncio.sleep(0.01)
    for status in [500, 200] * 15:  # ... and goes on after the switch
        router.metrics.pool("web", "v2").observe(status, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded", active.message


@pytest.mark.parametrize(("old_failing", "new_failing", "status"), [
    (0, 0, "succeeded"), (10, 10, "succeeded"), (10, 100, "rolled_back"), (0, 20, "rolled_back")])
async def test_post_switch_verification_with_the_old_lifetime_rate(world, old_failing, new_failing, status):
    """No baseline in the deploy's own window (nothing came before the switch): the old pool's rate over
    its life is the baseline."""
    router, backend, deployer, tables = world
    config = web(verify=1.0, canary=CanaryOptions(min_requests=20, max_error_rate=0.05))
    await run(deployer, web(verify=0.0), "app:v1", "bluegreen")
    for n in range(100):
        router.metrics.pool("web", "v1").observe(500 if n < old_failing else 200, 0.001)
    active = deployer.deploy(config, "app:v2", "bluegreen")
    while "verifying" not in [s.name for s in deployer.journal.steps(active.id)]:
        await asyncio.sleep(0.01)
    for n in range(100):
        router.metrics.pool("web", "v2").observe(500 if n < new_failing else 200, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == status, active.message


@pytest.mark.parametrize("version", ["v2\r\nX-Injected: 1", "v2\n", "v 2", "-v2", "a" * 58])
async def test_a_bad_version_is_refused_before_anything_happens(world, version):
    """Issue 18: a CR/LF in `--version` put headers on sticky responses and broke /metrics."""
    router, backend, deployer, tables = world
    with pytest.raises(ConfigError) as info:
        deployer.deploy(web(), "app:v2", "rolling", version)
    assert info.value.key == "version" and "--version" in str(info.value)
    with pytest.raises(ConfigError):  # from the image tag too (a tag may have 128 characters)
        deployer.deploy(web(), "app:" + "t" * 100, "rolling")
    assert not deployer.journal.history("web", 5) and not backend.calls and "web" not in deployer.active
    active = await run(deployer, web(), "app:v2", "rolling", version="v2.1_rc-1")  # the control
    assert active.status == "succeeded" and active.version == "v2.1_rc-1"


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
    from controller.engine.base import ContainerSpec

    stray = await backend.start(ContainerSpec(service="web", version="v9", image="app:v9", port=8080,
                                              deployment_id="d-999999", pool="v9"))
    # Ours (the journal recorded it) though no release holds it: what a failed deploy left behind.
    deployer.journal.record_container(stray.id, "web", "v9", "d-999999")
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
# ------------------------------------------------------------------ ab
def ab_config(**ab: object):
    from controller.config.overrides import with_overrides

    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=0.05, analysis_interval=0.02,
                                      min_requests=10))
    return with_overrides(config, **{"match": "header:X-Canary=always", "duration": "300ms", **ab})


async def wait_rules(router, names):
    while [r.name for r in router.table.services["web"].spec.rules] != names:
        await asyncio.sleep(0.01)


async def test_ab_routes_only_matches_to_the_new_version_then_promotes(world):
    router, backend, deployer, tables = world
    config = ab_config()
    await run(deployer, config, "app:v1", "ab")  # a first deploy: nothing to compare with, routed at once
    tables.clear()
    active = deployer.deploy(config, "app:v2", "ab")
    await wait_rules(router, ["ab"])
    spec = router.table.services["web"].spec
    assert {p.name: p.weight for p in spec.pools} == {"v1": 100, "v2": 0}
    assert spec.labels == {"stable": "v1", "canary": "v2"}
    assert router.table.services["web"].rule_pools[0].name == "v2"  # the rule reaches the weight-0 set
    for _ in range(20):  # what the proxy would count: matches answered by v2, the rest by v1
        router.metrics.pool("web", "v2").observe(200, 0.001)
        router.metrics.pool("web", "v1").observe(200, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded", active.message
    assert collapse(tables) == [{"v1": 100, "v2": 0}, {"v2": 100}]
    assert router.table.services["web"].spec.rules == ()  # the A/B rule left with the A/B phase
    steps = [s.name for s in deployer.journal.steps(active.id)]
    assert steps[steps.index("ab"):] == ["ab", "ab_judged", "switched", "drained", "old_removed", "completed"]
    assert deployer.configs["web"].ab.match is None  # --match was for that deploy only


async def test_ab_rolls_back_on_a_breach_of_the_matched_requests(world):
    router, backend, deployer, tables = world
    config = ab_config(duration="10s")
    await run(deployer, config, "app:v1", "ab")
    active = deployer.deploy(config, "app:v2", "ab")
    await wait_rules(router, ["ab"])
    for _ in range(20):
        router.metrics.pool("web", "v2").observe(500, 0.001)
        router.metrics.pool("web", "v1").observe(200, 0.001)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "rolled_back" and "error rate" in active.message, active.message
    spec = router.table.services["web"].spec
    assert [p.name for p in spec.pools] == ["v1"] and spec.rules == ()
    assert not [c for c in backend.containers.values() if c.version == "v2"]


async def test_ab_without_enough_matches_is_not_promoted(world):
    router, backend, deployer, tables = world
    config = ab_config()
    await run(deployer, config, "app:v1", "ab")
    active = await run(deployer, config, "app:v2", "ab")
    assert active.status == "failed" and "fewer than min_requests" in active.message, active.message
    assert [p.name for p in router.table.services["web"].pools] == ["v1"]


async def test_ab_hands_on_to_the_canary_keeping_its_rule_until_the_switch(world):
    router, backend, deployer, tables = world
    config = ab_config(then="canary")
    await run(deployer, config, "app:v1", "ab")
    tables.clear()
    active = await run(deployer, config, "app:v2", "ab")
    assert active.status == "succeeded", active.message
    assert collapse(tables) == [{"v1": 100, "v2": 0}, {"v1": 50, "v2": 50}, {"v2": 100}]


async def test_ab_service_rules_stay_after_the_ab_rule(world):
    from controller.config.overrides import rules_from_flags

    router, backend, deployer, tables = world
    config = replace(ab_config(), rules=rules_from_flags([["q", "query:a=1", "stable"]]))
    await run(deployer, config, "app:v1", "ab")
    active = deployer.deploy(config, "app:v2", "ab")
    await wait_rules(router, ["ab", "q"])
    active.signals.promote()  # ends the A/B window at once: promoted, judged or not
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded", active.message
    assert [r.name for r in router.table.services["web"].spec.rules] == ["q"]


async def test_ab_without_a_match_is_refused_before_anything_starts(world):
    router, backend, deployer, tables = world
    await run(deployer, web(), "app:v1", "bluegreen")
    from controller.errors import UsageError

    with pytest.raises(UsageError, match="needs --match"):
        deployer.deploy(web(), "app:v2", "ab")
    assert "web" not in deployer.active


async def test_canary_rolls_back_when_mirrored_answers_differ_too_often(world):
    from proxy.specs import MirrorSpec

    router, backend, deployer, tables = world
    config = web(canary=CanaryOptions(steps=(50, 100), step_pause=5.0, analysis_interval=0.02,
                                      min_requests=10, max_diff_rate=0.1), mirror=MirrorSpec())
    await run(deployer, config, "app:v1", "canary")
    active = deployer.deploy(config, "app:v2", "canary")
    await wait_weights(router, {"v1": 50, "v2": 50})
    report = router.mirrors["web"].report
    for i in range(20):  # what the mirror's workers would record: 3 in 4 copies differ in price
        report.record("GET /items/{id}", {"$.price": ("10", "12")} if i % 4 else {})
    await asyncio.wait_for(active.task, 10)
    assert active.status == "rolled_back" and "diff rate 75.0%" in active.message, active.message
    assert [p.name for p in router.table.services["web"].pools] == ["v1"]
