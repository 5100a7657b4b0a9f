"""`turnout serve --takeover` against the real engine: the daemon serving turnout-testapp on two replicas
is replaced ten times in a row under keep-alive and new-connection load, and no request fails or is
refused; the pools, the containers and the journal stay as they were, and the last daemon owns the
journal (a deploy runs on it). A deploy in progress refuses the hand-over and goes on."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from controller.rehearsal.loadgen import LoadConfig, Outcome, run_load
from helpers.live import owner_containers, status, wait_for_version
from helpers.takeover import atake_over, start_takeover

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


def running(docker_client, daemon) -> dict[str, str]:
    return {c.id: c.status for c in owner_containers(docker_client, daemon)}


async def test_ten_hand_overs_under_load_fail_nothing_and_touch_no_container(daemon, docker_client):
    before_pools, before_containers = status(daemon)["pools"], running(docker_client, daemon)
    before_history = json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"]
    stop = asyncio.Event()
    config = LoadConfig(url=daemon.url, rate=300, duration=240, new_connections=0.3, timeout=10)
    load = asyncio.create_task(run_load(config, stop=stop))
    pids = [daemon.process.pid]
    try:
        await asyncio.sleep(0.5)  # traffic flows before the first hand-over
        for _ in range(10):
            took = await atake_over(daemon)
            assert took["from_pid"] == pids[-1]
            pids.append(daemon.process.pid)
        await asyncio.sleep(0.5)  # and after the last
    finally:
        stop.set()
        result = await load
    counts = result.summary()
    refused = [r for r in result.records if r.outcome is Outcome.CONNECT_ERROR]
    assert result.sent > 500, counts
    assert not refused and result.failed_by_proxy == 0 and result.truncated == 0, counts
    assert result.app_errors == 0, counts
    assert len(set(pids)) == 11
    assert status(daemon)["pools"].keys() == before_pools.keys()
    assert {p: (v["weight"], sorted(v["upstreams"])) for p, v in status(daemon)["pools"].items()} == \
        {p: (v["weight"], sorted(v["upstreams"])) for p, v in before_pools.items()}
    assert running(docker_client, daemon) == before_containers  # nothing started, stopped or removed
    assert json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"] == before_history
    code, out = await daemon.acli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "bluegreen")
    assert code == 0, out  # the last daemon owns the journal and the containers
    wait_for_version(daemon, "v2")


async def test_a_deploy_in_progress_refuses_the_hand_over_and_the_deploy_goes_on(daemon):
    started = daemon.cli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "canary",
                         "--steps", "20,100", "--step-pause", "manual", "--detach")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 60
    while status(daemon)["pools"].get("v2", {}).get("weight") != 20:
        assert time.monotonic() < deadline, daemon.log()
        await asyncio.sleep(0.1)
    deployment = status(daemon)["deployment"]["id"]
    new, log_path = start_takeover(daemon)
    code = await asyncio.to_thread(new.wait, 60)
    out = log_path.read_text()
    assert code == 2, out
    assert (f"hand-over refused: a canary deploy of 'web' is in progress ({deployment}, to v2); a hand-over "
            "waits until no deploy runs") in out
    assert daemon.process.poll() is None
    assert status(daemon)["pools"]["v2"]["weight"] == 20  # untouched, and not frozen: it can go on
    code, out = await daemon.acli("promote", "web")
    assert code == 0, out
    wait_for_version(daemon, "v2")
    took = await atake_over(daemon)  # once it ended, the hand-over goes through
    assert took["from_pid"] != daemon.process.pid
    assert status(daemon)["stable"]["version"] == "v2"
