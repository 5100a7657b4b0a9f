"""The Swarm engine (controller/engine/swarm.py) against a fake manager: slots are one-replica services
labelled turnout.*, published in host mode, changed only through `Service.scale`, found by polling their
tasks, and a failed slot says why from its task's `Status.Err`. Also `[engine]` in turnout.toml."""

from __future__ import annotations

import re

import pytest

from controller import labels as lbl
from controller.config.model import ConfigError, EngineConfig
from controller.config.reader import parse_config
from controller.engine.base import ContainerSpec, make_engine
from controller.engine.docker import DockerBackend
from controller.engine.swarm import SwarmBackend, current_task, service_name
from controller.errors import DockerError, ImageNotFound
from helpers.fake_swarm import NODES, FakeSwarm


def spec(**overrides: object) -> ContainerSpec:
    values: dict[str, object] = dict(service="web", version="v1", image="app:v1", port=8080,
                                     deployment_id="d1", pool="blue")
    return ContainerSpec(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def swarm() -> FakeSwarm:
    return FakeSwarm()


@pytest.fixture
def engine(swarm: FakeSwarm) -> SwarmBackend:
    return SwarmBackend(owner="me", client=swarm, extra_labels={"turnout.test-run": "t"})


async def test_a_slot_is_a_one_replica_service_published_in_host_mode(engine, swarm):
    slot = await engine.start(spec(env={"A": "1"}, command=("serve", "--fast"),
                                   volumes=("/srv/data:/data:ro",), stop_timeout=3, init=True,
                                   mem_limit="64m", cpus=0.5, pids_limit=100,
                                   cap_drop=("ALL",), cap_add=("CHOWN",), spec_hash="h1"))
    kwargs = swarm.created[slot.id]
    assert (kwargs["mode"].mode, kwargs["mode"].replicas) == ("replicated", 1)
    assert kwargs["endpoint_spec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}]
    assert kwargs["restart_policy"]["Condition"] == "none"  # Turnout replaces slots, Swarm does not
    for labels in (kwargs["labels"], kwargs["container_labels"]):
        assert lbl.is_ours(labels, "me")
        assert (labels[lbl.SERVICE], labels[lbl.VERSION], labels[lbl.POOL], labels[lbl.PORT]) == (
            "web", "v1", "blue", "8080")
        assert (labels[lbl.SPEC_HASH], labels["turnout.test-run"]) == ("h1", "t")
    assert (kwargs["env"], kwargs["args"]) == (["A=1"], ["serve", "--fast"])
    assert kwargs["mounts"] == [{"Target": "/data", "Source": "/srv/data", "Type": "bind", "ReadOnly": True}]
    assert (kwargs["stop_grace_period"], kwargs["init"]) == (3_000_000_000, True)
    assert kwargs["resources"]["Limits"] == {"MemoryBytes": 64 * 1024 * 1024, "NanoCPUs": 500_000_000,
                                             "Pids": 100}
    assert (kwargs["cap_drop"], kwargs["cap_add"]) == (["ALL"], ["CHOWN"])
    assert kwargs["log_driver"] == "json-file" and kwargs["log_driver_options"]["max-size"] == "10m"
    assert re.fullmatch(r"turnout-web-v1-[0-9a-f]{6}", kwargs["name"])


def test_service_names_are_valid_swarm_names():
    name = service_name("My_App.web", "1.2.3_rc/1")
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", name) and len(name) <= 63


async def test_the_address_is_the_tasks_node_and_host_port_once_it_runs(engine, swarm):
    slot = await engine.start(spec())
    assert (slot.state, slot.address) == ("created", None)  # readiness polls until the task runs
    assert (await engine.inspect(slot.id)).address is None
    port = swarm.run(slot.id)
    seen = await engine.inspect(slot.id)
    assert (seen.state, seen.address) == ("running", f"10.0.0.11:{port}")
    assert (seen.service, seen.version, seen.pool, seen.image) == ("web", "v1", "blue", "app:v1")


async def test_a_missing_image_fails_at_start_and_creates_nothing(engine, swarm):
    with pytest.raises(ImageNotFound):
        await engine.start(spec(image="app:nope"))
    assert swarm.specs == {}


async def test_a_failed_task_says_why_from_its_status_err(engine, swarm):
    slot = await engine.start(spec())
    swarm.logs[slot.id] = ["starting", "boom"]
    swarm.fail(slot.id, 3)
    seen = await engine.inspect(slot.id)
    assert (seen.state, seen.exit_code, seen.address) == ("exited", 3, None)
    assert await engine.logs_tail(slot.id) == "starting\nboom\ntask failed: task: non-zero exit (3)"


async def test_a_rejected_task_is_dead_with_its_error(engine, swarm):
    slot = await engine.start(spec())
    swarm.reject(slot.id, "No such image: app:v1")
    assert (await engine.inspect(slot.id)).state == "dead"
    assert await engine.logs_tail(slot.id) == "task rejected: No such image: app:v1"


async def test_stop_scales_to_zero_and_waits_for_the_task_to_end(engine, swarm):
    slot = await engine.start(spec())
    swarm.run(slot.id)
    swarm.stop_exit = 137  # the app ignored SIGTERM: killed after the grace
    stopped = await engine.stop(slot.id, timeout=1)
    assert (stopped.state, stopped.exit_code, stopped.running) == ("exited", 137, False)
    assert ("scale", slot.id, 0) in swarm.calls
    assert not [c for c in swarm.calls if c[0] == "update"]  # never a whole-spec update


async def test_stop_ends_when_swarm_deleted_the_ended_task_before_it_was_seen(engine, swarm, monkeypatch):
    monkeypatch.setattr("controller.engine.swarm.STOP_SLACK", 0.5)  # the old code polled until this ran out
    slot = await engine.start(spec())
    swarm.run(slot.id)
    swarm.reap_at_once = True
    stopped = await engine.stop(slot.id, timeout=0)
    assert (stopped.state, stopped.exit_code, stopped.address) == ("exited", None, None)


async def test_restart_scales_back_to_one_a_new_task_on_a_new_port(engine, swarm):
    slot = await engine.start(spec())
    first = swarm.run(slot.id)
    await engine.stop(slot.id)
    restarted = await engine.restart(slot.id)
    assert ("scale", slot.id, 1) in swarm.calls and restarted.state == "created"
    second = swarm.run(slot.id)
    seen = await engine.inspect(slot.id)
    assert seen.running and seen.address.endswith(f":{second}") and second != first


async def test_restart_waits_for_the_new_task_while_the_stopped_one_is_still_the_newest(engine, swarm):
    slot = await engine.start(spec())
    swarm.run(slot.id)
    await engine.stop(slot.id)
    swarm.orchestrator_lag = 3
    restarted = await engine.restart(slot.id)
    assert restarted.state == "created" and restarted.exit_code is None  # not the stopped task's "exited"


async def test_a_slot_on_a_lost_node_is_dead_though_its_task_still_reads_running(engine, swarm, monkeypatch):
    monkeypatch.setattr("controller.engine.swarm.NODE_STATE_TTL", 0.0)
    slot = await engine.start(spec())
    swarm.run(slot.id)
    node = swarm.current(slot.id)["NodeID"]
    assert (await engine.inspect(slot.id)).running
    swarm.lost.add(node)  # its engine stopped: the manager marks the node down, the task as it was
    assert swarm.current(slot.id)["Status"]["State"] == "running"
    seen = await engine.inspect(slot.id)
    assert (seen.state, seen.running, seen.address) == ("dead", False, None)
    assert [c.state for c in await engine.list()] == ["dead"]


async def test_stopping_a_slot_on_a_lost_node_does_not_wait_for_its_task(engine, swarm, monkeypatch):
    monkeypatch.setattr("controller.engine.swarm.NODE_STATE_TTL", 0.0)
    monkeypatch.setattr("controller.engine.swarm.STOP_SLACK", 0.5)  # else: polled until this ran out
    slot = await engine.start(spec())
    swarm.run(slot.id)
    swarm.lost.add(swarm.current(slot.id)["NodeID"])
    stopped = await engine.stop(slot.id, timeout=0)
    assert stopped.state == "dead" and ("scale", slot.id, 0) in swarm.calls


async def test_restarting_a_slot_on_a_lost_node_replaces_its_task_on_a_ready_node(engine, swarm, monkeypatch):
    monkeypatch.setattr("controller.engine.swarm.NODE_STATE_TTL", 0.0)
    slot = await engine.start(spec())
    swarm.run(slot.id)
    lost = swarm.current(slot.id)["NodeID"]
    swarm.lost.add(lost)
    restarted = await engine.restart(slot.id)  # Swarm itself never replaces it (restart condition none)
    assert [c[2] for c in swarm.calls if c[:2] == ("scale", slot.id)] == [0, 1]
    assert restarted.state == "created" and swarm.current(slot.id)["NodeID"] != lost
    port = swarm.run(slot.id)
    seen = await engine.inspect(slot.id)
    assert seen.running and seen.address == f"{NODES[swarm.current(slot.id)['NodeID']]}:{port}"


def test_the_current_task_is_the_newest_even_when_go_trims_the_nanoseconds():
    older = {"ID": "old", "CreatedAt": "2026-01-01T00:00:01.123456789Z"}
    newer = {"ID": "new", "CreatedAt": "2026-01-01T00:00:01.5Z"}
    assert current_task([newer, older])["ID"] == current_task([older, newer])["ID"] == "new"
    assert current_task([]) is None


async def test_only_our_services_are_listed_stopped_or_removed(engine, swarm):
    ours = await engine.start(spec())
    swarm.run(ours.id)
    stopped = await engine.start(spec(version="v2"))
    theirs = await SwarmBackend(owner="someone-else", client=swarm).start(spec())
    assert [c.id for c in await engine.list()] == [ours.id, stopped.id]
    assert [c.id for c in await engine.list("web", all=False)] == [ours.id]  # running only
    wanted = {"label": ["turnout.managed=true", "turnout.owner=me", "turnout.service=web"]}
    assert ("list", wanted) in swarm.calls
    for action in (engine.stop, engine.remove, engine.restart):
        with pytest.raises(DockerError, match="owned by 'someone-else'"):
            await action(theirs.id)
    assert theirs.id in swarm.specs


async def test_removing_a_slot_that_is_gone_is_a_no_op(engine, swarm):
    slot = await engine.start(spec())
    await engine.remove(slot.id)
    await engine.remove(slot.id)
    assert swarm.specs == {}


async def test_exec_hooks_are_refused_with_the_reason(engine):
    with pytest.raises(DockerError, match=r"exec hooks are not supported .*swarm.*oneoff or http hook"):
        await engine.exec("x", ["true"], {})


async def test_images_are_looked_up_on_the_manager(engine):
    assert await engine.image_exists("app:v1") and not await engine.image_exists("app:nope")
    assert (await engine.image_labels("app:v2")) == {"turnout.schema": "1-2"}
    with pytest.raises(ImageNotFound):
        await engine.image_id("app:nope")


# -- [engine] in turnout.toml -------------------------------------------------------------------------

def test_the_engine_defaults_to_docker_on_this_host():
    assert parse_config({}).engine == EngineConfig(kind="docker", host=None)
    assert isinstance(make_engine(EngineConfig(), "me"), DockerBackend)


def test_swarm_through_a_manager():
    config = parse_config({"engine": {"kind": "swarm", "host": "unix:///run/turnout-lab/n1.sock"}})
    assert config.engine == EngineConfig(kind="swarm", host="unix:///run/turnout-lab/n1.sock")
    assert isinstance(make_engine(config.engine, "me"), SwarmBackend)


@pytest.mark.parametrize(("table", "key", "problem"), [
    ({"kind": "kubernetes"}, "engine.kind", "must be one of docker, swarm, got 'kubernetes'"),
    ({"kind": 1}, "engine.kind", "must be a non-empty string"),
    ({"host": "/var/run/docker.sock"}, "engine.host", "must be an engine API address starting with unix://"),
    ({"manager": "x"}, "engine.manager", "unknown key"),
])
def test_bad_engine_values_name_the_key(table, key, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        parse_config({"engine": table}, source=None)
    assert info.value.key == key
