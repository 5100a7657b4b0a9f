"""100 MB each way through `python -m proxy` (a subprocess): bodies stream, the proxy's memory stays flat."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from helpers.upstreams import RawClient, start_upstreams

SIZE = 100 * 1024 * 1024
MAX_GROWTH_KB = 16 * 1024
REPO = str(Path(__file__).resolve().parents[2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
async def proxy_process():
    (up,) = await start_upstreams("big")
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}", "--upstream", up.address,
        "--loop", "asyncio", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=REPO)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            break
        except OSError:
            if process.returncode is not None or loop.time() > deadline:
                raise AssertionError(f"proxy did not start: {await process.stderr.read()!r}") from None
            await asyncio.sleep(0.05)
    yield process, port, up
    if process.returncode is None:
        process.kill()
        await process.wait()
    await up.close()


async def test_100mb_up_and_down_keep_the_proxy_memory_flat(proxy_process):
    process, port, up = proxy_process
    client = await RawClient.connect(port)
    try:
        warm = await client.request("GET", "/big?n=1000000")  # warm up buffers, imports, pools
        assert len(warm.body) == 1_000_000
        before = _peak_rss_kb(process.pid)

        await client.send(b"GET /big?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % SIZE)
        down = await client.read_response(timeout=60, keep_body=False)
        assert down.status == 200 and down.body == str(SIZE).encode()

        await client.send(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % SIZE)
        block = b"u" * (1 << 20)
        for _ in range(SIZE // len(block)):
            await client.send(block)
        up_answer = await client.read_response(timeout=60)
        assert up_answer.body == str(SIZE).encode()

        await client.send(b"POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (len(block), block)
        for _ in range(SIZE // len(block)):
            await client.send(chunk)
        await client.send(b"0\r\n\r\n")
        assert (await client.read_response(timeout=60)).body == str(SIZE).encode()
        growth = _peak_rss_kb(process.pid) - before
    finally:
        await client.close()
    assert up.bytes_received > 2 * SIZE
    print(f"proxy peak RSS growth: {growth} KiB")
    assert growth < MAX_GROWTH_KB, f"proxy peak RSS grew by {growth} KiB"


async def test_sigterm_stops_gracefully(proxy_process):
    process, port, _ = proxy_process
    client = await RawClient.connect(port)
    try:
        assert (await client.request("GET", "/")).body == b"big"
        os.kill(process.pid, signal.SIGTERM)
        assert await client.at_eof()
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        await client.close()
