"""Recovery after the controller died at any step of a v1 -> v2 deploy, against the fake Docker client.

The death is simulated in-process: the test-only fault hook (controller/faults.py) is armed at a step, and
its signal replaced by raising `Killed` (a BaseException: no `except Exception` in the deployer runs, so
nothing after that point happens, as after a SIGKILL). A fresh deployer on the same journal and the same
containers then runs `recover`. Every step, before and after its write, for every strategy: the Docker
battery (tests/docker/test_kill_at_every_step.py) does the same against the real engine, fewer of them."""

from __future__ import annotations

import asyncio

import pytest

import controller.faults as faults
import controller.operations as operations
import controller.recovery as recovery
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_client import ProxyControl
from controller.spec import Config
from helpers.fake_docker import FakeBackend
from helpers.fault_points import JOURNALLED_STEPS, kill_service_config
from proxy.router import Router


class Killed(BaseException):
    """Stands in for the SIGKILL the hook would send."""


def every_point() -> list:
    cases = []
    for strategy, steps in JOURNALLED_STEPS.items():
        seen: dict[str, int] = {}
        for name in steps:
            seen[name] = seen.get(name, 0) + 1
            for before in (True, False):
                point = f"{'before:' if before else ''}{name}#{seen[name]}@v2"
                cases.append(pytest.param(strategy, point, id=f"{strategy}-{point}"))
    return cases


@pytest.fixture
def backend(monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    monkeypatch.setattr(recovery, "wait_healthy", backend.wait_healthy)
    return backend


@pytest.mark.parametrize(("strategy", "point"), every_point())
async def test_recovery_after_a_kill_at_any_step(tmp_path, backend, monkeypatch, strategy, point):
    config = kill_service_config()
    journal = Journal(tmp_path / "journal.db")
    first = Deployer(backend, ProxyControl(Router(drain_timeout=1.0)), journal)
    v1 = first.deploy(config, "turnout-testapp:v1", strategy)
    await asyncio.wait_for(v1.task, 10)
    v1_ids = {c.id for c in backend.running("v1")}

    def die(pid: int, sig: int) -> None:
        raise Killed

    monkeypatch.setattr(faults.os, "kill", die)
    monkeypatch.setattr(faults, "ARMED", faults.FaultPoint.parse(point))
    active = first.deploy(config, "turnout-testapp:v2", strategy)
    with pytest.raises(Killed):
        await asyncio.wait_for(active.task, 10)
        settling = first._settling.get("web")  # blue-green's last step: after the deploy succeeded
        if settling is not None:
            await asyncio.wait([settling])
            if settling.exception() is not None:
                raise settling.exception()
        raise AssertionError(f"the hook never fired at {point}")
    monkeypatch.setattr(faults, "ARMED", None)
    steps = [s.name for s in journal.steps(active.id)]
    switched = "switched" in steps

    router = Router(drain_timeout=1.0)  # the restarted daemon: nothing in memory survived
    second = Deployer(backend, ProxyControl(router), journal)
    await recovery.recover(second, Config(services={"web": config}))
    expected = "v2" if switched else "v1"
    stable, previous = second.releases["web"], second.previous.get("web")
    assert stable.version == expected
    assert [(p.name, p.weight, len(p.upstreams)) for p in router.table.services["web"].pools] == [
        (stable.pool, 100, 2)]
    assert {c.id for c in backend.running()} == {c.id for c in stable.containers}
    kept = {c.id for c in previous.containers} if previous else set()
    assert set(backend.containers) == {c.id for c in stable.containers} | kept  # nothing unknown
    record = journal.get(active.id)
    assert record.status == ("succeeded" if switched else "rolled_back"), record
    if switched:
        assert previous is not None and previous.version == "v1" and previous.pool != stable.pool
        assert {c.id for c in previous.containers} <= v1_ids
        state = journal.service_state("web")
        assert state["stable"]["version"] == "v2" and state["previous"]["version"] == "v1"
    journal.close()
