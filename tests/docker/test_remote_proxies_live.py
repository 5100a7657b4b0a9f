"""Remote proxies with the real engine: `turnout serve` (controller, with a routing listener) and two
`turnout serve --role proxy` processes on 127.0.0.1, the test app in real containers. A canary under
load through both proxies loses nothing and reaches both; a blue-green's drain waits for a slow request
in flight on a remote proxy before the old container is stopped; `turnout nodes` shows both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from controller.rehearsal.loadgen import LoadConfig, LoadResult, run_load
from controller.testing.plugin import CLI, free_port
from helpers.daemon import Daemon
from helpers.live import CONFIG, owner_containers, status, wait_for_version

pytestmark = pytest.mark.docker

TOKEN = "r" * 40


@pytest.fixture
def nodes(tmp_path, docker_client, test_run_labels):
    """The controller and two proxies following it: (daemon, {proxy id: port}, {proxy id: process})."""
    routing = free_port()
    config = f'[proxy]\nrouting_listen = "127.0.0.1:{routing}"\nrouting_token = "{TOKEN}"\n' + CONFIG
    serve = Daemon(tmp_path, test_run_labels, config)
    serve.start()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    ports = {}
    try:
        wait_for_version(serve, "v1")
        for proxy_id in ("node-a", "node-b"):
            ports[proxy_id] = free_port()
            with (tmp_path / f"{proxy_id}.log").open("wb") as log:
                processes[proxy_id] = subprocess.Popen(
                    [*CLI, "serve", "--role", "proxy", "--listen", f"127.0.0.1:{ports[proxy_id]}",
                     "--controller", f"http://127.0.0.1:{routing}", "--token", TOKEN, "--id", proxy_id],
                    stdout=log, stderr=log, cwd=tmp_path)
        yield serve, ports, processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
            process.wait(30)
        serve.stop()
        owner_containers(docker_client, serve, remove=True)


async def wait_nodes(serve: Daemon, count: int) -> list[dict]:
    for _ in range(300):
        code, out = await serve.acli("nodes", "--json")
        assert code == 0, out
        proxies = json.loads(out)["proxies"]
        if len(proxies) == count and all(p["acked_generation"] >= 0 for p in proxies):
            return proxies
        await asyncio.sleep(0.1)
    raise AssertionError(f"not {count} proxies following: {out}")


@asynccontextmanager
async def load(ports: dict[str, int]) -> AsyncIterator[list[LoadResult]]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_load(LoadConfig(
        url=f"http://127.0.0.1:{port}", duration=120.0, concurrency=4, new_connections=0.3, timeout=20.0,
        max_requests=100_000), stop=stop)) for port in ports.values()]
    results: list[LoadResult] = []
    try:
        yield results
    finally:
        stop.set()
        results.extend(await asyncio.gather(*tasks))


async def test_a_canary_through_two_remote_proxies_loses_nothing_and_drains_remotely(nodes):
    serve, ports, _ = nodes
    await wait_nodes(serve, 2)
    async with load(ports) as results:
        code, out = await serve.acli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "canary")
    assert code == 0, out
    for result in results:  # each proxy: no request lost, and it served both versions during the steps
        summary = result.summary()
        assert result.sent > 50 and result.failed_by_proxy == 0 and result.truncated == 0, summary
        assert {r.version for r in result.records if r.version} >= {"v1", "v2"}, summary
    assert status(serve)["stable"]["version"] == "v2"
    proxies = await wait_nodes(serve, 2)
    assert sorted(p["id"] for p in proxies) == ["node-a", "node-b"]

    # A slow request in flight on node-b while blue-green switches back to v1: the old set (v2) is
    # stopped only after it finished there.
    async with aiohttp.ClientSession() as session:
        slow = asyncio.ensure_future(session.get(f"http://127.0.0.1:{ports['node-b']}/cgi-bin/slow?3"))
        for _ in range(100):  # node-b reported it to the controller
            code, out = await serve.acli("nodes", "--json")
            if any(p["id"] == "node-b" and p["in_flight"] for p in json.loads(out)["proxies"]):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"node-b never reported the slow request: {out}")
        code, out = await serve.acli("deploy", "web", "--image", "turnout-testapp:v1", "--strategy",
                                     "bluegreen", "--verify", "0")
        response = await slow
        assert response.status == 200 and (await response.text()).startswith("v2 slow")
    assert code == 0, out
    code, out = await serve.acli("status", "--proxies")
    assert code == 0 and "node-a" in out and "node-b" in out, out
    code, out = await serve.acli("status", "--proxies", "--json")
    assert code == 0 and sorted(p["id"] for p in json.loads(out)["proxies"]) == ["node-a", "node-b"], out


async def test_a_proxy_killed_mid_canary_is_dropped_and_the_deploy_finishes(nodes):
    serve, ports, processes = nodes
    await wait_nodes(serve, 2)
    async with load({"node-a": ports["node-a"]}) as results:
        deploy = asyncio.ensure_future(serve.acli("deploy", "web", "--image", "turnout-testapp:v2",
                                                  "--strategy", "canary", "--step-pause", "manual"))
        for _ in range(300):  # at the first weight step
            info = status(serve)
            if info["deployment"] and len(info["pools"]) == 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the canary never reached its first step: {info}")
        os.kill(processes["node-b"].pid, signal.SIGKILL)  # the node dies without a goodbye
        processes["node-b"].wait(10)
        code, out = await serve.acli("promote", "web")
        assert code == 0, out
        code, out = await asyncio.wait_for(deploy, 120)
    assert code == 0, out
    summary = results[0].summary()
    assert results[0].failed_by_proxy == 0 and results[0].truncated == 0, summary
    proxies = await wait_nodes(serve, 1)
    assert [p["id"] for p in proxies] == ["node-a"]
    assert "proxy.dropped" in serve.log() and "node-b" in serve.log()
