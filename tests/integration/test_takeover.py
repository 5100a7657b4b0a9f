"""`turnout serve --takeover` as real processes, with a static upstream (no container involved; the
Docker test tests/docker/test_takeover_live.py has the managed services): hand-overs under load lose
nothing, one state dir has one owner, and each bad case says what is wrong while the old daemon serves on."""

from __future__ import annotations

import asyncio
import socket
import subprocess

import aiohttp
import pytest

from controller.rehearsal.loadgen import LoadConfig, LoadResult, Marks, Outcome, run_load
from controller.state_lock import StateLock
from helpers.certs import CertAuthority
from helpers.daemon import Daemon, free_port
from helpers.takeover import atake_over, events, start_takeover
from helpers.upstreams import fetch

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def upstream_names() -> tuple[str, ...]:
    return ("static",)


@pytest.fixture
def serve(tmp_path, ups):
    config = f"""
[proxy]
access_log = false
drain_timeout = "5s"
[services.api]
upstreams = ["{ups[0].address}"]
"""
    daemon = Daemon(tmp_path, {}, config)
    daemon.start()
    yield daemon
    daemon.stop()


async def test_three_hand_overs_under_keep_alive_and_new_connection_load_fail_nothing(serve):
    stop, marks = asyncio.Event(), Marks()
    load = asyncio.create_task(run_load(LoadConfig(url=serve.url, rate=300, duration=60, new_connections=0.3,
                                                   timeout=10), marks, stop=stop))
    pids = [serve.process.pid]
    try:
        for _ in range(3):
            took = await _marked_take_over(serve, marks)
            assert took["from_pid"] == pids[-1]
            pids.append(serve.process.pid)
    finally:
        stop.set()
        result = await load
    counts = result.summary()
    assert result.sent > 100, counts
    assert result.failed_by_proxy == 0 and result.truncated == 0, _failures(result)
    assert not [r for r in result.records if r.outcome is Outcome.CONNECT_ERROR], _failures(result)
    assert len(set(pids)) == 4 and (await fetch(serve.port)).status == 200


async def test_a_second_serve_on_the_same_state_dir_is_refused_naming_the_running_one(serve):
    second = Daemon(serve.workdir, {}, serve.config_path)  # same state dir, another port: refused first
    code, out = await asyncio.to_thread(_run, second.serve_args(), second)
    assert code == 2, out
    assert f"is in use by a running turnout serve (pid {serve.process.pid})" in out and "--takeover" in out
    assert (await fetch(serve.port)).status == 200


async def test_takeover_without_a_running_daemon_says_there_is_none(tmp_path):
    lone = Daemon(tmp_path, {}, "[proxy]\naccess_log = false\n")
    code, out = await asyncio.to_thread(_run, [*lone.serve_args(), "--takeover"], lone)
    assert code == 2, out
    assert "no daemon to take over" in out and str(lone.state_dir) in out


async def test_takeover_with_an_unreachable_admin_socket_names_it(tmp_path):
    lone = Daemon(tmp_path, {}, "[proxy]\naccess_log = false\n")
    lone.state_dir.mkdir(mode=0o700)
    lock = StateLock.acquire(lone.state_dir)  # a daemon holds the state dir, but its socket is dead
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(lone.state_dir / "admin.sock"))
    stale.close()
    try:
        code, out = await asyncio.to_thread(_run, [*lone.serve_args(), "--takeover"], lone)
    finally:
        lock.release()
    assert code == 2, out
    assert "cannot reach the running daemon" in out and "admin.sock" in out and "refused" in out


async def test_takeover_of_a_daemon_from_before_hand_overs_says_to_stop_it(tmp_path):
    lone = Daemon(tmp_path, {}, "[proxy]\naccess_log = false\n")
    lone.state_dir.mkdir(mode=0o700)
    older = socket.socket(socket.AF_UNIX)  # its admin socket answers, but it holds no lock
    older.bind(str(lone.state_dir / "admin.sock"))
    older.listen()
    try:
        code, out = await asyncio.to_thread(_run, [*lone.serve_args(), "--takeover"], lone)
    finally:
        older.close()
    assert code == 2, out
    assert "does not know hand-overs (an older Turnout): stop it, then start this one" in out


async def test_a_different_config_is_refused_and_the_old_daemon_serves_on(serve):
    other = serve.port + 1 if serve.port < 65000 else serve.port - 1
    code, out = await asyncio.to_thread(
        _run, [*serve.serve_args()[:-4], "--listen", f"127.0.0.1:{other}", "--config", str(serve.config_path),
               "--takeover"], serve)
    assert code == 2, out
    assert "different config: proxy.listen: 127.0.0.1:" in out and f"127.0.0.1:{other} here" in out
    serve.config_path.write_text(serve.config_path.read_text() + "\n# edited\n")
    code, out = await asyncio.to_thread(_run, [*serve.serve_args(), "--takeover"], serve)
    assert code == 2, out
    assert "changed since the running daemon" in out
    assert serve.process.poll() is None and (await fetch(serve.port)).status == 200


async def test_a_table_that_does_not_rebuild_aborts_and_the_old_daemon_is_not_left_frozen(serve, ups):
    # A service put straight into the proxy's table (not journalled) cannot be rebuilt from the journal.
    admin = aiohttp.UnixConnector(path=str(serve.state_dir / "admin.sock"))
    async with aiohttp.ClientSession(connector=admin, headers={"X-Turnout-Client": "test"}) as session:
        spec = {"name": "ghost", "hosts": ["ghost.test"],
                "pools": [{"name": "p", "weight": 100, "upstreams": [ups[0].address]}]}
        async with session.put("http://turnout/v1/services/ghost", json=spec) as answer:
            assert answer.status == 200, await answer.text()
    new, log_path = start_takeover(serve)
    code = await asyncio.to_thread(new.wait, 60)
    out = log_path.read_text()
    assert code == 2, out
    assert "differs from the running daemon's, which keeps serving" in out and "service ghost" in out
    code, out = await serve.acli("pause", "api", "--traffic")  # a change: refused only while frozen
    assert code == 0, out
    code, out = await serve.acli("resume", "api", "--traffic")
    assert code == 0, out
    assert serve.process.poll() is None and (await fetch(serve.port)).status == 200


async def _marked_take_over(serve: Daemon, marks: Marks) -> dict:
    """`atake_over`, with marks for the load's record: when the new daemon was started and when the
    old one had exited."""
    marks.mark("takeover.started")
    try:
        return await atake_over(serve)
    finally:
        marks.mark("takeover.old_exited")


def _failures(result: LoadResult) -> str:
    return "\n".join(result.failure_lines())


def _run(args: list[str], daemon: Daemon) -> tuple[int, str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=daemon.env,
                          cwd=daemon.workdir)
    return done.returncode, done.stdout + done.stderr


async def test_the_https_listener_is_handed_over_too_and_the_other_listeners_move(tmp_path, ups):
    """Plain and HTTPS sockets are passed; the dashboard and the TCP admin API are rebound by the new
    daemon once the old one let go of them. HTTPS clients (keep-alive and new) lose nothing."""
    ca = CertAuthority.create(tmp_path / "ca")
    ca.write(tmp_path / "certs", "web", ["web.test"])
    tls_port, admin_port, dashboard_port = free_port(), free_port(), free_port()
    token = "t" * 32
    # The load's many clients share one address: a daemon stalled for a second on a loaded machine (a new
    # process starting beside it) has more than the default 256 handshakes per address under way; the
    # excess waits for a slot (it was cut before: 90 lost requests in one run), which this test also shows.
    config = f"""
[proxy]
access_log = false
drain_timeout = "5s"
admin_tcp = "127.0.0.1:{admin_port}"
admin_token = "{token}"
[proxy.tls]
listen = "127.0.0.1:{tls_port}"
certs_dir = "{tmp_path / 'certs'}"
redirect_http = false
[dashboard]
listen = "127.0.0.1:{dashboard_port}"
[services.api]
upstreams = ["{ups[0].address}"]
host = "web.test"
"""
    serve = Daemon(tmp_path, {}, config)
    serve.start()
    try:
        stop, marks = asyncio.Event(), Marks()
        load = asyncio.create_task(run_load(LoadConfig(
            url=f"https://web.test:{tls_port}/", connect_to=f"127.0.0.1:{tls_port}", cacert=str(ca.path),
            rate=200, duration=60, new_connections=0.3, timeout=10), marks, stop=stop))
        try:
            for _ in range(2):
                old_log = serve.log_path
                await _marked_take_over(serve, marks)
                (begun,) = events(old_log, "handover.begun")
                assert begun["passed"] == ["http", "https", "lock"]
        finally:
            stop.set()
            result = await load
        assert result.sent > 50 and result.failed_by_proxy == 0 and result.truncated == 0, _failures(result)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{dashboard_port}/") as answer:
                assert answer.status == 200
            async with session.get(f"http://127.0.0.1:{admin_port}/v1/status",
                                   headers={"Authorization": f"Bearer {token}"}) as answer:
                assert answer.status == 200 and "api" in (await answer.json())["services"]
    finally:
        serve.stop()
