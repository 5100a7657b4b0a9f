"""The Swarm lab (scripts/swarm-lab.sh): two dockerd in two network namespaces, one Swarm. `make test`
brings it up before the swarm tests and down after; run alone, the session brings it up (as root) and
takes down what it brought up. Where the lab cannot come up the tests fail in CI (CI=true), never skip;
elsewhere (no root, no dockerd) they are skipped with the reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.testing.plugin import CLI
from helpers.daemon import Daemon, free_port
from helpers.live import wait_for_version
from helpers.swarm_lab import (
    BRIDGE_ADDRESS,
    LAB,
    MANAGER,
    NODE_ADDRESSES,
    NODE_NAMESPACES,
    NODE_PROXY_PORT,
    SWARM_CONFIG,
    lab_problem,
)


@pytest.fixture(scope="session")
def swarm_lab(test_run_labels: dict[str, str]) -> Iterator[Any]:
    """A client of the lab's manager; services this test run left behind are removed at the end."""
    import docker

    brought_up = False
    if lab_problem() is not None and os.geteuid() == 0:
        result = subprocess.run([str(LAB), "up"], capture_output=True, text=True, timeout=300)
        brought_up = result.returncode == 0
        if not brought_up:
            pytest.fail(f"scripts/swarm-lab.sh up failed ({result.returncode}):\n{result.stderr[-3000:]}")
    problem = lab_problem()
    if problem is not None:
        message = f"the Swarm lab is not up: {problem} (run `sudo scripts/swarm-lab.sh up`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    client = docker.DockerClient(base_url=MANAGER)
    yield client
    (label, value), = test_run_labels.items()
    for service in client.services.list(filters={"label": f"{label}={value}"}):
        try:
            service.remove()
        except docker.errors.NotFound:
            pass
    client.close()
    if brought_up:
        subprocess.run([str(LAB), "down"], capture_output=True, text=True, timeout=300, check=True)


@pytest.fixture
def swarm_daemon(tmp_path: Path, swarm_lab: Any, test_run_labels: dict[str, str]) -> Iterator[Daemon]:
    """`turnout serve` with [engine] kind = "swarm", serving turnout-testapp:v1 on 4 slots."""
    serve = Daemon(tmp_path, test_run_labels, SWARM_CONFIG)
    serve.start()
    try:
        wait_for_version(serve, "v1", timeout=60)
        yield serve
    finally:
        serve.stop()
        serve.remove_containers()


ROUTING_TOKEN = "s" * 40


@pytest.fixture
def swarm_node_proxies(tmp_path: Path, swarm_lab: Any,
                       test_run_labels: dict[str, str]) -> Iterator[tuple[Daemon, dict[str, str]]]:
    """The controller (root namespace, its routing listener on the lab's bridge) serving 4 slots on the
    Swarm, and a `turnout serve --role proxy` in each node's network namespace listening on the node's
    address: (daemon, {proxy id: proxy URL}). As on real machines, one proxy per node."""
    routing = free_port()
    config = (f'[proxy]\nrouting_listen = "{BRIDGE_ADDRESS}:{routing}"\nrouting_token = "{ROUTING_TOKEN}"\n'
              + SWARM_CONFIG)
    serve = Daemon(tmp_path, test_run_labels, config)
    serve.start()
    processes: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        wait_for_version(serve, "v1", timeout=60)
        for number, (namespace, address) in enumerate(zip(NODE_NAMESPACES, NODE_ADDRESSES, strict=True), 1):
            proxy_id = f"n{number}"
            listen = f"{address}:{NODE_PROXY_PORT}"
            with (tmp_path / f"proxy-{proxy_id}.log").open("wb") as log:
                # nsenter execs the proxy in place: the PID is the proxy's, stopped by it below.
                processes.append(subprocess.Popen(
                    ["nsenter", f"--net={namespace}", "--", *CLI, "serve", "--role", "proxy",
                     "--listen", listen, "--controller", f"http://{BRIDGE_ADDRESS}:{routing}",
                     "--token", ROUTING_TOKEN, "--id", proxy_id],
                    stdout=log, stderr=log, cwd=tmp_path))
            urls[proxy_id] = f"http://{listen}"
        wait_following(serve, set(urls))
        yield serve, urls
    finally:
        for process in processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
            process.wait(30)
        serve.stop()
        serve.remove_containers()


def wait_following(serve: Daemon, ids: set[str], timeout: float = 60.0) -> None:
    """Until exactly the proxies `ids` follow the controller, each having applied a routing table (a
    proxy acks only what it applied, and it listens before its first pull)."""
    deadline = time.monotonic() + timeout
    while True:
        done = serve.cli("nodes", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        proxies = json.loads(done.stdout)["proxies"]
        if {p["id"] for p in proxies} == ids and all(p["acked_generation"] >= 0 for p in proxies):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not the proxies {sorted(ids)} following the controller: {done.stdout}")
        time.sleep(0.2)
