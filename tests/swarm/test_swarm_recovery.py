"""The controller SIGKILLed mid-canary on Swarm recovers as on one host: started again, it rolls the
deploy back when the canary had not switched, forward when it had, by the same rules (controller/
recovery.py), and only the winning version's slots run on the Swarm afterwards."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from controller.rehearsal.loadgen import LoadConfig, run_load
from helpers.daemon import Daemon
from helpers.live import status, wait_for_version
from helpers.swarm_lab import NODE_ADDRESSES, SWARM_CONFIG

pytestmark = pytest.mark.swarm


def running_versions(swarm_lab, owner: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for service in swarm_lab.services.list(filters={"label": f"turnout.owner={owner}"}):
        running = sum(t["Status"]["State"] == "running" for t in service.tasks())
        if running:
            version = service.attrs["Spec"]["Labels"]["turnout.version"]
            counts[version] = counts.get(version, 0) + running
    return counts


@pytest.mark.parametrize(("point", "expected", "message"), [
    ("weight#1", "v1", "interrupted by a daemon restart; rolled back"),  # v2 at 20%: not switched
    ("drained#1", "v2", "completed after a daemon restart"),  # switched and v1 drained
])
def test_sigkilled_mid_canary_recovers_by_the_same_rules(tmp_path, swarm_lab, test_run_labels, point,
                                                               expected, message):
    from controller.daemon import owner_of

    daemon = Daemon(tmp_path, test_run_labels, SWARM_CONFIG)
    daemon.extra_env = {"TURNOUT_FAULT_KILL_AT": f"{point}@v2"}
    try:
        daemon.start()
        wait_for_version(daemon, "v1", timeout=60)
        started = daemon.cli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "canary",
                             "--detach")
        assert started.returncode in (0, 2), started.stdout + started.stderr  # 2: it died answering
        assert daemon.process is not None and daemon.process.wait(60) == -signal.SIGKILL, daemon.log()

        daemon.extra_env = {}
        daemon.start()
        wait_for_version(daemon, expected, timeout=60)
        info = status(daemon)
        pool = info["stable"]["pool"]
        assert list(info["pools"]) == [pool] and len(info["pools"][pool]["upstreams"]) == 4, info
        assert {a.rpartition(":")[0] for a in info["pools"][pool]["upstreams"]} == set(NODE_ADDRESSES)
        deployments = json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"]
        assert [d["message"] for d in deployments if d["to_version"] == "v2"] == [message], deployments
        assert running_versions(swarm_lab, owner_of(daemon.state_dir)) == {expected: 4}
        result = asyncio.run(run_load(LoadConfig(url=daemon.url, duration=0.6, concurrency=4,
                                                 new_connections=0.3, timeout=10.0)))
        summary = result.summary()
        assert result.sent > 20 and result.versions() == [expected], summary
        assert (result.failed_by_proxy, result.truncated, result.app_errors) == (0, 0, 0), summary
    finally:
        if daemon.process is not None:
            daemon.stop(signal.SIGKILL)
        daemon.remove_containers()
