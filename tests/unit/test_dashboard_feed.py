"""The dashboard's feed (controller/dashboard/feed.py): a snapshot first, then numbered events; resume
with Last-Event-ID; samples of the per-pool counters; deploy events and history. No sockets."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

import controller.operations as operations
from controller.config.model import CanaryOptions, ServiceConfig
from controller.config.overrides import service_from_flags
from controller.dashboard.feed import BUFFER_EVENTS, Feed
from controller.deployer import ActiveDeployment, Deployer
from controller.events import EventLog
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from controller.signals import Signals
from helpers.fake_docker import FakeBackend
from proxy.router import Router
from proxy.specs import PoolSpec, ServiceSpec


@pytest.fixture
async def world(tmp_path, monkeypatch):
    router = Router(drain_timeout=1.0)
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(backend, ProxyControl(router), journal)
    static = ServiceConfig("api", upstreams=("127.0.0.1:9001",), health=None, hosts=("api.localhost",))
    deployer.configs["api"] = static
    deployer.proxy.install_static(static)
    feed = Feed(router, deployer, interval=3600)  # samples only when a test takes one
    feed.start()
    yield router, deployer, feed
    await feed.stop()
    await deployer.close()
    journal.close()


async def take(follower, n: int) -> list:
    return [await asyncio.wait_for(anext(follower), 5) for _ in range(n)]


async def test_a_new_reader_gets_a_snapshot_then_live_events(world):
    router, deployer, feed = world
    follower = feed.follow()
    [snapshot] = await take(follower, 1)
    assert snapshot.kind == "snapshot"
    data = json.loads(snapshot.data)
    assert data["services"]["api"]["pools"][0]["upstreams"][0]["address"] == "127.0.0.1:9001"
    assert data["history"] == {"api": []}
    feed.sample()
    [tick] = await take(follower, 1)
    assert tick.kind == "tick" and tick.seq == snapshot.seq + 1
    await follower.aclose()


async def test_last_event_id_resumes_with_exactly_what_was_missed(world):
    router, deployer, feed = world
    seen = [feed.publish("tick", n=i) for i in range(5)]
    missed = [feed.publish("tick", n=i) for i in range(5, 8)]
    follower = feed.follow(seen[-1].id)
    assert [e.id for e in await take(follower, 3)] == [e.id for e in missed]
    later = feed.publish("tick", n=8)
    assert (await take(follower, 1))[0].id == later.id
    await follower.aclose()


@pytest.mark.parametrize("last_id", ["", "nonsense", "deadbeef-3", "{run}-999"])
async def test_an_id_this_run_cannot_resume_gets_a_snapshot(world, last_id):
    router, deployer, feed = world
    feed.publish("tick")
    follower = feed.follow(last_id.format(run=feed.run))
    [first] = await take(follower, 1)
    assert first.kind == "snapshot" and first.id == f"{feed.run}-{feed.seq}"
    await follower.aclose()


async def test_a_reader_too_far_behind_gets_a_fresh_snapshot(world):
    router, deployer, feed = world
    old = feed.publish("tick")
    for _ in range(BUFFER_EVENTS + 5):
        feed.publish("tick")
    follower = feed.follow(old.id)
    [first] = await take(follower, 1)
    assert first.kind == "snapshot"
    await follower.aclose()


async def test_a_sample_gives_rates_share_and_p99_per_pool(world):
    router, deployer, feed = world
    router.set_service(ServiceSpec("web", (PoolSpec("v1", 80, ("127.0.0.1:9101",)),
                                           PoolSpec("v2", 20, ("127.0.0.1:9102",)))))
    feed.sample()  # the window starts here
    for _ in range(30):
        router.metrics.pool("web", "v1").observe(200, 0.003)
    for _ in range(9):
        router.metrics.pool("web", "v2").observe(200, 0.2)
    router.metrics.pool("web", "v2").observe(503, 0.2, proxy_made=True)
    follower = feed.follow(f"{feed.run}-{feed.seq}")
    feed.sample()
    [tick] = await take(follower, 1)
    data = json.loads(tick.data)
    v1, v2 = data["rates"]["web"]["v1"], data["rates"]["web"]["v2"]
    assert v1["share"] == 0.75 and v2["share"] == 0.25
    assert v1["rps"] == pytest.approx(3 * v2["rps"]) and v2["rps"] > 0
    assert v2["error_rate"] == 0.1 and v1["errors"] == 0
    assert v1["p99"] == 0.005 and v2["p99"] == 0.25  # histogram bucket bounds
    assert [p["weight"] for p in data["services"]["web"]["pools"]] == [80, 20]
    await follower.aclose()


async def test_swaps_become_one_table_event_with_the_last_weights(world):
    router, deployer, feed = world
    router.set_service(ServiceSpec("web", (PoolSpec("v1", 100, ("127.0.0.1:9101",)),
                                           PoolSpec("v2", 0, ("127.0.0.1:9102",)))))
    follower = feed.follow(f"{feed.run}-{feed.seq}")
    router.set_weights("web", {"v1": 50, "v2": 50})
    router.set_weights("web", {"v1": 0, "v2": 100})
    [table] = await take(follower, 1)
    assert table.kind == "table"
    pools = json.loads(table.data)["services"]["web"]["pools"]
    assert {p["name"]: p["weight"] for p in pools} == {"v1": 0, "v2": 100}
    await follower.aclose()


async def test_a_deploy_is_published_step_by_step_then_its_history(world):
    router, deployer, feed = world
    config = replace(service_from_flags("web", "app:v1", port=8080, replicas=1), verify=0.0,
                     canary=CanaryOptions(steps=(50, 100), step_pause=0.01, analysis_interval=0.01))
    first = deployer.deploy(config, "app:v1", "canary")
    await asyncio.wait_for(first.task, 5)
    follower = feed.follow(f"{feed.run}-{feed.seq}")
    active = deployer.deploy(config, "app:v2", "canary")
    feed.sample()  # a sample notices the new deploy and follows its events from the first
    kinds: list[tuple[str, str]] = []
    while ("history", "") not in kinds:
        event = (await take(follower, 1))[0]
        data = json.loads(event.data)
        if event.kind == "deploy" and data["deployment"]["id"] == active.id:  # (the first one too)
            kinds.append(("deploy", data["event"].get("step") or data["event"]["event"]))
        elif event.kind == "history" and data["deployments"][0]["status"] == "succeeded":
            kinds.append(("history", ""))  # the journal's newest row: this deploy, finished
            assert data["deployments"][0]["id"] == active.id
    steps = [k for _, k in kinds]
    assert steps[0] == "started" and steps[-2:] == ["finished", ""]
    assert steps.index("plan") < steps.index("weight") < steps.index("switched") < steps.index("completed")
    snapshot = feed.snapshot()
    assert snapshot["deployments"]["web"]["id"] == active.id
    assert [m["label"] for m in snapshot["markers"]][-1] == "succeeded"
    await follower.aclose()


async def test_stop_ends_every_reader(world):
    router, deployer, feed = world
    follower = feed.follow()
    await take(follower, 1)
    reader = asyncio.create_task(take(follower, 1))
    await asyncio.sleep(0)
    await feed.stop()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reader, 5)


async def test_a_preview_secret_never_reaches_the_dashboard(world):
    """`preview_access` carries a blue-green preview's secret for the operator; viewers see its name only."""
    router, deployer, feed = world
    active = ActiveDeployment("d-000009", "web", "bluegreen", "v2", "app:v2", EventLog(), Signals())
    active.events.emit("step", step="started")
    active.events.emit("preview_access", header="X-Turnout-Pool: v2:s3cret", cookie="turnout-pool=v2:s3cret")
    deployer.active["web"] = active
    follower = feed.follow()
    events = await take(follower, 1)
    feed.sample()
    events += await take(follower, 3)  # the tick, then the deploy's two events
    await active.events.close()
    assert [e.kind for e in events] == ["snapshot", "tick", "deploy", "deploy"]
    published = "".join(e.data for e in events) + json.dumps(feed.snapshot())
    assert "s3cret" not in published and "preview_access" in published
    await follower.aclose()


async def test_certificates_of_the_https_listener_are_in_snapshots_and_ticks(world):
    router, deployer, _ = world
    served = {"listen": "127.0.0.1:8443", "default": "reject", "acme": None,
              "certificates": [{"name": "web", "hosts": ["web.example"], "source": "static",
                                "issuer": "CN=ca", "not_after": "2027-01-01T00:00:00+00:00",
                                "days_left": 31.0}],
              "errors": [{"file": "bad.crt", "error": "the key does not match the certificate"}]}
    feed = Feed(router, deployer, interval=3600, certificates=lambda: served)
    feed.start()
    try:
        follower = feed.follow()
        [snapshot] = await take(follower, 1)
        expected = {k: served[k] for k in ("listen", "certificates", "errors")}
        assert json.loads(snapshot.data)["certificates"] == expected
        served["certificates"][0]["days_left"] = 30.9  # a reload or the clock: the next tick says so
        feed.sample()
        [tick] = await take(follower, 1)
        assert json.loads(tick.data)["certificates"]["certificates"][0]["days_left"] == 30.9
        await follower.aclose()
    finally:
        await feed.stop()


async def test_without_an_https_listener_the_feed_says_none(world):
    _, _, feed = world
    follower = feed.follow()
    [snapshot] = await take(follower, 1)
    assert json.loads(snapshot.data)["certificates"] is None
    await follower.aclose()
