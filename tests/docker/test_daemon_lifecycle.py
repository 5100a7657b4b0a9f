"""`turnout serve`'s start against the real engine: a start that fails at a step after recovery (the
admin socket, the admin TCP listener) undoes every earlier step — no listening socket, no health probe,
no task left running, the journal and the Docker client closed."""

from __future__ import annotations

import asyncio
import socket
import sqlite3

import pytest

from controller.config.reader import parse_config
from controller.daemon import Daemon
from helpers.daemon import free_port

pytestmark = pytest.mark.docker


def config(tmp_path, port: int, admin_socket, admin_tcp: str | None = None):
    proxy = {"listen": f"127.0.0.1:{port}", "state_dir": str(tmp_path / "state"),
             "admin_socket": str(admin_socket)}
    if admin_tcp:
        proxy |= {"admin_tcp": admin_tcp, "admin_token": "t" * 32}
    # A routed service with health checks: its probes are tasks the failed start must stop.
    return parse_config({"proxy": proxy, "services": {"api": {
        "upstreams": [f"127.0.0.1:{free_port()}"],
        "health": {"path": "/healthz", "interval": "50ms", "timeout": "50ms"}}}})


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def unix_refused(path) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def assert_undone(daemon: Daemon, port: int) -> None:
    assert await refused(port)  # the proxy listener closed
    assert asyncio.all_tasks() == {asyncio.current_task()}  # no probe, no reconciler left
    assert daemon.health._session is not None and daemon.health._session.closed
    with pytest.raises(sqlite3.ProgrammingError):  # the journal closed
        daemon.journal.services()
    assert daemon.backend is not None and daemon.backend._client is None  # the Docker client closed


async def test_an_unusable_admin_socket_path_undoes_the_earlier_steps(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    port = free_port()
    daemon = Daemon(config(tmp_path, port, tmp_path / "not-a-dir" / "admin.sock"))
    with pytest.raises(OSError):
        await daemon.start()
    await assert_undone(daemon, port)


async def test_a_taken_admin_tcp_port_undoes_the_earlier_steps(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_tcp = f"127.0.0.1:{taken.getsockname()[1]}"
        port = free_port()
        daemon = Daemon(config(tmp_path, port, tmp_path / "admin.sock", admin_tcp))
        with pytest.raises(OSError):
            await daemon.start()
    assert await unix_refused(tmp_path / "admin.sock")  # the unix admin API, started before, closed
    await assert_undone(daemon, port)
