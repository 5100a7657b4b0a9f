"""`turnout serve`'s access log as users run it (a real daemon process; the Docker engine it asks at
start): no line lost at SIGTERM under load, a file reopened after logrotate (SIGHUP and `turnout logs
reopen`), and a stderr nobody reads that never stalls the proxy (its drops counted in /metrics)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from contextlib import suppress
from pathlib import Path

import aiohttp
import pytest

from controller.testing.plugin import CLI, free_port
from helpers.daemon import Daemon
from helpers.upstreams import RawClient, TestUpstream, wait_for

pytestmark = pytest.mark.docker


def static_config(upstream: str, extra: str = "") -> str:
    return f"[proxy]\n{extra}\n[services.api]\nupstreams = [\"{upstream}\"]\n"


async def start_serve(tmp_path: Path, config: str, labels: dict[str, str], **env: str):
    """`turnout serve` with its stderr on a pipe (as under a supervisor); returns once it listens."""
    (tmp_path / "turnout.toml").write_text(config)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *CLI, "--state-dir", str(tmp_path / "state"), "serve", "--listen", f"127.0.0.1:{port}",
        "--config", str(tmp_path / "turnout.toml"), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "TURNOUT_CONTAINER_LABELS": ",".join(f"{k}={v}" for k, v in labels.items()),
             **env})

    async def answers() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return (tmp_path / "state" / "admin.sock").exists()

    for _ in range(600):
        if await answers():
            return process, port
        if process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError(f"turnout serve did not come up: {(await process.communicate())[1][-3000:]!r}")


async def load(port: int, answered: list[str], clients: int, stop_after: int | None = None) -> None:
    """`clients` keep-alive clients, each request with its own X-Request-Id; an id goes into
    `answered` once its whole 200 arrived. With `stop_after`: each client sends that many; without,
    until the proxy no longer accepts connections."""
    async def client(i: int) -> None:
        n = 0
        while stop_after is None or n < stop_after:
            try:
                c = await RawClient.connect(port)
            except OSError:
                return  # the listener is closed: stopping
            try:
                while stop_after is None or n < stop_after:
                    rid = f"c{i}-{n}"
                    n += 1
                    r = await c.request("GET", "/", headers={"X-Request-Id": rid}, host="api.test")
                    if r.status == 200 and r.body == b"a":
                        answered.append(rid)
                    if r.header("connection") == "close":
                        break
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass  # closed under us while stopping: that request was not answered
            finally:
                await c.close()
    await asyncio.gather(*(client(i) for i in range(clients)))


async def test_sigterm_under_load_loses_no_access_line(tmp_path, docker_client, test_run_labels):
    upstream = await TestUpstream("a").start()
    process, port = await start_serve(tmp_path, static_config(upstream.address), test_run_labels)
    assert process.stderr is not None
    lines: list[bytes] = []

    async def read_stderr() -> None:
        while line := await process.stderr.readline():  # type: ignore[union-attr]
            lines.append(line)
    reader = asyncio.create_task(read_stderr())
    answered: list[str] = []
    try:
        traffic = asyncio.create_task(load(port, answered, clients=16))
        await wait_for(lambda: len(answered) >= 2000, timeout=60)
        process.send_signal(signal.SIGTERM)  # mid-traffic: requests in flight, lines not yet written
        await asyncio.wait_for(traffic, 60)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        await asyncio.wait_for(reader, 30)
    finally:
        if process.returncode is None:
            process.kill()
        await upstream.close()
    events = [json.loads(line) for line in lines if line.startswith(b"{")]
    logged = {e["request_id"] for e in events if e["event"] == "http.access" and e["status"] == 200}
    missing = set(answered) - logged
    assert len(answered) >= 2000 and not missing, f"{len(missing)} answered requests without a line"
    names = [e["event"] for e in events]
    assert names.index("proxy.stopped") > max(i for i, name in enumerate(names) if name == "http.access")


async def test_a_rotated_log_file_is_reopened_by_sighup_and_by_the_cli(tmp_path, docker_client,
                                                                       test_run_labels):
    upstream = await TestUpstream("a").start()
    serve = Daemon(tmp_path, test_run_labels, static_config(upstream.address, 'access_log = "access.log"'))
    log = tmp_path / "access.log"

    async def request(rid: str) -> None:
        c = await RawClient.connect(serve.port)
        try:
            assert (await c.request("GET", "/", headers={"X-Request-Id": rid}, host="api.test")).status == 200
        finally:
            await c.close()
    try:
        serve.start()
        await request("one")
        log.rename(tmp_path / "access.log.1")
        done = await serve.acli("logs", "reopen")
        assert done == (0, f"access log reopened: {log}\n")
        await request("two")
        log.rename(tmp_path / "access.log.2")
        assert serve.process is not None
        serve.process.send_signal(signal.SIGHUP)
        await wait_for(log.exists)  # reopened (created) by the daemon
        await request("three")
        assert serve.process.poll() is None  # SIGHUP does not stop it
    finally:
        if serve.process is not None:
            assert serve.stop() == 0, serve.log()
        await upstream.close()
    ids = {name: [json.loads(line)["request_id"] for line in (tmp_path / name).read_text().splitlines()]
           for name in ("access.log.1", "access.log.2", "access.log")}
    assert ids == {"access.log.1": ["one"], "access.log.2": ["two"], "access.log": ["three"]}
    assert '"event": "proxy.log_reopened"' in serve.log()


async def test_a_stderr_nobody_reads_never_stalls_the_daemon(tmp_path, docker_client, test_run_labels):
    upstream = await TestUpstream("a").start()
    # A small bound (the default is 8 MiB), so that a few thousand lines overflow it.
    process, port = await start_serve(tmp_path, static_config(upstream.address), test_run_labels,
                                      TURNOUT_LOG_BACKLOG=str(64 * 1024))
    try:
        answered: list[str] = []
        await asyncio.wait_for(load(port, answered, clients=10, stop_after=400), 120)
        assert len(answered) == 4000  # every request answered while nobody read the log
        connector = aiohttp.UnixConnector(path=str(tmp_path / "state" / "admin.sock"))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get("http://turnout/metrics") as response:
                metrics = await response.text()
        [dropped] = [int(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                     if line.startswith('turnout_log_lines_dropped_total{to="stderr"}')]
        assert dropped > 0
        process.send_signal(signal.SIGTERM)  # it stops, though its last lines cannot be written
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
        with suppress(Exception):
            await asyncio.wait_for(process.communicate(), 10)
        await upstream.close()
