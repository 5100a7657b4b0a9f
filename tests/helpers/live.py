"""Shared pieces of the live Docker tests: the daemon fixture's config and status helpers."""

from __future__ import annotations

import json
import time

from helpers.daemon import Daemon

CONFIG = """
[services.web]
image = "turnout-testapp:v1"
port = 8080
replicas = 2
drain_timeout = "5s"
hold_timeout = "15s"
[services.web.health]
path = "/healthz"
interval = "200ms"
timeout = "1s"
healthy = 1
unhealthy = 2
start_timeout = "4s"
[services.web.canary]
steps = [20, 50, 100]
step_pause = "1s"
analysis_interval = "200ms"
min_requests = 10
max_error_rate = 0.05
"""


def owner_containers(docker_client, serve: Daemon, remove: bool = False) -> list:
    from controller.daemon import owner_of

    owner = owner_of(serve.state_dir)  # random, in the daemon's journal
    if owner is None:
        return []
    found = docker_client.containers.list(all=True, filters={"label": f"turnout.owner={owner}"})
    if remove:
        for container in found:
            container.remove(force=True)
    return found


def status(serve: Daemon) -> dict:
    result = serve.cli("status", "web", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]["web"]


def wait_for_version(serve: Daemon, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = serve.cli("status", "web", "--json")
        if result.returncode == 0:
            info = json.loads(result.stdout)["services"].get("web") or {}
            if (info.get("stable") or {}).get("version") == version and not info.get("deployment"):
                return
        time.sleep(0.2)
    raise AssertionError(f"web never served {version}:\n{serve.log()}")


