"""`turnout serve` under socket activation, without systemd as PID 1: Debian's `systemd-socket-activate`
passes the listening socket exactly as systemd does (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), and a kill -9
of the daemon under load refuses no connection: the kernel queues new connections on the socket, which
outlives the process, until the next process accepts them.

Why a supervisor of the test's own: `systemd-socket-activate` without `--accept` binds the socket, waits
for the first connection and then *execs* the daemon, so after a kill -9 nothing holds the socket any more
and it cannot restart anything (with `--accept` it would spawn a daemon per connection, which is not how
Turnout runs). systemd itself keeps the socket in PID 1 and starts the service again (Restart=always).
The test plays PID 1: it binds the socket once and keeps it, and each generation of the daemon is started
as `systemd-socket-activate --fdname=http -- turnout serve ...` receiving that socket through the same
protocol ("file descriptors from sd_listen_fds() will be passed through", its --help says), so the
variables the daemon reads are the ones systemd-socket-activate sets. After the kill the test starts the
next generation at once, as systemd would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from controller.testing.plugin import CLI
from helpers.upstreams import RawClient

pytestmark = pytest.mark.docker

ACTIVATE = shutil.which("systemd-socket-activate")
CLIENTS = 8  # keep-alive clients sending back to back (each has at most one request in flight)
NEW_CONNECTION_EVERY = 4  # every 4th request of a client goes on a fresh connection
# What systemd does between fork and exec: the socket as descriptor 3, LISTEN_PID this very process.
EXEC_WITH_SOCKET = """
import os, sys
os.dup2(int(os.environ.pop("SOCKET_FD")), 3)  # dup2 leaves 3 inheritable
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execvp(sys.argv[1], sys.argv[1:])
"""


class Supervisor:
    """PID 1's part: the listening socket, and the generations of the daemon it is passed to."""

    def __init__(self, workdir, labels: dict[str, str], config: str) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.config_path = workdir / "turnout.toml"
        self.config_path.write_text(config)
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(1024)
        self.port = self.socket.getsockname()[1]
        self.labels = ",".join(f"{k}={v}" for k, v in labels.items())
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "serve.log"

    def start(self) -> subprocess.Popen[bytes]:
        """A new generation: fd 3 is the socket, LISTEN_PID the pid that systemd-socket-activate keeps
        when it execs the daemon (a tiny wrapper that execs it, so the pid is known before the exec)."""
        assert ACTIVATE is not None
        fd = self.socket.fileno()
        command = [*CLI, "--state-dir", str(self.state_dir), "serve", "--config", str(self.config_path)]
        env = {**os.environ, "TURNOUT_CONTAINER_LABELS": self.labels, "SOCKET_FD": str(fd)}
        # systemd-socket-activate gives its child a fresh environment (PATH, HOME, ... and LISTEN_*):
        # what the daemon needs besides is passed by name, as Environment= would in a unit.
        passed = [f"--setenv={name}" for name in ("TURNOUT_CONTAINER_LABELS", "PYTHONPATH") if name in env]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", EXEC_WITH_SOCKET, ACTIVATE, "--fdname=http", *passed, "--", *command],
                pass_fds=(fd,), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self.process

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no drain, no goodbye
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.socket.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


@dataclass
class Load:
    """Keep-alive clients plus fresh connections against the port; each request's fate recorded."""

    port: int
    kill_at: float | None = None  # monotonic time of the kill
    succeeded: int = 0
    after_restart: int = 0  # successes on connections opened after the kill
    refused: int = 0
    in_flight_failed: list[str] = field(default_factory=list)  # started before the kill, on the old process
    stale_failed: list[str] = field(default_factory=list)  # started after it on a connection the old had
    other_failed: list[str] = field(default_factory=list)  # anything else: must never happen
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self) -> None:
        conn: RawClient | None = None
        opened = 0.0
        n = 0
        while not self.stop.is_set():
            n += 1
            if conn is not None and n % NEW_CONNECTION_EVERY == 0:
                await conn.close()
                conn = None
            started = time.monotonic()
            try:
                if conn is None:
                    opened = time.monotonic()
                    conn = await RawClient.connect(self.port)
                response = await conn.request("GET", "/", host="app.localhost", timeout=60)
                if response.status != 200:
                    raise AssertionError(f"status {response.status}: {response.body[:200]!r}")
            except ConnectionRefusedError:
                self.refused += 1
                conn = None
                continue
            except (OSError, asyncio.IncompleteReadError, AssertionError, TimeoutError) as exc:
                what = f"{type(exc).__name__}: {exc}"
                if self.kill_at is not None and opened < self.kill_at:
                    (self.in_flight_failed if started < self.kill_at else self.stale_failed).append(what)
                else:
                    self.other_failed.append(what)
                if conn is not None:
                    await conn.close()
                conn = None
                continue
            self.succeeded += 1
            if self.kill_at is not None and opened > self.kill_at:
                self.after_restart += 1
            self.progress.set()
        if conn is not None:
            await conn.close()

    async def until(self, predicate) -> None:
        while not predicate():
            self.progress.clear()
            await self.progress.wait()


@pytest.mark.skipif(sys.platform != "linux", reason="socket activation is Linux's")
async def test_kill_9_under_socket_activation_refuses_no_connection(tmp_path, docker_client,
                                                                     test_run_labels):
    assert ACTIVATE is not None, "no systemd-socket-activate: scripts/ensure-systemd-socket-activate.sh"

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)  # so that the kill finds requests in flight
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/", slowish)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    supervisor = Supervisor(tmp_path, test_run_labels, f"""
[proxy]
access_log = false
[services.app]
upstreams = ["127.0.0.1:{upstream}"]
host = "app.localhost"
""")
    load = Load(supervisor.port)
    clients: list[asyncio.Task[None]] = []
    try:
        first = supervisor.start()
        clients = [asyncio.create_task(load.client()) for _ in range(CLIENTS)]
        # The first connection makes systemd-socket-activate exec the daemon; then traffic flows.
        await _within(60, load.until(lambda: load.succeeded >= 300), supervisor, load)
        assert first.poll() is None, supervisor.log()
        assert "proxy.socket_activated" in supervisor.log()
        load.kill_at = time.monotonic()
        supervisor.kill()
        supervisor.start()  # Restart=always
        await _within(60, load.until(lambda: load.after_restart >= 300), supervisor, load)
    finally:
        load.stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        supervisor.stop()
        await runner.cleanup()
    report = (f"{load.succeeded} succeeded ({load.after_restart} on connections opened after the kill), "
              f"{load.refused} refused, {len(load.in_flight_failed)} in flight on the killed process "
              f"failed, {len(load.stale_failed)} sent after the kill on its connections failed, "
              f"other failures: {load.other_failed[:5]}")
    print(report)  # the count the issue asks to report (pytest -s, or -rA)
    assert load.refused == 0, report
    assert load.other_failed == [], report
    # Only what the killed process held: at most one request in flight per client when it died.
    assert len(load.in_flight_failed) + len(load.stale_failed) <= CLIENTS, report


async def _within(seconds: float, waiting, supervisor: Supervisor, load: Load) -> None:
    try:
        await asyncio.wait_for(waiting, seconds)
    except TimeoutError:
        raise AssertionError(f"not within {seconds}s: {load.succeeded} succeeded, {load.refused} refused, "
                             f"failed {load.in_flight_failed[:3]} {load.stale_failed[:3]} "
                             f"{load.other_failed[:3]}\n{supervisor.log()}") from None


async def test_named_http_and_https_sockets_of_systemd_socket_activate_serve(tmp_path, test_run_labels):
    """The tool's own sockets, named as two socket units would name them (`--fdname=http:https`): each
    listener serves on its socket, whatever the file says its address is."""
    assert ACTIVATE is not None, "no systemd-socket-activate: scripts/ensure-systemd-socket-activate.sh"
    from controller.testing.plugin import free_port
    from helpers.certs import CertAuthority

    runner, upstream = await _hello_upstream()
    ca = CertAuthority.create(tmp_path / "ca")
    ca.write(tmp_path / "certs", "app", ["app.test"])
    (tmp_path / "turnout.toml").write_text(f"""
[proxy]
listen = "127.0.0.1:1"          # replaced by the socket named http
access_log = false
[proxy.tls]
listen = "127.0.0.1:2"          # replaced by the socket named https
certs_dir = "{tmp_path / 'certs'}"
redirect_http = false
[services.app]
upstreams = ["127.0.0.1:{upstream}"]
host = "app.test"
""")
    http, https = free_port(), free_port()
    env = {**os.environ, "TURNOUT_CONTAINER_LABELS": ",".join(f"{k}={v}" for k, v in test_run_labels.items())}
    log_path = tmp_path / "serve.log"
    passed = [f"--setenv={name}" for name in ("TURNOUT_CONTAINER_LABELS", "PYTHONPATH") if name in env]
    config = str(tmp_path / "turnout.toml")
    serve = [*CLI, "--state-dir", str(tmp_path / "state"), "serve", "--config", config]
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            ACTIVATE, "-l", f"127.0.0.1:{http}", "-l", f"127.0.0.1:{https}", "--fdname=http:https", *passed,
            "--", *serve, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        context = ca.client_context()
        tls_client = await _connect_when_bound(https, ssl=context, server_hostname="app.test")
        response = await tls_client.request("GET", "/", host="app.test", timeout=60)
        assert response.status == 200 and response.body == b"hello\n", log_path.read_text()
        await tls_client.close()
        plain = await _connect_when_bound(http)
        response = await plain.request("GET", "/", host="app.test", timeout=60)
        assert response.status == 200 and response.body == b"hello\n"
        await plain.close()
        log = log_path.read_text()
        assert f'"listen": "127.0.0.1:{https}", "configured": "127.0.0.1:2"' in log, log
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
        await runner.cleanup()


async def _hello_upstream() -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello\n")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _connect_when_bound(port: int, **tls) -> RawClient:
    """systemd-socket-activate binds its addresses right after it starts: connect once it did."""
    async with asyncio.timeout(30):
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, **tls)
                return RawClient(reader, writer)
            except ConnectionRefusedError:
                await asyncio.sleep(0.02)
