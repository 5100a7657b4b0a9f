"""The four strategies on Docker Swarm (the lab's two nodes, [engine] kind = "swarm"): a 4-replica
service spread over both nodes moves from v1 to v2 with no failed request, load sent through the
controller's proxy the whole time. Each slot is a one-replica Swarm service published in host mode."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from helpers.daemon import Daemon
from helpers.live import status, traffic
from helpers.swarm_lab import NODE_ADDRESSES

pytestmark = pytest.mark.swarm


def stable_nodes(info: dict, version: str) -> list[str]:
    """The node address of each upstream of the stable pool, which must be `version`'s 4 slots."""
    assert info["stable"]["version"] == version, info
    pool = info["stable"]["pool"]
    assert list(info["pools"]) == [pool] and info["pools"][pool]["weight"] == 100, info
    upstreams = info["pools"][pool]["upstreams"]
    assert len(upstreams) == 4, info
    return sorted(address.rpartition(":")[0] for address in upstreams)


def slots_running(swarm_lab, serve: Daemon) -> dict[str, int]:
    """version -> running slots of this daemon's services on the Swarm (read from the manager)."""
    from controller.daemon import owner_of

    counts: dict[str, int] = {}
    for service in swarm_lab.services.list(filters={"label": f"turnout.owner={owner_of(serve.state_dir)}"}):
        running = [t for t in service.tasks() if t["Status"]["State"] == "running"]
        version = service.attrs["Spec"]["Labels"]["turnout.version"]
        counts[version] = counts.get(version, 0) + len(running)
    return {v: n for v, n in counts.items() if n}


def eventually(read: Callable[[], object], wanted: object, timeout: float = 30.0) -> object:
    """`read()` once it equals `wanted`, or its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (seen := read()) != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    return seen


@pytest.mark.parametrize("strategy", ["rolling", "bigbang", "bluegreen", "canary"])
async def test_strategy_moves_4_slots_on_2_nodes_from_v1_to_v2_with_no_failed_request(swarm_lab, swarm_daemon,
                                                                                       strategy):
    assert set(stable_nodes(status(swarm_daemon), "v1")) == set(NODE_ADDRESSES)  # spread over both
    async with traffic(swarm_daemon) as results:
        code, out = await swarm_daemon.acli("deploy", "web", "--image", "turnout-testapp:v2",
                                            "--strategy", strategy)
    assert code == 0, out
    result = results[0]
    summary = result.summary()
    assert result.sent > 50, summary
    assert (result.failed_by_proxy, result.truncated, result.app_errors) == (0, 0, 0), summary
    assert {r.version for r in result.records if r.version} == {"v1", "v2"}, summary
    assert set(stable_nodes(status(swarm_daemon), "v2")) == set(NODE_ADDRESSES)
    # v1's slots stopped (or removed): blue-green stops its drained blue set after reporting success.
    assert eventually(lambda: slots_running(swarm_lab, swarm_daemon), {"v2": 4}) == {"v2": 4}


async def test_a_crashing_v2_fails_with_its_tasks_error_and_v1_keeps_serving(swarm_lab, swarm_daemon):
    async with traffic(swarm_daemon) as results:
        code, out = await swarm_daemon.acli("deploy", "web", "--image", "turnout-testapp:crash",
                                            "--strategy", "rolling")
    assert code == 1, out
    assert "task failed: task: non-zero exit (3)" in out  # the task's Status.Err, as the engine saw it
    result = results[0]
    assert (result.failed_by_proxy, result.truncated, result.app_errors) == (0, 0, 0), result.summary()
    assert {r.version for r in result.records if r.version} == {"v1"}
    assert set(stable_nodes(status(swarm_daemon), "v1")) == set(NODE_ADDRESSES)
    assert slots_running(swarm_lab, swarm_daemon) == {"v1": 4}
