"""Recovery after `turnout serve` died in the middle of a rolling update: the state it left behind
(an unfinished deployment, one old container gone, one new one running) is rebuilt into v1 serving on
its full replica count, the half-started v2 removed, and the journal saying what happened."""

import asyncio
import json
import signal

import pytest

from controller.engine.base import ContainerSpec
from controller.engine.docker import DockerBackend
from controller.journal import Journal
from controller.rehearsal.loadgen import LoadConfig, run_load
from helpers.live import owner_containers, status, wait_for_version

pytestmark = pytest.mark.docker


async def test_killed_mid_rolling_update_recovers_to_full_old_version(daemon, docker_client, test_run_labels):
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    # What a crash between two rolling batches leaves: the deploy is open in the journal,
    # one v1 container was already replaced by a v2 one.
    journal = Journal(daemon.state_dir / "journal.sqlite3")
    record = journal.begin("web", "rolling", "v2", "turnout-testapp:v2", "v1", {"pool": "v2"})
    journal.step(record.id, "starting", version="v2", count=1)
    v1 = [c for c in owner_containers(docker_client, daemon) if c.labels["turnout.version"] == "v1"]
    assert len(v1) == 2
    await asyncio.to_thread(v1[0].remove, force=True)
    backend = DockerBackend(owner=journal.owner, extra_labels=test_run_labels)
    v2 = await backend.start(ContainerSpec(service="web", version="v2", image="turnout-testapp:v2", port=8080,
                                           deployment_id=record.id, pool="v2"))
    journal.record_container(v2.id, "web", "v2", record.id)  # as the daemon records its own
    await backend.close()
    journal.close()

    daemon.start()
    wait_for_version(daemon, "v1")
    info = status(daemon)
    assert list(info["pools"]) == ["v1"] and len(info["pools"]["v1"]["upstreams"]) == 2
    running = [c for c in owner_containers(docker_client, daemon) if c.status == "running"]
    assert sorted(c.labels["turnout.version"] for c in running) == ["v1", "v1"]
    history = {d["id"]: d for d in json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"]}
    assert history[record.id]["status"] == "rolled_back"
    repairs = [d for d in history.values() if d["strategy"] == "repair"]
    assert len(repairs) == 1 and repairs[0]["status"] == "succeeded"
    result = await run_load(LoadConfig(url=daemon.url, duration=2.0, concurrency=4, new_connections=0.5))
    assert result.sent > 20 and result.failed_by_proxy == 0 and result.versions() == ["v1"]
