"""Recovery after the controller died at any step of a v1 -> v2 deploy, against the fake Docker client.

The death is simulated in-process: the test-only fault hook (controller/testing/faults.py) is armed at a step,
and its signal replaced by raising `Killed` (a BaseException: no `except Exception` in the deployer runs, so
nothing after that point happens, as after a SIGKILL). A fresh deployer on the same journal and the same
containers then runs `recover`. Every step, before and after its write, for every strategy: the Docker
battery (tests/docker/test_kill_at_every_step.py) does the same against the real engine, fewer of them."""

from __future__ import annotations

import asyncio

import pytest

import controller.operations as operations
import controller.recovery as recovery
import controller.testing.faults as faults
from controller.config.model import Config
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from helpers.fault_points import JOURNALLED_STEPS, kill_service_config, promoted
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


async def kill_during_deploy(journal: Journal, backend: FakeBackend, monkeypatch, strategy: str,
                             point: str | None, image: str = "turnout-testapp:v2") -> str:
    """Deploy v1, then `image` with the hook armed at `point` (None: unarmed); returns the deployment
    id of the second deploy once it died (or finished)."""
    config = kill_service_config()
    first = Deployer(backend, ProxyControl(Router(drain_timeout=1.0)), journal)
    v1 = first.deploy(config, "turnout-testapp:v1", strategy)
    await asyncio.wait_for(v1.task, 10)

    def die(pid: int, sig: int) -> None:
        raise Killed

    monkeypatch.setattr(faults.os, "kill", die)
    monkeypatch.setattr(faults, "ARMED", faults.FaultPoint.parse(point) if point else None)
    active = first.deploy(config, image, strategy)
    if point is None:
        await asyncio.wait_for(active.task, 10)
        return active.id
    with pytest.raises(Killed):
        await asyncio.wait_for(active.task, 10)
        settling = first._settling.get("web")  # blue-green's last step: after the deploy succeeded
        if settling is not None:
            await asyncio.wait([settling])
            if settling.exception() is not None:
                raise settling.exception()
        raise AssertionError(f"the hook never fired at {point}")
    monkeypatch.setattr(faults, "ARMED", None)
    return active.id


async def restart(journal: Journal, backend: FakeBackend) -> tuple[Router, Deployer]:
    """The restarted daemon: nothing in memory survived; recovery rebuilds from journal and Docker."""
    router = Router(drain_timeout=1.0)
    second = Deployer(backend, ProxyControl(router), journal)
    await recovery.recover(second, Config(services={"web": kill_service_config()}))
    return router, second


@pytest.mark.parametrize(("strategy", "point"), every_point())
async def test_recovery_after_a_kill_at_any_step(tmp_path, backend, monkeypatch, strategy, point):
    journal = Journal(tmp_path / "journal.db")
    deployment = await kill_during_deploy(journal, backend, monkeypatch, strategy, point)
    v1_ids = {c.id for c in backend.containers.values() if c.version == "v1"}
    steps = [s.name for s in journal.steps(deployment)]
    switched = promoted(strategy, steps)
    router, second = await restart(journal, backend)
    expected = "v2" if switched else "v1"
    stable, previous = second.releases["web"], second.previous.get("web")
    assert stable.version == expected
    assert [(p.name, p.weight, len(p.upstreams)) for p in router.table.services["web"].pools] == [
        (stable.pool, 100, 2)]
    assert {c.id for c in backend.running()} == {c.id for c in stable.containers}
    kept = {c.id for c in previous.containers} if previous else set()
    assert set(backend.containers) == {c.id for c in stable.containers} | kept  # nothing unknown
    record = journal.get(deployment)
    assert record.status == ("succeeded" if switched else "rolled_back"), record
    if switched:
        assert previous is not None and previous.version == "v1" and previous.pool != stable.pool
        assert {c.id for c in previous.containers} <= v1_ids
        state = journal.service_state("web")
        assert state["stable"]["version"] == "v2" and state["previous"]["version"] == "v1"
    journal.close()


@pytest.mark.parametrize("strategy", sorted(JOURNALLED_STEPS))
async def test_recovery_after_a_kill_while_a_failed_deploy_restores(tmp_path, backend, monkeypatch,
                                                                   strategy):
    """The failure path journals steps too (`restoring`, `drained`, `restored`): a kill at any of them,
    of a deploy whose new version crashes at start, still ends with v1 alone on its full count."""
    backend.failing_images.add("turnout-testapp:crash")
    journal = Journal(tmp_path / "unarmed.db")
    deployment = await kill_during_deploy(journal, backend, monkeypatch, strategy, None,
                                          "turnout-testapp:crash")
    steps = [s.name for s in journal.steps(deployment)]
    journal.close()
    assert "restoring" in steps and steps[-1] == "restored", steps
    for n, name in enumerate(steps[steps.index("restoring"):], start=steps.index("restoring")):
        occurrence = steps[:n + 1].count(name)
        for before in (True, False):
            backend.containers.clear()
            journal = Journal(tmp_path / f"{n}-{before}.db")
            point = f"{'before:' if before else ''}{name}#{occurrence}@crash"
            deployment = await kill_during_deploy(journal, backend, monkeypatch, strategy, point,
                                                  "turnout-testapp:crash")
            router, second = await restart(journal, backend)
            stable = second.releases["web"]
            assert stable.version == "v1", point
            assert [(p.name, len(p.upstreams)) for p in router.table.services["web"].pools] == [("v1", 2)]
            assert set(backend.containers) == {c.id for c in backend.running()} == {
                c.id for c in stable.containers}, point
            assert journal.get(deployment).status == "rolled_back", point
            journal.close()


async def kill_during_rollback(journal: Journal, backend: FakeBackend, monkeypatch,
                               point: str | None) -> str:
    """v1, then v2 (blue-green: v1 kept stopped), then `turnout rollback` with the hook at `point`."""
    config = kill_service_config()
    first = Deployer(backend, ProxyControl(Router(drain_timeout=1.0)), journal)
    for image in ("turnout-testapp:v1", "turnout-testapp:v2"):
        await asyncio.wait_for(first.deploy(config, image, "bluegreen").task, 10)
        await first.settle("web")

    def die(pid: int, sig: int) -> None:
        raise Killed

    monkeypatch.setattr(faults.os, "kill", die)
    monkeypatch.setattr(faults, "ARMED", faults.FaultPoint.parse(point) if point else None)
    killed = False
    try:
        active = await first.rollback("web")
        await asyncio.wait_for(active.task, 10)
        settling = first._settling.get("web")  # stopping the set rolled away from: after the success
        if settling is not None:
            await asyncio.wait([settling])
            if settling.exception() is not None:
                raise settling.exception()
    except Killed:
        killed = True
    finally:
        monkeypatch.setattr(faults, "ARMED", None)
    assert point is None or killed, f"the hook never fired at {point}"
    return journal.history("web", limit=1)[0].id


async def test_recovery_after_a_kill_at_any_step_of_a_rollback(tmp_path, backend, monkeypatch):
    """`turnout rollback` onto the kept blue-green set journals steps too: killed at any of them, the
    restarted daemon serves v1 when the switch back had happened, v2 otherwise, with the other kept."""
    journal = Journal(tmp_path / "unarmed.db")
    steps = [s.name for s in journal.steps(await kill_during_rollback(journal, backend, monkeypatch, None))]
    journal.close()
    # Like a blue-green deploy, the rollback reports success once switched and drained; the set it
    # left is stopped after that.
    assert steps[-2:] == ["completed", "old_stopped"] and "switched" in steps, steps
    for n, name in enumerate(steps):
        for before in (True, False):
            backend.containers.clear()
            journal = Journal(tmp_path / f"{n}-{before}.db")
            point = f"{'before:' if before else ''}{name}#{steps[:n + 1].count(name)}@v1"
            deployment = await kill_during_rollback(journal, backend, monkeypatch, point)
            switched = "switched" in [s.name for s in journal.steps(deployment)]
            router, second = await restart(journal, backend)
            stable, previous = second.releases["web"], second.previous["web"]
            assert (stable.version, previous.version) == (("v1", "v2") if switched else ("v2", "v1")), point
            assert [(p.name, len(p.upstreams)) for p in router.table.services["web"].pools] == [
                (stable.pool, 2)], point
            assert {c.id for c in backend.running()} == {c.id for c in stable.containers}, point
            assert set(backend.containers) == {c.id for c in stable.containers + previous.containers}, point
            journal.close()


@pytest.mark.parametrize("point", ["started@v1", "starting@v1", "before:healthy@v1", "healthy@v1",
                                   "routed@v1"])
async def test_a_repair_killed_midway_is_taken_over_by_recovery(tmp_path, backend, monkeypatch, point):
    """The reconcile loop's repair (one v1 container vanished) killed at a step: the journal says the
    repair was interrupted (not "rolled back": there is nothing to roll back), and recovery itself
    brings v1 back to its two containers, with nothing unknown left."""
    config = kill_service_config()
    journal = Journal(tmp_path / "journal.db")
    first = Deployer(backend, ProxyControl(Router(drain_timeout=1.0)), journal)
    await asyncio.wait_for(first.deploy(config, "turnout-testapp:v1", "bluegreen").task, 10)
    await backend.remove(first.releases["web"].containers[0].id)  # gone behind our back

    def die(pid: int, sig: int) -> None:
        raise Killed

    monkeypatch.setattr(faults.os, "kill", die)
    monkeypatch.setattr(faults, "ARMED", faults.FaultPoint.parse(point))
    await first.reconcile("web")  # it waits for its repair task, which died at `point`
    monkeypatch.setattr(faults, "ARMED", None)
    assert isinstance(first.active["web"].task.exception(), Killed), point
    repair = journal.history("web", limit=1)[0]
    assert repair.strategy == "repair" and repair.status == "running"
    router, second = await restart(journal, backend)
    record = journal.get(repair.id)
    assert record.status == "interrupted" and "recovery makes the release whole" in record.message
    stable = second.releases["web"]
    assert [(p.name, len(p.upstreams)) for p in router.table.services["web"].pools] == [("v1", 2)]
    assert set(backend.containers) == {c.id for c in backend.running()} == {c.id for c in stable.containers}
    journal.close()
