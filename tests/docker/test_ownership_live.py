"""Ownership against the real engine: the owner id lives in the journal (random, created once), so a
second daemon at the same state-dir path with a fresh journal never touches the first one's containers;
and a container made by hand with Turnout's labels is never routed, while the real ones are kept."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from controller.daemon import owner_of
from controller.rehearsal.loadgen import LoadConfig, run_load
from helpers.daemon import Daemon
from helpers.live import owner_containers, status

pytestmark = pytest.mark.docker

ALPHASEC = """
[services.alphasec]
image = "turnout-testapp:v1"
port = 8080
replicas = 2
[services.alphasec.health]
path = "/healthz"
interval = "200ms"
healthy = 1
start_timeout = "5s"
"""


def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


def serving(serve: Daemon, service: str) -> dict:
    result = serve.cli("status", service, "--json")
    if result.returncode != 0:
        return {}
    return json.loads(result.stdout)["services"].get(service) or {}


def running_ids(containers) -> set[str]:
    return {c.id for c in containers if c.status == "running"}


def test_a_fresh_journal_at_the_same_state_dir_path_leaves_the_first_daemons_containers(
        tmp_path, docker_client, test_run_labels):
    """The issue's case: daemon A deployed `alphasec`; daemon B, at the same state-dir path with an empty
    journal, got the same owner id (a hash of the path) and removed A's containers as "unknown"."""
    (tmp_path / "a").mkdir()
    a = Daemon(tmp_path / "a", test_run_labels, ALPHASEC)
    b = moved = None
    try:
        a.start()
        wait_until(lambda: (serving(a, "alphasec").get("stable") or {}).get("version") == "v1",
                   "A serves alphasec v1")
        theirs = owner_containers(docker_client, a)
        owner_a = owner_of(a.state_dir)
        assert len(running_ids(theirs)) == 2
        assert json.loads(a.cli("status", "--json").stdout)["owner"] == owner_a
        assert a.stop() == 0
        (tmp_path / "moved").mkdir()
        a.state_dir.rename(tmp_path / "moved" / "state")  # A's journal moves away; its path is free

        b = Daemon(tmp_path / "a", test_run_labels)  # the same state-dir path, a fresh journal
        b.start()  # returns once recovery ran and the admin API answers
        assert owner_of(b.state_dir) != owner_a
        info = json.loads(b.cli("status", "--json").stdout)
        assert info["owner"] == owner_of(b.state_dir) and info["services"] == {}
        assert "unknown service" not in b.log()
        assert running_ids(docker_client.containers.list(
            all=True, filters={"label": f"turnout.owner={owner_a}"})) == running_ids(theirs)

        moved = Daemon(tmp_path / "moved", test_run_labels, ALPHASEC)  # A again, from where it moved
        moved.start()
        wait_until(lambda: (serving(moved, "alphasec").get("stable") or {}).get("version") == "v1",
                   "A, moved, serves alphasec v1 again")
        assert owner_of(moved.state_dir) == owner_a  # the id moved with the journal
        assert running_ids(owner_containers(docker_client, moved)) == running_ids(theirs)  # its own, kept
    finally:
        for serve in (a, b, moved):
            if serve is not None and serve.process is not None:
                serve.stop()
        for container in docker_client.containers.list(
                all=True, filters={"label": [f"turnout.test-run={test_run_labels['turnout.test-run']}",
                                             "turnout.service=alphasec"]}):
            container.remove(force=True)


def hand_made(docker_client, daemon: Daemon, test_run_labels: dict[str, str]):
    """A container someone started with Turnout's labels for web's serving pool (and a name that sorts
    before the real ones): from turnout-testapp:v2, so an answer from it says "v2"."""
    labels = {**test_run_labels, "turnout.managed": "true", "turnout.owner": owner_of(daemon.state_dir),
              "turnout.service": "web", "turnout.version": "v1", "turnout.pool": "v1",
              "turnout.deployment": "d-000001", "turnout.port": "8080"}
    return docker_client.containers.run("turnout-testapp:v2", detach=True, labels=labels,
                                        name=f"turnout-web-v1-000000-{time.monotonic_ns() % 10**6}",
                                        ports={"8080/tcp": ("127.0.0.1", None)})


async def test_repair_keeps_the_real_release_and_never_routes_a_hand_made_container(
        daemon, docker_client, test_run_labels):
    """The issue's case: the repair kept `mine[:replicas]` ordered by state and name, so the hand-made
    container got the traffic and a real v1 container was removed."""
    real = {c.id: c for c in owner_containers(docker_client, daemon)}
    assert len(real) == 2
    stranger = await asyncio.to_thread(hand_made, docker_client, daemon, test_run_labels)
    try:
        await asyncio.to_thread(next(iter(real.values())).stop, timeout=1)  # the repair has work to do

        def repaired() -> bool:
            history = json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"]
            return any(d["strategy"] == "repair" and d["status"] != "running" for d in history)

        await asyncio.to_thread(wait_until, repaired, "a repair of web")
        info = status(daemon)
        stranger.reload()
        stranger_address = f"127.0.0.1:{stranger.ports['8080/tcp'][0]['HostPort']}"
        assert list(info["pools"]) == ["v1"] and len(info["pools"]["v1"]["upstreams"]) == 2
        assert stranger_address not in info["pools"]["v1"]["upstreams"]
        assert set(info["stable"]["containers"]) == set(real)  # the real v1 kept, restarted
        assert running_ids(owner_containers(docker_client, daemon)) == set(real) | {stranger.id}
        result = await run_load(LoadConfig(url=daemon.url, duration=1.0, concurrency=4, new_connections=1.0))
        assert result.sent > 10 and result.failed_by_proxy == 0 and result.versions() == ["v1"]
    finally:
        await asyncio.to_thread(stranger.remove, force=True)


def test_serve_prune_strays_removes_a_hand_made_container(daemon, docker_client, test_run_labels):
    stranger = hand_made(docker_client, daemon, test_run_labels)
    assert daemon.stop() == 0
    daemon.extra_args = ("--prune-strays",)
    daemon.start()
    wait_until(lambda: stranger.id not in {c.id for c in owner_containers(docker_client, daemon)},
               "the hand-made container removed")
    assert len(status(daemon)["stable"]["containers"]) == 2
    assert daemon.stop(signal.SIGTERM) == 0
