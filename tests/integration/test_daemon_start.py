"""`turnout serve`'s start, on real loopback sockets: a start that fails halfway undoes what it did
(every start step registered its own stop), and an unsafe state dir stops it before anything listens.
The steps after the Docker engine is first asked (recovery, the admin API) are tried in
tests/docker/test_daemon_lifecycle.py."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat

import pytest

from controller.config.reader import parse_config
from controller.daemon import Daemon
from controller.errors import TurnoutError
from helpers.daemon import free_port


def daemon_in(state_dir, port: int) -> Daemon:
    return Daemon(parse_config({"proxy": {"listen": f"127.0.0.1:{port}", "state_dir": str(state_dir),
                                          "admin_socket": str(state_dir / "admin.sock")}}))


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def other_tasks() -> set[asyncio.Task]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_a_start_failing_at_the_journal_closes_the_listener_it_opened(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "journal.sqlite3") as db:  # a journal from a newer Turnout: refused
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (99)")
    db.close()
    port = free_port()
    daemon = daemon_in(state, port)
    with pytest.raises(TurnoutError, match="journal schema 99 is newer"):
        await daemon.start()
    assert await refused(port)  # the proxy listener (an earlier step) was closed
    assert daemon.health._session is not None and daemon.health._session.closed  # health stopped
    assert other_tasks() == set()
    await daemon.stop()  # stopping what never started is harmless


async def test_a_symlinked_state_dir_stops_the_start_before_anything_listens(tmp_path):
    target = tmp_path / "real"
    target.mkdir(mode=0o755)
    (tmp_path / "state").symlink_to(target)
    port = free_port()
    daemon = daemon_in(tmp_path / "state", port)
    try:
        with pytest.raises(TurnoutError, match=rf"state dir {tmp_path / 'state'}: is a symlink"):
            await daemon.start()
        assert await refused(port)
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o755  # no chmod through the link
        assert list(target.iterdir()) == []  # no journal made there either
    finally:
        await daemon.stop()
