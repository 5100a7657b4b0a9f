"""What goes on across `turnout serve --takeover`, as real processes: a remote proxy following the
controller ([proxy] routing_listen) keeps following, since the routing listener's socket is handed over
with the others (its pulls wait in the shared socket, never refused); and the request counters go on
from the old daemon's totals instead of restarting at zero."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from helpers.daemon import Daemon, free_port
from helpers.takeover import atake_over, events
from helpers.upstreams import fetch

pytestmark = pytest.mark.timeout(120)

TOKEN = "r" * 40
TURNOUT = str(Path(sys.executable).parent / "turnout")


@pytest.fixture
def upstream_names() -> tuple[str, ...]:
    return ("blue", "green")


async def until_served_by(port: int, want: str, timeout: float = 20.0) -> None:
    """Until a request through the proxy on `port` is answered by the upstream named `want`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = None
    while seen != want:
        if loop.time() > deadline:
            raise AssertionError(f"the proxy still answers from {seen!r}, not {want!r}")
        try:
            answer = await fetch(port)
            seen = answer.header("x-upstream") if answer.status == 200 else f"status {answer.status}"
        except OSError as exc:
            seen = str(exc)
        if seen != want:
            await asyncio.sleep(0.02)


@dataclass
class Following:
    serve: Daemon  # the controller (`turnout serve` with a routing listener)
    node_port: int  # the following proxy's listener
    node_log: Path


@pytest.fixture
def following(tmp_path: Path, ups) -> Iterator[Following]:
    routing_port = free_port()
    serve = Daemon(tmp_path, {}, f"""
[proxy]
access_log = false
drain_timeout = "5s"
routing_listen = "127.0.0.1:{routing_port}"
routing_token = "{TOKEN}"
[services.api]
upstreams = ["{ups[0].address}"]
""")
    serve.start()
    node_port, node_log = free_port(), tmp_path / "node.log"
    with node_log.open("wb") as out:
        node = subprocess.Popen(
            [TURNOUT, "serve", "--role", "proxy", "--loop", "asyncio", "--listen", f"127.0.0.1:{node_port}",
             "--controller", f"http://127.0.0.1:{routing_port}", "--token", TOKEN, "--id", "edge"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield Following(serve, node_port, node_log)
        assert node.poll() is None, node_log.read_text(errors="replace")[-4000:]
    finally:
        if node.poll() is None:
            os.kill(node.pid, signal.SIGTERM)
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(node.pid, signal.SIGKILL)
            node.wait()
        serve.stop()


async def test_a_following_proxy_keeps_following_across_a_hand_over(following, ups):
    serve = following.serve
    await until_served_by(following.node_port, "blue")
    old_log = serve.log_path
    await atake_over(serve)
    (begun,) = events(old_log, "handover.begun")
    assert begun["passed"] == ["http", "routing", "lock"]
    # A weight change on the new daemon reaches the proxy: every request to green.
    admin = aiohttp.UnixConnector(path=str(serve.state_dir / "admin.sock"))
    async with aiohttp.ClientSession(connector=admin, headers={"X-Turnout-Client": "test"}) as session:
        spec = {"name": "api", "pools": [{"name": "blue", "weight": 0, "upstreams": [ups[0].address]},
                                         {"name": "green", "weight": 100, "upstreams": [ups[1].address]}]}
        async with session.put("http://turnout/v1/services/api", json=spec) as answer:
            assert answer.status == 200, await answer.text()
    await until_served_by(following.node_port, "green")
    log = following.node_log.read_text(errors="replace")
    assert "follower.unreachable" not in log, log[-4000:]  # its pulls were never refused nor cut
    assert log.count("follower.applied") >= 3, log[-4000:]  # the first table, the new daemon's, green


@pytest.fixture
def serve(tmp_path: Path, ups) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path, {}, f"""
[proxy]
access_log = false
drain_timeout = "5s"
[services.api]
upstreams = ["{ups[0].address}"]
""")
    daemon.start()
    yield daemon
    daemon.stop()


async def counters(serve: Daemon) -> dict:
    admin = aiohttp.UnixConnector(path=str(serve.state_dir / "admin.sock"))
    async with aiohttp.ClientSession(connector=admin, headers={"X-Turnout-Client": "test"}) as session:
        async with session.get("http://turnout/v1/services/api/counters") as answer:
            assert answer.status == 200, await answer.text()
            return await answer.json()


async def test_request_counters_go_on_from_the_old_daemons_totals(serve):
    for _ in range(5):
        assert (await fetch(serve.port)).status == 200
    before = await counters(serve)
    (pool,) = before
    assert before[pool]["requests"] == 5
    await atake_over(serve)
    assert await counters(serve) == before  # the same totals (and latency quantiles), not zero
    assert (await fetch(serve.port)).status == 200
    after = await counters(serve)
    assert (after[pool]["requests"], after[pool]["by_class"]["2xx"]) == (6, 6)
