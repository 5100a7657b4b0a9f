"""Shared pieces of the live Docker tests: the daemon fixture's config and status helpers."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlencode

from controller.rehearsal.loadgen import LoadConfig, LoadResult, Marks, run_load
from helpers.daemon import Daemon
from proxy.admin import CLIENT_HEADER

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


@contextmanager
def configless_daemon(workdir: Path, labels: dict[str, str], docker_client,
                      stop_signal: int = signal.SIGTERM) -> Iterator[Daemon]:
    """`turnout serve` with no config file (services come by `turnout apply`), not started yet; when the
    block ends it is stopped with `stop_signal` (if running) and its containers are removed."""
    daemon = Daemon(workdir, labels)
    try:
        yield daemon
    finally:
        if daemon.process is not None:
            daemon.stop(stop_signal)
        owner_containers(docker_client, daemon, remove=True)


def apply(serve: Daemon, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`turnout apply -f` of `text`, written to the daemon's workdir as turnout.toml."""
    path = serve.workdir / "turnout.toml"
    path.write_text(text)
    return serve.cli("apply", "-f", str(path), *args, timeout=120)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("turnout", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def _get(serve: Daemon, path: str, params: dict[str, str]) -> tuple[int, dict]:
    return _request(serve, "GET", path + ("?" + urlencode(params) if params else ""))


def _request(serve: Daemon, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = _UnixConnection(str(serve.state_dir / "admin.sock"), timeout=10)
    try:
        if body is None:
            connection.request(method, path)
        else:  # a change: the admin API wants to know who asks (proxy/admin.py)
            connection.request(method, path, json.dumps(body),
                               {"Content-Type": "application/json", CLIENT_HEADER: "test"})
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


def admin_post(serve: Daemon, path: str, body: dict) -> tuple[int, dict]:
    """POST on the daemon's admin API: what the CLI sends (e.g. `turnout deploy --detach` is POST
    /v1/deploy), without starting a CLI process. Raises OSError when the daemon drops the connection."""
    return _request(serve, "POST", path, body)


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




@asynccontextmanager
async def load_while(urls: Mapping[str, str], marks: Marks | None = None,
                     **load: object) -> AsyncIterator[dict[str, LoadResult]]:
    """Keep-alive and new-connection clients to each of `urls` for as long as the block runs (bounded at
    120 s); `load` overrides LoadConfig's fields. Each URL's result is in the yielded dict, under its
    key, once the block ends."""
    stop = asyncio.Event()
    settings = {"duration": 120.0, "concurrency": 6, "new_connections": 0.3, "timeout": 20.0,
                "max_requests": 200_000, **load}
    tasks = {key: asyncio.create_task(run_load(LoadConfig(url=url, **settings), marks, stop=stop))  # type: ignore[arg-type]
             for key, url in urls.items()}
    results: dict[str, LoadResult] = {}
    await asyncio.sleep(0.5)  # traffic flows before the deploy starts
    try:
        yield results
    finally:
        await asyncio.sleep(0.5)  # and after it finished
        stop.set()
        for key, task in tasks.items():
            results[key] = await task


@asynccontextmanager
async def traffic(serve: Daemon, marks: Marks | None = None,
                  **load: object) -> AsyncIterator[list[LoadResult]]:
    """`load_while` through `serve`'s proxy; its result is the yielded list's one item once the block ends."""
    results: list[LoadResult] = []
    async with load_while({"proxy": serve.url}, marks, **load) as by_key:
        yield results
    results.append(by_key["proxy"])
