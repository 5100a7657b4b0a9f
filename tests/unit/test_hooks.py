"""Deploy hooks (controller/hooks.py) run by the deployer against the fake Docker backend: each at its point
for every strategy, journalled with its result, their failures (abort / warn / timeout), host commands
only when allowed, none on a rollback; and recovery never runs a hook twice: it freezes the deploy."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

import controller.operations as operations
import controller.recovery as recovery
from controller.config.model import ConfigError, Hook
from controller.config.overrides import service_from_flags
from controller.config.reader import parse_config
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from controller.recovery import recover
from helpers.fake_docker import FakeBackend
from proxy.router import Router

ORDER = ["pre_deploy", "migrate", "pre_traffic", "post_switch", "contract", "post_deploy"]


@pytest.fixture
async def world(tmp_path, monkeypatch):
    router = Router(drain_timeout=1.0)
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    monkeypatch.setattr(recovery, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(backend, ProxyControl(router), journal)
    yield deployer, backend, journal
    await deployer.close()
    journal.close()


def web(hooks=None, **changes):
    config = service_from_flags("web", "app:v1", port=8080, replicas=2)
    return replace(config, verify=0.0, hooks=hooks or {},
                   canary=replace(config.canary, steps=(50, 100), step_pause=0.01), **changes)


def oneoff(*command, **options):
    return Hook(oneoff=tuple(command) or ("/app/hook",), **options)


async def run(deployer, config, image, strategy=None, **kwargs):
    active = deployer.deploy(config, image, strategy, **kwargs)
    await asyncio.wait_for(active.task, 10)
    return active


def steps(journal, active, name=None):
    return [(s.name, s.detail) for s in journal.steps(active.id) if name is None or s.name == name]


def points(journal, active):
    return [d["point"] for _, d in steps(journal, active, "hook_started")]


def routed(deployer):
    return {p.name: p.weight for p in deployer.proxy.pools("web").values()}


@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling", "canary"])
async def test_every_point_runs_once_in_order(world, strategy):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1", strategy)
    hooks = {point: oneoff(f"/app/{point}") for point in ORDER}
    hooks["pre_traffic"] = Hook(exec=("/app/smoke",))  # inside one new container
    active = await run(deployer, web(hooks), "app:v2", strategy)
    assert active.status == "succeeded", active.message
    assert points(journal, active) == ORDER
    finished = steps(journal, active, "hook_finished")
    assert [d["ok"] for _, d in finished] == [True] * 6
    assert finished[1][1]["result"] == "exit 0" and "says hello" in finished[1][1]["output"]
    assert backend.execs and backend.execs[0][0] == "v2"  # exec ran in a NEW container
    assert not [c for c in backend.containers.values() if c.pool.startswith("hook-")]  # one-offs removed
    names = [name for name, _ in steps(journal, active)]
    assert names.index("hook_finished") < names.index("starting")  # migrate before the new set starts
    assert names.index("switched") < names.index("hook_started", names.index("switched"))


async def test_hooks_get_the_service_env_and_turnout_variables(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    config = replace(web({"migrate": oneoff()}), env={"DATABASE_URL": "x"})
    await run(deployer, config, "app:v2")
    assert backend.oneoff_env == {"DATABASE_URL": "x", "TURNOUT_SERVICE": "web", "TURNOUT_VERSION": "v2",
                                  "TURNOUT_PREVIOUS_VERSION": "v1", "TURNOUT_PHASE": "migrate",
                                  "TURNOUT_DEPLOYMENT": backend.oneoff_env["TURNOUT_DEPLOYMENT"]}


async def test_a_failed_migrate_aborts_before_anything_started_and_on_failure_runs(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    backend.oneoffs["/app/migrate"] = 7
    hooks = {"migrate": oneoff("/app/migrate"), "on_failure": oneoff("/app/page-someone")}
    active = await run(deployer, web(hooks), "app:v2")
    assert active.status == "failed"
    assert "migrate hook (oneoff) failed: exit 7" in active.message and "says hello" in active.message
    assert points(journal, active) == ["migrate", "on_failure"]
    assert not backend.running("v2") and routed(deployer) == {"v1": 100}


async def test_a_failing_hook_with_warn_goes_on(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    backend.oneoffs["/app/notify"] = 1
    active = await run(deployer, web({"post_deploy": oneoff("/app/notify", on_failure="warn")}), "app:v2")
    assert active.status == "succeeded"
    [(_, detail)] = steps(journal, active, "hook_finished")
    assert detail["ok"] is False and detail["on_failure"] == "warn" and detail["result"] == "exit 1"


async def test_a_failed_pre_traffic_hook_rolls_back_before_any_traffic(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1", "canary")
    backend.oneoffs["/app/smoke"] = 2
    active = await run(deployer, web({"pre_traffic": Hook(exec=("/app/smoke",))}), "app:v2", "canary")
    assert active.status == "failed" and "pre_traffic hook (exec) failed: exit 2" in active.message
    assert [name for name, _ in steps(journal, active) if name == "weight"] == []  # never weighted
    assert routed(deployer) == {"v1": 100}


async def test_host_commands_only_when_allowed_and_a_timeout_fails_the_hook(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    config = web({"pre_deploy": Hook(run=("/bin/sh", "-c", "echo phase=$TURNOUT_PHASE"))})
    with pytest.raises(ConfigError, match=r"services\.web\.hooks\.pre_deploy\.run: host command hooks"):
        deployer.deploy(config, "app:v2")
    deployer.allow_host_hooks = True
    active = await run(deployer, config, "app:v2")
    assert active.status == "succeeded"
    [(_, detail)] = steps(journal, active, "hook_finished")
    assert detail["ok"] and detail["output"] == "phase=pre_deploy"
    slow = web({"pre_deploy": Hook(run=("/bin/sleep", "5"), timeout=0.2)})
    active = await run(deployer, slow, "app:v3")
    assert active.status == "failed" and "timed out after 0.2s" in active.message


async def test_a_rollback_runs_no_hooks(world):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1", "bluegreen")
    await run(deployer, web({"migrate": oneoff(), "post_deploy": oneoff()}), "app:v2", "bluegreen")
    await deployer.settle("web")
    rollback = await deployer.rollback("web")
    await asyncio.wait_for(rollback.task, 10)
    assert rollback.status == "succeeded" and points(journal, rollback) == []


def test_hooks_read_from_the_file_and_back_from_the_journal():
    from controller.config.service_state import service_from_dict, service_to_dict

    config = parse_config({"services": {"web": {"image": "a:v1", "port": 8080, "hooks": {
        "migrate": {"oneoff": ["/app/migrate", "expand"], "timeout": "10m"},
        "pre_traffic": {"http": "/smoke", "timeout": "30s"},
        "contract": {"oneoff": ["/app/migrate", "contract"], "on_failure": "warn"}}}}}).services["web"]
    assert config.hooks["migrate"] == Hook(oneoff=("/app/migrate", "expand"), timeout=600.0)
    assert config.hooks["pre_traffic"].kind == "http" and config.hooks["contract"].on_failure == "warn"
    assert service_from_dict(service_to_dict(config)) == config


@pytest.mark.parametrize(("hooks", "key", "problem"), [
    ('pre_deplyo = { oneoff = ["x"] }', "hooks.pre_deplyo", "unknown hook point"),
    ('migrate = { container = ["x"] }', "hooks.migrate.container", "unknown key"),
    ('migrate = { oneoff = "/app/migrate up" }', "hooks.migrate.oneoff", "must be a non-empty list"),
    ("migrate = { oneoff = [] }", "hooks.migrate.oneoff", "must be a non-empty list"),
    ('migrate = { oneoff = ["x"], run = ["y"] }', "hooks.migrate", "exactly one of"),
    ('migrate = { timeout = "1m" }', "hooks.migrate", "exactly one of"),
    ('migrate = { http = "/smoke" }', "hooks.migrate.http", "no new container serves at migrate"),
    ('pre_traffic = { http = "smoke" }', "hooks.pre_traffic.http", "must be a path starting with '/'"),
    ('migrate = { oneoff = ["x"], on_failure = "retry" }', "hooks.migrate.on_failure", "abort, warn"),
    ('migrate = { oneoff = ["x"], timeout = "soon" }', "hooks.migrate.timeout", "not a duration"),
    ('migrate = { run = ["x"] }', "hooks.migrate.run", "allow_host_hooks"),
    ('migrate = "x"', "hooks.migrate", "must be a table"),
])
def test_bad_hooks_name_the_file_and_key(tmp_path, hooks, key, problem):
    from controller.config.reader import load_config

    path = tmp_path / "turnout.toml"
    path.write_text(f'[services.web]\nimage = "a:v1"\nport = 8080\n[services.web.hooks]\n{hooks}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: services.web.{key}: "), caught.value
    assert problem in str(caught.value)


def test_host_hooks_allowed_in_the_proxy_section(tmp_path):
    from controller.config.reader import load_config

    path = tmp_path / "turnout.toml"
    path.write_text('[proxy]\nallow_host_hooks = true\n[services.web]\nimage = "a:v1"\nport = 8080\n'
                    '[services.web.hooks]\nmigrate = { run = ["./migrate.sh"] }\n')
    config = load_config(path)
    assert config.allow_host_hooks and config.services["web"].hooks["migrate"].run == ("./migrate.sh",)


# ------------------------------------------------------------------ recovery never runs a hook twice
async def test_a_daemon_killed_inside_migrate_comes_back_frozen_without_running_it_again(world, tmp_path):
    deployer, backend, journal = world
    await run(deployer, web(), "app:v1")
    backend.blocking.add("/app/migrate")
    active = deployer.deploy(web({"migrate": oneoff("/app/migrate")}), "app:v2")
    while "hook_container" not in [name for name, _ in steps(journal, active)]:
        await asyncio.sleep(0.01)
    active.task.cancel()  # as a SIGKILL leaves it: the journal says running, inside the hook
    await asyncio.gather(active.task, return_exceptions=True)
    [hook_container] = [c for c in backend.containers.values() if c.pool == "hook-migrate"]
    assert journal.get(active.id).status == "running"

    restarted = Deployer(backend, ProxyControl(Router(drain_timeout=1.0)), journal)
    outcome = await recover(restarted, parse_config({}))
    try:
        assert "frozen" in outcome["web"] and "the migrate hook ran; it is not run again" in outcome["web"]
        frozen = restarted.active["web"]
        assert frozen.frozen and not frozen.promotable
        assert routed(restarted) == {"v1": 100}  # what served keeps serving
        assert hook_container.id in backend.containers  # left running for the operator
        assert [c for c in backend.calls if c == ("hook", "hook-migrate")] == [("hook", "hook-migrate")]
        backend.finish_oneoff(hook_container.id)
        frozen.signals.abort()  # a plain abort does not end a freeze
        await asyncio.sleep(0.05)
        assert not frozen.task.done()
        frozen.signals.abort(force=True)
        await asyncio.wait_for(frozen.task, 10)
        assert frozen.status == "aborted" and "ended by abort --force: v1 serves" in frozen.message
        assert hook_container.id not in backend.containers
        assert journal.get(active.id).status == "aborted"
        assert [c for c in backend.calls if c == ("hook", "hook-migrate")] == [("hook", "hook-migrate")]
    finally:
        await restarted.close()
