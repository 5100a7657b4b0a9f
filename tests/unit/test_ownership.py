"""Whose containers are whose: the owner id lives in the journal (random, created once), and only the
containers the journal recorded are ever routed, kept or removed (the fake Docker client lists every
container as carrying our owner label, as a hand-made one with copied labels would)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

import controller.operations as operations
import controller.recovery as recovery
from controller.config.model import Config
from controller.config.overrides import service_from_flags
from controller.deployer import Deployer
from controller.engine.base import ContainerSpec
from controller.journal import MIGRATIONS, Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router


@pytest.fixture
def backend(monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    monkeypatch.setattr(recovery, "wait_healthy", backend.wait_healthy)
    return backend


def web(name: str = "web"):
    return replace(service_from_flags(name, "app:v1", port=8080, replicas=2), verify=0.0)


def daemon(backend: FakeBackend, journal: Journal, prune_strays: bool = False) -> tuple[Router, Deployer]:
    router = Router(drain_timeout=1.0)
    deployer = Deployer(backend, ProxyControl(router), journal)
    deployer.prune_strays = prune_strays
    return router, deployer


async def by_hand(backend: FakeBackend, service: str = "web", pool: str = "v1"):
    """A container with Turnout's labels that no Turnout journal recorded (docker run --label ...)."""
    return await backend.start(ContainerSpec(service=service, version=pool, image="app:v1", port=8080,
                                             deployment_id="d-000001", pool=pool))


def upstreams(router: Router, service: str = "web") -> set[str]:
    return {u.address for p in router.table.services[service].pools for u in p.upstreams}


# ------------------------------------------------------------------------------------------ owner id
def test_the_owner_id_is_random_per_journal_and_kept_across_reopens(tmp_path):
    path = tmp_path / "state" / "journal.sqlite3"
    with Journal(path) as journal:
        first = journal.owner
    with Journal(path) as journal:
        assert journal.owner == first  # created once
    path.unlink()  # a fresh journal at the same path (the issue: every compose copy uses one path)
    with Journal(path) as journal:
        assert journal.owner != first and journal.owner.startswith("turnout-")
    with Journal(tmp_path / "other" / "journal.sqlite3") as other:
        assert other.owner not in (first, journal.owner)


def test_a_journal_from_before_owner_ids_keeps_its_path_owner_and_its_containers(tmp_path):
    """Upgrading must not orphan what runs: the old id (a hash of the state dir's path) is kept, and
    the containers the service state names become the journal's record."""
    path = tmp_path / "state" / "journal.sqlite3"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    state = {"stable": {"version": "v2", "image": "app:v2", "pool": "v2", "containers": ["c2a", "c2b"]},
             "previous": {"version": "v1", "image": "app:v1", "pool": "v1", "containers": ["c1a"]}}
    db.execute("INSERT INTO service_state VALUES ('web', ?, 0)", (json.dumps(state),))
    db.commit()
    db.close()
    with Journal(path) as journal:
        legacy = "turnout-" + hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:12]
        assert journal.owner == legacy
        assert journal.container_ids("web") == {"c2a", "c2b", "c1a"}
    with Journal(path) as journal:
        assert journal.owner == legacy


# ------------------------------------------------------------------------------------------ recovery
async def test_a_daemon_with_an_empty_journal_removes_nothing_it_did_not_create(tmp_path, backend):
    """The issue's case: daemon A serves `alphasec`; daemon B starts with an empty journal and, before
    owner ids were random, the same owner id: it removed A's containers as an "unknown service"."""
    journal_a = Journal(tmp_path / "a" / "journal.sqlite3")
    _, a = daemon(backend, journal_a)
    await asyncio.wait_for(a.deploy(web("alphasec"), "app:v1", "bluegreen").task, 10)
    theirs = set(backend.containers)
    assert len(theirs) == 2
    journal_b = Journal(tmp_path / "b" / "journal.sqlite3")
    _, b = daemon(backend, journal_b)
    outcome = await recovery.recover(b, Config())
    assert set(backend.containers) == theirs and len(backend.running()) == 2
    assert "alphasec" not in outcome and "alphasec" not in b.releases
    journal_a.close()
    journal_b.close()


async def test_recovery_routes_only_the_containers_the_journal_recorded(tmp_path, backend):
    journal = Journal(tmp_path / "journal.sqlite3")
    router, first = daemon(backend, journal)
    await asyncio.wait_for(first.deploy(web(), "app:v1", "bluegreen").task, 10)
    mine = {c.address for c in first.releases["web"].containers}
    stranger = await by_hand(backend)  # labelled as v1, the pool that serves
    router, second = daemon(backend, journal)
    await recovery.recover(second, Config(services={"web": web()}))
    assert upstreams(router) == mine  # the stranger gets no traffic ...
    assert stranger.id in backend.containers  # ... and is left alone
    journal.close()


async def test_prune_strays_removes_what_the_journal_never_recorded(tmp_path, backend):
    journal = Journal(tmp_path / "journal.sqlite3")
    _, first = daemon(backend, journal)
    await asyncio.wait_for(first.deploy(web(), "app:v1", "bluegreen").task, 10)
    mine = {c.id for c in first.releases["web"].containers}
    stranger, other_service = await by_hand(backend), await by_hand(backend, service="alphasec")
    router, second = daemon(backend, journal, prune_strays=True)
    await recovery.recover(second, Config(services={"web": web()}))
    assert set(backend.containers) == mine
    assert stranger.id not in backend.containers and other_service.id not in backend.containers
    journal.close()


async def test_recovery_forgets_the_records_of_containers_that_are_gone(tmp_path, backend):
    journal = Journal(tmp_path / "journal.sqlite3")
    _, first = daemon(backend, journal)
    await asyncio.wait_for(first.deploy(web(), "app:v1", "bluegreen").task, 10)
    gone = next(iter(backend.containers))
    await backend.remove(gone)
    _, second = daemon(backend, journal)
    await recovery.recover(second, Config(services={"web": web()}))
    assert gone not in journal.container_ids()
    assert set(backend.containers) <= journal.container_ids()  # the replacement was recorded
    journal.close()


# ------------------------------------------------------------------------------------------ reconcile
async def test_repair_never_routes_a_hand_made_container_nor_removes_the_real_one(tmp_path, backend):
    """The issue's case: a container made by hand with Turnout's labels (pool v1) got all the traffic
    and the real v1 was removed, because the repair kept `mine[:replicas]` ordered by state."""
    journal = Journal(tmp_path / "journal.sqlite3")
    router, deployer = daemon(backend, journal)
    await asyncio.wait_for(deployer.deploy(web(), "app:v1", "bluegreen").task, 10)
    real = [c.id for c in deployer.releases["web"].containers]
    await backend.stop(real[1])  # one real v1 container stopped: the repair runs
    stranger = await by_hand(backend)
    repair = await deployer.reconcile("web")
    assert repair is not None and repair.status == "succeeded", repair and repair.message
    assert [c.id for c in deployer.releases["web"].containers] == real
    assert upstreams(router) == {backend.containers[i].address for i in real}
    assert stranger.address not in upstreams(router)
    assert set(real) <= {c.id for c in backend.running()} and stranger.id in backend.containers
    assert await deployer.reconcile("web") is None  # whole again: the stranger does not count
    journal.close()


async def test_repair_with_prune_strays_removes_the_hand_made_container(tmp_path, backend):
    journal = Journal(tmp_path / "journal.sqlite3")
    router, deployer = daemon(backend, journal, prune_strays=True)
    await asyncio.wait_for(deployer.deploy(web(), "app:v1", "bluegreen").task, 10)
    real = {c.id for c in deployer.releases["web"].containers}
    stranger = await by_hand(backend)
    repair = await deployer.reconcile("web")
    assert repair is not None and repair.status == "succeeded"
    assert set(backend.containers) == real and stranger.id not in backend.containers
    assert upstreams(router) == {backend.containers[i].address for i in real}
    journal.close()


async def test_a_stopped_daemons_cleanup_removes_the_containers_of_its_owner(tmp_path, monkeypatch):
    """controller.daemon.remove_containers_of: the demo's and the test plugin's cleanup."""
    import controller.daemon as daemon

    made: list[Any] = []

    class Backend:  # lists two containers for any owner, records what it is asked
        def __init__(self, owner: str) -> None:
            self.owner, self.removed, self.closed = owner, [], False
            made.append(self)

        async def list(self) -> list[Any]:
            return [SimpleNamespace(id="c1"), SimpleNamespace(id="c2")]

        async def remove(self, container_id: str) -> None:
            self.removed.append(container_id)

        async def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(daemon, "make_engine", lambda engine, owner: Backend(owner))
    assert await daemon.remove_containers_of(tmp_path) == 0 and made == []  # no journal: it started nothing
    with Journal(Config(state_dir=tmp_path).journal_path) as journal:
        owner = journal.owner
    assert await daemon.remove_containers_of(tmp_path) == 2
    assert [(b.owner, b.removed, b.closed) for b in made] == [(owner, ["c1", "c2"], True)]
