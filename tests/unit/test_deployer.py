"""The deployer's lifecycle against the fake Docker client: every deploy ends whatever the journal does,
work left after a success holds the service (the next deploy, a rollback wait for it), and a deploy's
options apply to that deploy only."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from dataclasses import replace
from typing import Any

import pytest

import controller.operations as operations
from controller.api import _service_config
from controller.config.model import DEFAULT_VERIFY, BlueGreenOptions, CanaryOptions, RollingOptions
from controller.config.overrides import service_from_flags
from controller.config.service_state import service_from_dict
from controller.deployer import Deployer
from controller.events import EventLog
from controller.journal import Journal, JournalError
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router

LOCKED = "database is locked"


class FailingJournal(Journal):
    """A journal that refuses every write from a chosen one on, as a locked SQLite database does,
    until `heal()`. Writes are named `begin`, `step:<name>`, `state` and `finish`."""

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self.fail_from: str | None = None
        self.failing = False
        self.refused: list[str] = []

    def heal(self) -> None:
        self.fail_from, self.failing = None, False

    def _write(self, what: str) -> None:
        if what == self.fail_from:
            self.failing = True
        if self.failing:
            self.refused.append(what)
            raise sqlite3.OperationalError(LOCKED)

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        self._write("begin")
        return super().begin(*args, **kwargs)

    def step(self, deployment_id: str, name: str, **detail: Any) -> Any:
        self._write(f"step:{name}")
        return super().step(deployment_id, name, **detail)

    def set_service_state(self, service: str, state: dict[str, Any]) -> None:
        self._write("state")
        super().set_service_state(service, state)

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        self._write("finish")
        return super().finish(*args, **kwargs)


class GatedStops(FakeBackend):
    """`docker stop` that waits for `gate` while one is set (an app ignoring SIGTERM takes Docker's
    whole stop grace); `stopping` is set once a stop waits there."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.stopping = asyncio.Event()

    async def stop(self, container_id: str, timeout: float = 10) -> Any:
        if self.gate is not None:
            self.stopping.set()
            await self.gate.wait()
        return await super().stop(container_id, timeout)


@pytest.fixture
async def world(tmp_path, monkeypatch):
    router = Router(drain_timeout=1.0)
    backend = GatedStops()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    journal = FailingJournal(tmp_path / "journal.db")
    deployer = Deployer(backend, ProxyControl(router), journal)
    yield router, backend, deployer, journal
    if backend.gate is not None:
        backend.gate.set()
    await deployer.close()
    journal.close()


def web(**changes: Any):
    config = service_from_flags("web", "app:v1", port=8080, replicas=2)
    return replace(config, **{"verify": 0.0, **changes})


async def run(deployer: Deployer, config, image: str, strategy: str):
    active = deployer.deploy(config, image, strategy)
    await asyncio.wait_for(active.task, 10)
    return active


async def follow(events: EventLog) -> list[dict[str, Any]]:
    return [event async for event in events.follow()]


def routed(deployer: Deployer) -> dict[str, set[str]]:
    return {name: set(pool.upstreams) for name, pool in deployer.proxy.pools("web").items()}


# ------------------------------------------------------------------ every deploy ends
@pytest.mark.parametrize(("fail_from", "status"), [
    ("step:started", "failed"),  # the first write of the run
    ("step:switched", "failed"),  # mid-strategy: the restore's writes fail too
    ("state", "succeeded"),  # the promotion's saved state
    ("step:completed", "succeeded"),
    ("finish", "succeeded"),  # the outcome itself
])
async def test_a_failing_journal_still_ends_the_deploy(world, fail_from, status):
    router, backend, deployer, journal = world
    await run(deployer, web(), "app:v1", "bluegreen")
    journal.fail_from = fail_from
    active = deployer.deploy(web(), "app:v2", "bluegreen")
    events = await asyncio.wait_for(follow(active.events), 10)  # the followers' stream ends
    await asyncio.wait_for(active.task, 10)
    assert journal.refused and journal.refused[0] == fail_from
    finished = events[-1]
    assert finished["event"] == "finished" and finished["status"] == status, finished
    assert LOCKED in finished["message"]  # the result says what the journal refused
    assert "web" not in deployer.active and deployer.finished["web"] is active
    if status == "failed":  # the old release is back, the new one's containers are gone
        assert routed(deployer) == {"v1": {c.address for c in backend.running("v1")}}
        assert not [c for c in backend.containers.values() if c.version == "v2"]
    else:
        assert finished["journal_errors"] and set(routed(deployer)) == {"v2"}
    # While the journal still refuses, a new deploy is refused saying so (not "already in progress").
    with pytest.raises(JournalError, match=LOCKED):
        deployer.deploy(web(), "app:v3", "bluegreen")
    journal.heal()
    await deployer.settle("web")
    third = await run(deployer, web(), "app:v3", "bluegreen")
    assert third.status == "succeeded", third.message
    record = next(r for r in journal.history("web") if r.id == active.id)
    assert record.status == status  # the end that was refused was written before the next deploy
    assert journal.service_state("web")["stable"]["version"] == "v3"


async def test_rollback_of_a_deploy_whose_journal_fails_returns_its_end(world):
    """`turnout rollback` during a deploy aborts it and returns how it ended. Before, the restore's
    first journal write killed the run: the deploy stayed `active` and rollback returned the previous
    deploy's end (a KeyError when there was none)."""
    router, backend, deployer, journal = world
    await run(deployer, web(), "app:v1", "bluegreen")
    active = deployer.deploy(web(bluegreen=BlueGreenOptions(preview=True)), "app:v2", "bluegreen")
    follower = asyncio.ensure_future(follow(active.events))
    while "preview" not in [s.name for s in journal.steps(active.id)]:
        await asyncio.sleep(0.01)
    journal.fail_from = "step:restoring"
    ended = await asyncio.wait_for(deployer.rollback("web"), 10)
    assert ended is active and ended.status == "aborted" and LOCKED in ended.message
    assert (await asyncio.wait_for(follower, 10))[-1]["status"] == "aborted"
    assert set(routed(deployer)) == {"v1"}
    journal.heal()
    assert (await run(deployer, web(), "app:v2", "bluegreen")).status == "succeeded"


# ------------------------------------------------------------------ work that holds the service
async def test_a_rollback_while_the_warm_set_retires_never_routes_to_stopped_containers(world):
    """Blue-green with keep_old: after it, the old set is switched out, drained and stopped. A
    rollback that comes while that runs waits for it, then starts the old set again, instead of
    routing to containers that are then stopped."""
    router, backend, deployer, journal = world
    await run(deployer, web(), "app:v1", "bluegreen")
    backend.gate = asyncio.Event()
    await run(deployer, web(bluegreen=BlueGreenOptions(keep_old=0.01)), "app:v2", "bluegreen")
    await asyncio.wait_for(backend.stopping.wait(), 10)  # the warm v1 set is being stopped
    rollback = await deployer.rollback("web")
    backend.gate.set()
    await asyncio.wait_for(rollback.task, 10)
    await deployer.settle("web")
    assert rollback.status == "succeeded", rollback.message
    running = {c.address for c in backend.running("v1")}
    assert routed(deployer) == {"v1": running} and len(running) == 2
    assert not backend.running("v2")


async def test_rollback_reports_success_once_switched_and_stops_the_old_set_after(world):
    """As a blue-green deploy does: the rollback's result comes once traffic moved and drained; the
    set it left is stopped after that (journalled), and a next deploy waits for that stop."""
    router, backend, deployer, journal = world
    await run(deployer, web(), "app:v1", "bluegreen")
    await run(deployer, web(), "app:v2", "bluegreen")
    await deployer.settle("web")
    backend.gate = asyncio.Event()  # v2's stop takes long (an app that ignores SIGTERM)
    rollback = await deployer.rollback("web")
    events = await asyncio.wait_for(follow(rollback.events), 10)
    assert events[-1]["event"] == "finished" and events[-1]["status"] == "succeeded"
    assert set(routed(deployer)) == {"v1"}
    assert len(backend.running("v2")) == 2  # its stop is still under way
    steps = [s.name for s in journal.steps(rollback.id)]
    assert steps[-2:] == ["drained", "completed"], steps
    following = deployer.deploy(web(), "app:v3", "bluegreen")  # accepted, and waits for the stop
    while "web" in deployer._settling:  # until its run took the held stop to wait for
        await asyncio.sleep(0)
    assert ("start", "v3") not in backend.calls
    backend.gate.set()
    await asyncio.wait_for(following.task, 10)
    assert following.status == "succeeded"
    stops_of_v2 = [n for n, call in enumerate(backend.calls) if call == ("stop", "v2")]
    assert len(stops_of_v2) == 2 and max(stops_of_v2) < backend.calls.index(("start", "v3"))
    assert [s.name for s in journal.steps(rollback.id)][-1] == "old_stopped"


# ------------------------------------------------------------------ a deploy's options are its own
CONFIGURED = web(canary=CanaryOptions(steps=(50, 100), step_pause=0.01, analysis_interval=0.01),
                 rolling=RollingOptions(max_surge=1, max_unavailable=0))


@pytest.mark.parametrize(("strategy", "options"), [
    ("bluegreen", {"preview": True}),
    ("bluegreen", {"keep_old": "30s"}),
    ("canary", {"steps": "10,100", "step_pause": "20ms"}),
    ("canary", {"preset": "all-at-once"}),
    ("rolling", {"max_surge": 2, "max_unavailable": 1}),
    ("bluegreen", {"verify": "50ms"}),
])
async def test_a_deploys_options_apply_to_that_deploy_only(world, strategy, options):
    """`turnout deploy web --preview` (or --keep-old, --steps, --max-surge, --verify): the next plain
    deploy uses the service's configured values again, in memory and in the journal."""
    router, backend, deployer, journal = world
    deployer.configs["web"] = CONFIGURED  # as the daemon does for a service in its config file
    await run(deployer, CONFIGURED, "app:v1", strategy)
    config = _service_config(deployer, {"service": "web", "image": "app:v2", "options": options})
    assert config != CONFIGURED
    active = deployer.deploy(config, "app:v2", strategy)
    if options.get("preview"):
        while "preview" not in [s.name for s in journal.steps(active.id)]:
            await asyncio.sleep(0.01)
        active.signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded", active.message
    assert _service_config(deployer, {"service": "web", "image": "app:v3"}) == CONFIGURED
    assert service_from_dict(journal.service_state("web")["config"]) == CONFIGURED
    plain = await run(deployer, _service_config(deployer, {"service": "web", "image": "app:v3"}),
                      "app:v3", strategy)
    assert plain.status == "succeeded", plain.message
    steps = [s.name for s in journal.steps(plain.id)]
    assert "preview" not in steps and "old_kept_warm" not in steps and "verifying" not in steps


async def test_options_of_the_deploy_that_created_a_service_do_not_stick_either(world):
    router, backend, deployer, journal = world
    body = {"service": "web", "image": "app:v1", "flags": {"port": 8080, "replicas": 2},
            "options": {"keep_old": "1m", "verify": "0"}}
    await run(deployer, _service_config(deployer, body), "app:v1", "bluegreen")
    kept = deployer.configs["web"]
    assert kept.bluegreen == BlueGreenOptions() and kept.verify == DEFAULT_VERIFY
    assert (kept.port, kept.replicas) == (8080, 2)  # what the flags said the service is stays


# ------------------------------------------------------------------ rules changed live
async def test_rules_set_live_are_kept_in_the_journal_and_used_by_later_installs(world):
    from controller.config.overrides import rules_from_flags
    from controller.errors import DeployInProgress

    router, backend, deployer, journal = world
    await run(deployer, web(), "app:v1", "bluegreen")
    rules = rules_from_flags([["insiders", "header:X-Canary=always", "canary"]])
    deployer.set_rules("web", rules)
    assert router.specs["web"].rules == rules
    saved = journal.service_state("web")["config"]["rules"]
    assert saved == [{"name": "insiders", "match": {"header": {"X-Canary": "always"}}, "to": "canary"}]
    assert service_from_dict(journal.service_state("web")["config"]).rules == rules
    await run(deployer, deployer.configs["web"], "app:v2", "bluegreen")
    assert router.specs["web"].rules == rules  # a later deploy installs them again
    # A deploy in progress (a blue-green preview waiting for promote): changing its routing is refused.
    preview = replace(deployer.configs["web"], bluegreen=BlueGreenOptions(preview=True), verify=0.0)
    active = deployer.deploy(preview, "app:v3", "bluegreen")
    await asyncio.wait_for(_until(lambda: "v3" in deployer.proxy.pools("web")), 10)
    with pytest.raises(DeployInProgress):
        deployer.set_rules("web", ())
    active.signals.promote()
    await asyncio.wait_for(active.task, 10)
    assert router.specs["web"].rules == rules


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


async def test_a_journal_refusing_the_rules_changes_nothing(world):
    router, _, deployer, journal = world
    await run(deployer, web(), "app:v1", "bluegreen")
    from controller.config.overrides import rules_from_flags

    journal.fail_from = "state"
    with pytest.raises(sqlite3.OperationalError):
        deployer.set_rules("web", rules_from_flags([["q", "query:a=1", "stable"]]))
    assert router.specs["web"].rules == () and deployer.configs["web"].rules == ()


# ------------------------------------------------------------------ the switch's record, off the loop
@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling", "canary"])
async def test_the_switched_step_is_written_while_the_loop_routes(world, monkeypatch, strategy):
    """The journal write right after a swap (an fsync) runs off the event loop: requests the swap released
    are routed while it is being written, and the deploy goes on only once it is written."""
    router, _, deployer, journal = world
    await run(deployer, web(canary=CanaryOptions(steps=(100,), step_pause=0.0)), "app:v1", strategy)
    writing, release, written = threading.Event(), threading.Event(), threading.Event()
    real = journal.step

    def slow_disk(deployment_id: str, name: str, **detail: Any) -> Any:
        if name != "switched":
            return real(deployment_id, name, **detail)
        writing.set()
        release.wait(5)  # the fsync of a slow disk
        step = real(deployment_id, name, **detail)
        written.set()
        return step
    monkeypatch.setattr(journal, "step", slow_disk)
    active = deployer.deploy(web(canary=CanaryOptions(steps=(100,), step_pause=0.0)), "app:v2", strategy)
    while not writing.is_set():  # the loop runs: the deploy reaches its switch
        await asyncio.sleep(0.001)
    assert not written.is_set()  # the loop got here while the write was still waiting for the disk
    assert set(routed(deployer)) == {"v2"}  # the swap came first: what is routed now goes to v2
    steps = [e["step"] for e in active.events.events if e["event"] == "step"]
    assert "switched" not in steps  # nothing says "switched" before it is in the journal
    release.set()
    await asyncio.wait_for(active.task, 10)
    assert "switched" in [s.name for s in journal.steps(active.id)]
