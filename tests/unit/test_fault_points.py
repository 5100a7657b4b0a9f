"""The step lists the SIGKILL battery cuts deploys at (helpers/fault_points.py) are what the strategies
really journal under its config, and the test-only fault hook
(controller/testing/faults.py) fires exactly there."""

from __future__ import annotations

import asyncio
import signal

import pytest

import controller.operations as operations
import controller.testing.faults as faults
from controller.deployer import Deployer
from controller.errors import UsageError
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from helpers.fault_points import JOURNALLED_STEPS, fault_points, kill_service_config
from proxy.router import Router


@pytest.fixture
def deployer(tmp_path, monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = Journal(tmp_path / "journal.db")
    yield Deployer(backend, ProxyControl(Router(drain_timeout=1.0)), journal)
    journal.close()


async def deploy(deployer: Deployer, image: str, strategy: str) -> list[str]:
    active = deployer.deploy(kill_service_config(), image, strategy)
    await asyncio.wait_for(active.task, 10)
    await deployer.settle("web")  # blue-green stops its drained old set after reporting success
    assert active.status == "succeeded", active.message
    return [s.name for s in deployer.journal.steps(active.id)]


@pytest.mark.parametrize("strategy", sorted(JOURNALLED_STEPS))
async def test_the_battery_knows_every_step_a_strategy_journals(deployer, strategy):
    await deploy(deployer, "turnout-testapp:v1", strategy)
    assert await deploy(deployer, "turnout-testapp:v2", strategy) == JOURNALLED_STEPS[strategy]


def test_fault_points_cover_each_step_after_and_actions_before():
    points = fault_points("rolling")
    assert ("healthy#2", False) in points and ("healthy#2", True) in points
    assert ("started#1", False) in points and ("started#1", True) not in points
    assert len({p for p, before in points if not before}) == len(JOURNALLED_STEPS["rolling"])


@pytest.mark.parametrize(("text", "expected"), [
    ("healthy", ("healthy", False, 1, None)),
    ("before:switched#2@v2", ("switched", True, 2, "v2")),
    ("after:batch_done@v2.1-rc", ("batch_done", False, 1, "v2.1-rc")),
])
def test_fault_point_grammar(text, expected):
    point = faults.FaultPoint.parse(text)
    assert (point.step, point.before, point.occurrence, point.version) == expected


@pytest.mark.parametrize("text", ["", "healthy#0", "during:healthy", "healthy#x", "Healthy"])
def test_bad_fault_points_are_refused_by_name(text):
    with pytest.raises(UsageError, match="fault point"):
        faults.FaultPoint.parse(text)


def test_unset_environment_arms_nothing_and_two_variables_are_refused(monkeypatch):
    monkeypatch.setattr(faults, "ARMED", None)
    assert faults.install_from_env({}) is None and faults.ARMED is None
    with pytest.raises(UsageError, match="at most one"):
        faults.install_from_env({"TURNOUT_FAULT_KILL_AT": "healthy", "TURNOUT_FAULT_STOP_AT": "healthy"})


@pytest.mark.parametrize(("text", "journalled"), [
    ("healthy#2@v2", ["started", "starting", "healthy", "drained", "batch_done", "starting", "healthy"]),
    ("before:healthy#2@v2", ["started", "starting", "healthy", "drained", "batch_done", "starting"]),
    ("started@v2", ["started"]),
])
async def test_the_hook_signals_at_its_step_and_occurrence(deployer, monkeypatch, text, journalled):
    """The signal is sent (here: recorded instead) at the named occurrence of the step, of the named
    version only (the v1 deploy journals the same names first), right before or after the write."""
    await deploy(deployer, "turnout-testapp:v1", "rolling")
    sent: list[tuple[int, list[str]]] = []

    def kill(pid, sig):
        rows = deployer.journal.steps(deployer.active["web"].id)
        sent.append((sig, [s.name for s in rows]))

    monkeypatch.setattr(faults.os, "kill", kill)
    monkeypatch.setattr(faults, "ARMED", faults.FaultPoint.parse(text, signal.SIGKILL))
    await deploy(deployer, "turnout-testapp:v2", "rolling")
    assert sent == [(signal.SIGKILL, journalled)]
