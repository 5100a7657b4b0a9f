"""The schema gate (controller/schema.py) through the deployer, against the fake Docker backend: a finished
contract sets a floor that refuses rollbacks below it (naming the deployment), an image is checked against
the current schema before it gets traffic, and a failure past the floor freezes the deploy until promote or
abort --force, across a daemon restart too."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import controller.operations as operations
import controller.recovery as recovery
from controller.config.model import Hook
from controller.config.overrides import service_from_flags
from controller.config.reader import parse_config
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from controller.recovery import recover
from controller.schema import Floor, SchemaRefused, SchemaState, frozen_reason, read_range
from helpers.fake_docker import FakeBackend
from proxy.router import Router

EXPAND = {"migrate": Hook(oneoff=("/app/migrate", "2")), "contract": Hook(oneoff=("/app/migrate", "3"))}


@pytest.fixture
async def world(tmp_path, monkeypatch):
    router = Router(drain_timeout=1.0)
    backend = FakeBackend()
    backend.labels = {"app:v1": {"turnout.schema": "1-2"}, "app:v2": {"turnout.schema": "2-3"},
                      "app:v3": {"turnout.schema": "3-3"}}
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    monkeypatch.setattr(recovery, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(backend, ProxyControl(router), journal)
    yield deployer, backend, journal
    await deployer.close()
    journal.close()


def web(hooks=None):
    config = service_from_flags("web", "app:v1", port=8080, replicas=2)
    return replace(config, verify=0.0, hooks=hooks or {})


async def run(deployer, config, image, strategy="bluegreen"):
    active = deployer.deploy(config, image, strategy)
    await asyncio.wait_for(active.task, 10)
    return active


async def until_frozen(active):
    async for event in active.events.follow():
        if event.get("step") == "frozen":
            return event
    raise AssertionError(f"ended without freezing: {active.status} {active.message}")


def routed(deployer):
    return {p.name: p.weight for p in deployer.proxy.pools("web").values()}


async def contracted(deployer):
    await run(deployer, web(), "app:v1")
    second = await run(deployer, web(EXPAND), "app:v2")
    assert second.status == "succeeded", second.message
    return second


# ------------------------------------------------------------------ the pure parts
def test_ranges_and_checks():
    assert read_range("2-3", "x") == (2, 3) and read_range("4", "x") == (4, 4)
    assert read_range(None, "x") is None
    for bad in ("3-2", "two", "1-2-3", ""):
        with pytest.raises(SchemaRefused, match="is not MIN-MAX"):
            read_range(bad, "img")
    state = SchemaState(current=3, since="d-000002", floor=Floor("d-000002", "v2", 3, ["v1"]))
    state.check_image("app:v3", (3, 4))
    state.check_image("app:old", None)  # no label: nothing to check
    with pytest.raises(SchemaRefused, match=r"reads schema 1-2 .* schema is 3 since deployment d-0+2"):
        state.check_image("app:v1", (1, 2))
    with pytest.raises(SchemaRefused, match=r"deployment d-000002 \(v2\) ran its contract hook"):
        state.check_rollback("v1", force=False)
    state.check_rollback("v1", force=True)
    state.check_rollback("v3", force=False)
    assert SchemaState.from_dict(state.describe()) == state


def test_frozen_reason_from_the_journalled_steps():
    assert frozen_reason([("started", {}), ("switched", {})]) is None
    assert frozen_reason([("hook_started", {"point": "migrate"}), ("hook_finished", {})]) is None
    assert "while the migrate hook ran" in frozen_reason([("hook_started", {"point": "migrate"})])
    assert frozen_reason([("restored", {}), ("hook_started", {"point": "on_failure"})]) is None
    assert frozen_reason([("frozen", {"reason": "why"})]) == "why"
    assert frozen_reason([("frozen", {"reason": "why"}), ("resolved", {})]) is None


# ------------------------------------------------------------------ through the deployer
async def test_a_finished_contract_sets_a_floor_that_refuses_older_rollbacks(world):
    deployer, backend, journal = world
    second = await contracted(deployer)
    schema = deployer.schema("web")
    assert (schema.current, schema.floor.deployment, schema.floor.below) == (3, second.id, ["v1"])
    with pytest.raises(SchemaRefused, match=f"deployment {second.id} \\(v2\\) ran its contract hook"):
        await deployer.rollback("web")
    with pytest.raises(SchemaRefused, match="older than that schema floor"):
        await deployer.rollback("web", "v1")
    assert routed(deployer) == {"v2": 100}
    forced = await deployer.rollback("web", force_past_migration=True)
    await asyncio.wait_for(forced.task, 10)
    assert forced.status == "succeeded" and routed(deployer) == {"v1": 100}


async def test_an_image_that_cannot_read_the_schema_gets_no_traffic(world):
    deployer, backend, journal = world
    await contracted(deployer)
    backend.labels["app:v9"] = {"turnout.schema": "5-6"}
    refused = await run(deployer, web(), "app:v9")
    assert refused.status == "failed" and "reads schema 5-6" in refused.message
    assert "but the schema is 3" in refused.message
    assert routed(deployer) == {"v2": 100} and not backend.running("v9")
    assert (await run(deployer, web(), "app:v3")).status == "succeeded"  # 3-3 reads it


async def test_a_failure_after_the_contract_freezes_until_promote(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    backend.oneoffs["/app/smoke"] = 1
    active = deployer.deploy(web({**EXPAND, "post_deploy": Hook(oneoff=("/app/smoke",))}), "app:v2",
                             "bluegreen")
    event = await asyncio.wait_for(until_frozen(active), 10)
    assert "contract hook of v2 finished" in event["reason"] and "post_deploy hook" in event["failure"]
    assert active.frozen and active.promotable and routed(deployer) == {"v2": 100}  # keeps serving
    assert journal.service_state("web")["stable"]["version"] == "v2"  # a restart routes it too
    active.signals.abort()  # refused by the API; here: ignored, it stays frozen
    await asyncio.sleep(0.05)
    assert not active.task.done()
    active.signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded" and "then promoted: v2 serves" in active.message
    assert routed(deployer) == {"v2": 100}


async def test_abort_force_rolls_a_frozen_deploy_back_past_the_floor(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    backend.oneoffs["/app/smoke"] = 1
    active = deployer.deploy(web({**EXPAND, "post_deploy": Hook(oneoff=("/app/smoke",))}), "app:v2",
                             "bluegreen")
    await asyncio.wait_for(until_frozen(active), 10)
    with pytest.raises(SchemaRefused, match="is frozen"):
        await deployer.rollback("web")
    active.signals.abort(force=True)
    await asyncio.wait_for(active.task, 10)
    assert active.status == "aborted" and "ended by abort --force: v1 serves" in active.message
    assert routed(deployer) == {"v1": 100} and len(backend.running("v1")) == 2
    assert not backend.running("v2")
    assert journal.service_state("web")["stable"]["version"] == "v1"


async def test_a_failed_contract_freezes(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1", "rolling")
    backend.oneoffs["/app/contract"] = 1
    hooks = {"contract": Hook(oneoff=("/app/contract",))}
    active = deployer.deploy(web(hooks), "app:v2", "rolling")
    event = await asyncio.wait_for(until_frozen(active), 10)
    assert event["reason"] == "the contract hook failed: the schema may be partly contracted"
    assert deployer.schema("web").floor is None  # a contract that did not finish sets no floor
    active.signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded"


async def test_a_frozen_deploy_is_frozen_again_after_a_restart(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    backend.oneoffs["/app/smoke"] = 1
    active = deployer.deploy(web({**EXPAND, "post_deploy": Hook(oneoff=("/app/smoke",))}), "app:v2",
                             "bluegreen")
    await asyncio.wait_for(until_frozen(active), 10)
    active.task.cancel()  # the daemon dies while frozen
    await asyncio.gather(active.task, return_exceptions=True)

    restarted = Deployer(backend, ProxyControl(Router(drain_timeout=1.0)), journal)
    try:
        outcome = await recover(restarted, parse_config({}))
        assert "frozen" in outcome["web"], outcome
        again = restarted.active["web"]
        assert again.frozen and routed(restarted) == {"v2": 100}
        again.signals.promote()
        await asyncio.wait_for(again.task, 10)
        assert again.status == "succeeded" and journal.get(active.id).status == "succeeded"
        assert routed(restarted) == {"v2": 100}
        assert restarted.schema("web").floor.deployment == active.id  # the floor survived
    finally:
        await restarted.close()
