"""Shared pieces of the live Docker tests: the daemon fixture's config and status helpers."""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlencode

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


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("turnout", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _get(serve: Daemon, path: str, params: dict[str, str]) -> tuple[int, dict]:
    connection = _UnixConnection(str(serve.state_dir / "admin.sock"), timeout=10)
    try:
        connection.request("GET", path + ("?" + urlencode(params) if params else ""))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def admin_get(serve: Daemon, path: str, **params: str) -> dict:
    """GET on the daemon's admin API over its unix socket: the JSON that `turnout status|history ... --json`
    prints, without starting a CLI (a Python process, ~0.5 s of CPU) for each poll."""
    code, data = _get(serve, path, params)
    assert code == 200, (path, code, data)
    return data


def status(serve: Daemon) -> dict:
    return admin_get(serve, "/v1/status/web")["services"]["web"]


def wait_for_version(serve: Daemon, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            code, data = _get(serve, "/v1/status/web", {})
        except OSError:  # not listening (yet)
            code, data = 0, {}
        info = (data["services"].get("web") or {}) if code == 200 else {}
        if (info.get("stable") or {}).get("version") == version and not info.get("deployment"):
            return
        time.sleep(0.05)
    raise AssertionError(f"web never served {version}:\n{serve.log()}")


