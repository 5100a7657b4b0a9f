"""A node's engine stopped mid-rolling (issue #16): n2's dockerd is stopped by its PID while a rolling
deploy runs, load going through n1's proxy. Swarm itself never replaces the lost tasks (restart condition
"none"; a down node's task may still read "running"): the engine reads them dead from the node's state,
and Turnout replaces them on n1. Through the surviving node's proxy nothing is lost, and the slots that
replace them get traffic only once healthy: shown from the logs (`readiness_before_routing`), since a
proxy retries a refused connection on another upstream and the load alone would not tell."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from controller.rehearsal.loadgen import LoadConfig, run_load
from helpers.live import status
from helpers.swarm_lab import LAB, NODE_ADDRESSES, engine_pid

pytestmark = pytest.mark.swarm


async def until(predicate, what: str, timeout: float = 120.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (seen := await predicate()):
        if loop.time() > deadline:
            raise AssertionError(f"not {what} within {timeout:g}s")
        await asyncio.sleep(0.2)
    return seen


def log_events(path: Path) -> list[dict]:
    """A process's structlog JSON lines, in the order it wrote them."""
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines()
            if line.startswith("{")]


def readiness_before_routing(controller: list[dict], proxy: list[dict], addresses: set[str]) -> str:
    """Why one of `addresses` may have had traffic before its first healthy probe, or "" when none.

    The controller probes a slot (`readiness.passed`, the first probe past the `healthy` threshold) and
    only then routes it: its router logs the upstream in `added` of a `table.changed`. A node proxy can
    route only to what a table it applied names, and logs it the same way. So for each address: its
    `readiness.passed` comes before the controller's router added it (one process, one log: line order)
    and before the proxy's router added it (two processes on one machine: the timestamps of causally
    ordered events)."""
    def added(events: list[dict]) -> dict[str, int]:
        first: dict[str, int] = {}
        for index, event in enumerate(events):
            if event.get("event") == "table.changed":
                for address in event.get("added") or ():
                    first.setdefault(address, index)
        return first

    def at(event: dict) -> datetime:
        return datetime.fromisoformat(event["timestamp"])

    healthy: dict[str, int] = {}
    for index, event in enumerate(controller):
        if event.get("event") == "readiness.passed":
            healthy.setdefault(event["address"], index)
    routed, proxied = added(controller), added(proxy)
    for address in sorted(addresses):
        if address not in healthy:
            return f"{address}: no readiness.passed in the controller's log"
        if address not in routed or address not in proxied:
            return f"{address}: never added by the controller's router and the node proxy's"
        if routed[address] < healthy[address]:
            return f"{address}: routed by the controller (line {routed[address]}) before its readiness " \
                   f"passed (line {healthy[address]})"
        if at(proxy[proxied[address]]) <= at(controller[healthy[address]]):
            return f"{address}: added by the node proxy at {proxy[proxied[address]]['timestamp']}, before " \
                   f"its readiness passed at {controller[healthy[address]]['timestamp']}"
    return ""


@pytest.fixture
def n2_restored(swarm_lab):
    """Brings n2's engine back (scripts/swarm-lab.sh up is idempotent) after the test stopped it."""
    yield
    result = subprocess.run([str(LAB), "up"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


async def test_a_node_lost_mid_rolling_is_replaced_on_the_other_and_its_proxy_loses_nothing(
        swarm_lab, swarm_node_proxies, n2_restored, tmp_path):
    serve, urls = swarm_node_proxies
    n1, n2 = NODE_ADDRESSES
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(LoadConfig(
        url=urls["n1"], duration=300.0, concurrency=4, new_connections=0.3, timeout=20.0,
        max_requests=300_000), stop=stop))
    try:
        deploy = asyncio.ensure_future(serve.acli("deploy", "web", "--image", "turnout-testapp:v2",
                                                  "--strategy", "rolling"))

        async def v2_routed() -> bool:
            info = status(serve)
            return bool(info["deployment"]) and any(
                p["upstreams"] for name, p in info["pools"].items() if name != info["stable"]["pool"])
        await until(v2_routed, "a v2 slot routed mid-rolling", 60)
        info = status(serve)
        before = {address for pool in info["pools"].values() for address in pool["upstreams"]}
        pid = engine_pid("n2")
        os.kill(pid, signal.SIGTERM)  # n2's engine stops: its tasks end, the manager marks it down

        code, out = await asyncio.wait_for(deploy, 300)

        async def whole_on_n1():  # 4 running slots serve, all on n1 (whichever version won)
            info = status(serve)
            pool = info["pools"].get(info["stable"]["pool"]) or {}
            hosts = [a.rpartition(":")[0] for a in pool.get("upstreams", {})]
            return info if not info["deployment"] and hosts == [n1] * 4 else None
        info = await until(whole_on_n1, f"4 slots serving on {n1} after losing {n2}", 180)
        await asyncio.sleep(1.0)  # traffic to the replacements, through n1's proxy
    finally:
        stop.set()
        result = await load
    summary = f"deploy: {code} {out[-2000:]}\nload: {result.summary()}"
    assert result.sent > 100, summary
    assert (result.failed_by_proxy, result.truncated, result.app_errors) == (0, 0, 0), summary
    assert info["stable"]["version"] in {"v1", "v2"}, info
    controller = log_events(serve.log_path)
    assert any(e.get("event") == "swarm.node_lost" for e in controller), summary
    # The slots serving now that did not serve when n2 went: they replace n2's (and the deploy's, if it
    # went on); each got traffic through n1's proxy only once its readiness passed.
    replacements = set(info["pools"][info["stable"]["pool"]]["upstreams"]) - before
    assert replacements, (before, info)
    assert readiness_before_routing(controller, log_events(tmp_path / "proxy-n1.log"), replacements) == ""
