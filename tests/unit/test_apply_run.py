"""`turnout apply` carried out (controller/apply/run.py) against the fake Docker backend: the same file
twice restarts nothing, a rebuilt tag is a release, scaling and routing touch no running container, prune
removes only what apply created, and every refusal comes before anything changed."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import controller.operations as operations
from controller.apply.run import Applier, ApplyBusy, ApplyOptions, finish
from controller.config.model import ConfigError
from controller.config.overrides import service_from_flags
from controller.config.reader import parse_config
from controller.deployer import Deployer
from controller.errors import DeployInProgress, UsageError
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router


@pytest.fixture
async def world(tmp_path, monkeypatch):
    router = Router(drain_timeout=1.0)
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(backend, ProxyControl(router), journal)
    yield deployer, backend, Applier(deployer)
    await deployer.close()
    journal.close()


def services(**per_service):
    """`web = {...}` -> the services of a turnout.toml with those tables (verify off: no waiting)."""
    data = {name: {"host": f"{name}.localhost",
                   **({} if "upstreams" in table else {"port": 8080, "verify": 0}), **table}
            for name, table in per_service.items()}
    return parse_config({"services": data}).services


async def apply(applier, configs, **options):
    run = await applier.apply(configs, ApplyOptions(**options))
    return await asyncio.wait_for(finish(run), 10)


def actions(run):
    return {o.action.service: (o.action.action, o.status) for o in run.outcomes}


def ids(backend, version=None):
    return {c.id for c in backend.running(version)}


async def test_the_same_file_twice_restarts_nothing(world):
    deployer, backend, applier = world
    file = services(web={"image": "app:v1", "replicas": 2}, api={"image": "api:v1"})
    first = await apply(applier, file)
    assert actions(first) == {"web": ("+", "succeeded"), "api": ("+", "succeeded")} and first.succeeded
    before = list(backend.calls)
    again = await apply(applier, file)
    assert actions(again) == {"web": ("=", "unchanged"), "api": ("=", "unchanged")}
    assert again.succeeded and not again.plan.changed
    assert backend.calls == before  # nothing started, stopped or removed


async def test_a_rebuilt_tag_is_a_release(world):
    deployer, backend, applier = world
    file = services(web={"image": "app:v1", "replicas": 2})
    await apply(applier, file)
    old = ids(backend)
    backend.rebuilt["app:v1"] = 1  # `docker build -t app:v1` again: a new image ID
    run = await apply(applier, file)
    assert actions(run) == {"web": ("~release", "succeeded")}
    assert ids(backend) and not ids(backend) & old
    assert not (await apply(applier, file)).plan.changed  # and now it is the one running


async def test_a_new_image_deploys_with_the_file_strategy_and_keeps_the_file_settings(world):
    deployer, backend, applier = world
    await apply(applier, services(web={"image": "app:v1"}))
    file = services(web={"image": "app:v2", "strategy": "canary",
                         "canary": {"steps": [50, 100], "step_pause": "10ms"}})
    run = await apply(applier, file)
    assert actions(run) == {"web": ("~release", "succeeded")}
    assert run.outcomes[0].deployment.strategy == "canary"
    assert deployer.configs["web"] == file["web"]  # not the options the service had before
    assert deployer.releases["web"].version == "v2"
    assert not (await apply(applier, file)).plan.changed


async def test_scaling_adds_and_retires_without_replacing(world):
    deployer, backend, applier = world
    await apply(applier, services(web={"image": "app:v1", "replicas": 2}))
    first = ids(backend)
    run = await apply(applier, services(web={"image": "app:v1", "replicas": 3}))
    assert actions(run) == {"web": ("~scale", "succeeded")}
    assert first < ids(backend) and len(ids(backend)) == 3
    assert len(deployer.proxy.pools("web")["v1"].upstreams) == 3
    run = await apply(applier, services(web={"image": "app:v1", "replicas": 1}))
    assert actions(run) == {"web": ("~scale", "succeeded")}
    assert len(ids(backend)) == 1 and ids(backend) < first | ids(backend)
    assert len(deployer.proxy.pools("web")["v1"].upstreams) == 1
    assert deployer.journal.service_state("web")["config"]["replicas"] == 1


async def test_a_routing_change_touches_no_container(world):
    deployer, backend, applier = world
    await apply(applier, services(web={"image": "app:v1"}))
    calls = list(backend.calls)
    run = await apply(applier, services(web={"image": "app:v1", "host": "www.localhost",
                                             "drain_timeout": "3s"}))
    assert actions(run) == {"web": ("~routing", "succeeded")}
    assert backend.calls == calls
    spec = deployer.proxy.router.specs["web"]
    assert spec.hosts == ("www.localhost",) and [p.name for p in spec.pools] == ["v1"]
    assert deployer.configs["web"].drain_timeout == 3.0
    assert deployer.journal.history("web")[0].strategy == "routing"


async def test_static_services_are_added_and_rerouted(world):
    deployer, backend, applier = world
    run = await apply(applier, services(api={"upstreams": ["127.0.0.1:9000"]}))
    assert actions(run) == {"api": ("+", "succeeded")}
    assert deployer.proxy.pools("api")["static"].upstreams == ("127.0.0.1:9000",)
    run = await apply(applier, services(api={"upstreams": ["127.0.0.1:9001"]}))
    assert actions(run) == {"api": ("~routing", "succeeded")}
    assert deployer.proxy.pools("api")["static"].upstreams == ("127.0.0.1:9001",)
    assert deployer.journal.service_state("api")["config"]["upstreams"] == ["127.0.0.1:9001"]


async def test_prune_removes_only_what_apply_created_and_only_when_asked(world):
    deployer, backend, applier = world
    await apply(applier, services(web={"image": "app:v1"}, old={"image": "old:v1", "replicas": 2}))
    manual = service_from_flags("manual", "app:v1", port=8080, host="manual.localhost")
    by_hand = deployer.deploy(manual, "app:v1")
    await asyncio.wait_for(by_hand.task, 10)
    remaining = services(web={"image": "app:v1"})

    kept = await apply(applier, remaining)
    assert actions(kept) == {"web": ("=", "unchanged"), "old": ("=", "unchanged"),
                             "manual": ("=", "unchanged")}
    assert backend.running("v1") and "old" in deployer.releases

    pruned = await apply(applier, remaining, prune=True)
    assert actions(pruned) == {"web": ("=", "unchanged"), "old": ("-", "succeeded"),
                               "manual": ("=", "unchanged")}
    assert {c.service for c in backend.containers.values()} == {"web", "manual"}
    assert "old" not in deployer.proxy.router.specs and "old" not in deployer.configs
    assert deployer.journal.service_state("old") is None
    assert deployer.journal.history("old")[0].strategy == "prune"
    # Added again later it is a new service of apply's, and pruned again.
    await apply(applier, services(web={"image": "app:v1"}, old={"image": "old:v1"}))
    assert actions(await apply(applier, remaining, prune=True))["old"] == ("-", "succeeded")


async def test_an_empty_file_is_refused_unless_allowed(world):
    deployer, backend, applier = world
    await apply(applier, services(web={"image": "app:v1"}))
    with pytest.raises(UsageError, match="no services"):
        await applier.apply({}, ApplyOptions(prune=True))
    assert "web" in deployer.releases
    run = await apply(applier, {}, allow_empty=True, prune=True)
    assert actions(run) == {"web": ("-", "succeeded")}


async def test_refusals_change_nothing(world):
    deployer, backend, applier = world
    backend.missing_images.add("app:v9")
    with pytest.raises(ConfigError, match=r"services\.web\.image: image 'app:v9' is not on this Docker host"):
        await applier.apply(services(web={"image": "app:v9"}, api={"image": "api:v1"}), ApplyOptions())
    with pytest.raises(ConfigError, match=r"services\.web\.image: its tag names the version"):
        await applier.apply(services(web={"image": "app:-bad"}), ApplyOptions())
    with pytest.raises(ConfigError, match=r"services\.api\.hooks\.migrate\.run: host command hooks"):
        allowed_here = parse_config({"proxy": {"allow_host_hooks": True}, "services": {"api": {
            "image": "api:v1", "port": 8080, "hooks": {"migrate": {"run": ["x"]}}}}})
        await applier.apply(allowed_here.services, ApplyOptions())
    with pytest.raises(ConfigError, match=r"services\.web\.image: required by apply"):
        await applier.apply({"web": service_from_flags("web", None, port=8080)}, ApplyOptions())
    assert backend.calls == [] and not deployer.active and not deployer.journal.history("api")


async def test_a_deploy_in_progress_refuses_unless_wait(world):
    deployer, backend, applier = world
    config = replace(service_from_flags("web", "app:v1", port=8080), verify=0.0,
                     canary=replace(service_from_flags("web", "app:v1", port=8080).canary, step_pause=None))
    await asyncio.wait_for(deployer.deploy(config, "app:v1").task, 10)
    running = deployer.deploy(config, "app:v2", "canary")  # waits at its first step for promote
    while "weight" not in [s.name for s in deployer.journal.steps(running.id)]:
        await asyncio.sleep(0.01)
    file = services(web={"image": "app:v3"})
    with pytest.raises(DeployInProgress, match=running.id):
        await applier.apply(file, ApplyOptions())
    waiting = asyncio.ensure_future(applier.apply(file, ApplyOptions(wait=True)))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # still waiting for the deploy
    running.signals.promote()
    run = await asyncio.wait_for(finish(await asyncio.wait_for(waiting, 10)), 10)
    assert running.status == "succeeded" and actions(run) == {"web": ("~release", "succeeded")}
    assert deployer.releases["web"].version == "v3"


async def test_one_apply_at_a_time(world):
    deployer, backend, applier = world
    first = await applier.apply(services(web={"image": "app:v1"}), ApplyOptions())
    with pytest.raises(ApplyBusy):
        await applier.apply(services(web={"image": "app:v1"}), ApplyOptions())
    await asyncio.wait_for(finish(first), 10)
    assert not (await apply(applier, services(web={"image": "app:v1"}))).plan.changed


async def test_a_dry_run_changes_nothing(world):
    deployer, backend, applier = world
    run = await apply(applier, services(web={"image": "app:v1"}), dry_run=True)
    assert run.plan.changed and run.outcomes == [] and backend.calls == []
    assert [e["event"] for e in run.events.events] == ["plan"]


async def test_a_failed_change_is_reported_and_the_others_go_on(world):
    deployer, backend, applier = world
    await apply(applier, services(web={"image": "app:v1"}))
    backend.failing_images.add("app:v2")
    run = await apply(applier, services(web={"image": "app:v2"}, api={"image": "api:v1"}))
    assert actions(run) == {"web": ("~release", "failed"), "api": ("+", "succeeded")}
    assert not run.succeeded and "did not become healthy" in run.outcomes[1].message
    assert deployer.releases["web"].version == "v1"
    applied = run.events.events[-1]
    assert applied["event"] == "applied" and applied["succeeded"] is False
    relayed = [e for e in run.events.events if e["event"] == "service"]
    assert {e["service"] for e in relayed} == {"web", "api"}
    assert {e["of"]["event"] for e in relayed} == {"step", "finished"}


async def test_hook_steps_are_relayed_with_their_service(world):
    """A hook's steps carry their own `kind` (oneoff, ...): the relay keeps each change's event whole."""
    deployer, backend, applier = world
    run = await apply(applier, services(web={"image": "app:v1", "hooks": {"migrate": {"oneoff": ["/m"]}}}))
    assert actions(run) == {"web": ("+", "succeeded")}
    hooks = [e["of"] for e in run.events.events if e["event"] == "service" and e["of"].get("kind")]
    assert [(h["step"], h["kind"]) for h in hooks] == [("hook_started", "oneoff"),
                                                        ("hook_finished", "oneoff")]
