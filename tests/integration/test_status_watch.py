"""`turnout status --watch` against a real admin socket serving the feed: it draws the picture in a
terminal (a pty), redraws in place, and Ctrl-C ends it cleanly (exit 0, cursor shown again)."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import sys

from aiohttp import web

from controller.api import add_controller_routes
from controller.config.model import ServiceConfig
from controller.dashboard.feed import Feed
from controller.dashboard.stream import add_feed_routes
from controller.deployer import Deployer
from controller.engine.docker import DockerBackend
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from proxy.admin import create_admin_app
from proxy.router import Router


async def test_status_watch_draws_in_place_and_ends_on_ctrl_c(tmp_path):
    router = Router()
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(DockerBackend(owner="test-watch"), ProxyControl(router), journal)
    static = ServiceConfig("api", upstreams=("127.0.0.1:9001",), health=None)
    deployer.configs["api"] = static
    deployer.proxy.install_static(static)
    feed = Feed(router, deployer, interval=0.1)
    feed.start()
    app = create_admin_app(router)
    add_controller_routes(app, deployer, "127.0.0.1:0")
    add_feed_routes(app, feed, None)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    socket = tmp_path / "admin.sock"
    await web.UnixSite(runner, str(socket)).start()
    master, slave = pty.openpty()
    command = [sys.executable, "-m", "controller.cli", "--socket", str(socket), "status", "--watch"]
    process = await asyncio.create_subprocess_exec(
        *command, stdin=slave, stdout=slave, stderr=slave,
        env={**os.environ, "COLUMNS": "150", "LINES": "40", "TERM": "xterm-256color"})
    os.close(slave)
    screen = b""

    async def read_until(predicate, timeout: float = 20.0) -> None:
        """Read the terminal until `predicate(screen)`, or until it closes when that is None."""
        nonlocal screen
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while predicate is None or not predicate(screen):
            assert loop.time() < deadline, screen[-2000:].decode(errors="replace")
            try:
                screen += await asyncio.wait_for(loop.run_in_executor(None, os.read, master, 65536), 1)
            except TimeoutError:
                continue
            except OSError:  # the pty closed: the process is gone
                break

    try:
        await read_until(lambda s: b"127.0.0.1:9001 healthy" in s)
        router.set_weights("api", {"static": 0})  # redrawn in place with the new weight
        await read_until(lambda s: re.search(r"static\s*│\s*0%", s.decode(errors="replace")[-3000:]))
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
        await read_until(None)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(master)
        await feed.stop()
        await runner.cleanup()
        journal.close()
    text = screen.decode(errors="replace")
    assert code == 0, text[-2000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "\x1b[?25h" in text  # the cursor is shown again
    assert text.count("\x1b[1A") > 5  # redrawn in place: the cursor went up over the last picture
