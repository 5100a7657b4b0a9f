"""The access log on real sockets: one `http.access` event per finished request, with the right values."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from datetime import UTC, datetime

import pytest

from helpers.certs import CertAuthority
from helpers.upstreams import (
    LogCapture,
    RawClient,
    dead_address,
    fetch,
    running_proxy,
    service,
    wait_for,
)
from proxy.access_log import FIELDS
from proxy.config import ProxyConfig
from proxy.errors import ValidationError
from proxy.log_writer import LogWriter
from proxy.router import Router
from proxy.server import ProxyServer
from proxy.tls.config import TlsConfig
from proxy.tls.manager import Https


def access(logs: LogCapture) -> list[dict]:
    return logs.events("http.access")


def fields_of(event: dict) -> list[str]:
    assert next(iter(event)) == "event" and list(event)[-2:] == ["level", "timestamp"]
    return [k for k in event if k not in ("event", "level", "timestamp")]


async def test_one_event_per_request_with_every_field_and_the_right_values(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs) as proxy:
        started = time.time()
        client = await RawClient.connect(proxy.port)
        try:
            r = await client.request("GET", "/big?n=1000&secret=x", headers={"X-Request-Id": "req-42"})
            r2 = await client.request("POST", "/echo", body=b"hello")
        finally:
            await client.close()
    assert (r.status, len(r.body), r2.status) == (200, 1000, 200)
    first, second = access(logs)
    assert fields_of(first) == list(FIELDS)  # fixed fields, in this order
    assert first["client"] == "127.0.0.1"
    assert (first["method"], first["path"], first["host"]) == ("GET", "/big", "app.test")
    assert first["status"] == 200
    assert first["bytes_sent"] == len(r.head) + 1000  # head and body as the client got them
    assert (first["service"], first["pool"], first["upstream"]) == ("app", "blue", a.address)
    assert first["request_id"] == "req-42"
    assert first["error"] == ""
    assert 0 <= first["duration_ms"] < 5000
    when = datetime.strptime(first["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert started - 0.01 <= when <= time.time()
    # A second request on the same keep-alive connection: its own bytes, and a generated request id,
    # the one the upstream received.
    assert (second["method"], second["path"], second["status"]) == ("POST", "/echo", 200)
    assert second["bytes_sent"] == len(r2.head) + len(b"hello")
    sent_id = a.requests[1].headers["x-request-id"]
    assert second["request_id"] == sent_id and sent_id != "req-42"


async def _standalone(upstream: str, *flags: str) -> list[dict]:
    """Run `python -m proxy` (the benchmark's entry point), send two requests, stop it; its stderr lines."""
    port = int(dead_address().rsplit(":", 1)[1])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, *flags,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        while b"proxy.listening" not in await asyncio.wait_for(proc.stderr.readline(), 20):
            pass
        for i in range(2):
            assert (await fetch(port, headers={"X-Request-Id": f"s{i}"})).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        err = (await asyncio.wait_for(proc.communicate(), 20))[1]
    assert proc.returncode == 0, err
    return [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]


async def test_standalone_proxy_logs_json_lines_only_with_access_log(ups):
    a, _ = ups
    lines = await _standalone(a.address, "--access-log")
    events = [e for e in lines if e["event"] == "http.access"]
    assert [e["request_id"] for e in events] == ["s0", "s1"]
    assert [k for k in events[0] if k in FIELDS] == list(FIELDS)
    assert (events[0]["service"], events[0]["pool"], events[0]["upstream"]) == ("default", "main", a.address)
    assert events[0]["level"] == "info" and "timestamp" in events[0]
    # The default for the benchmark entry point: off.
    lines = await _standalone(a.address)
    assert any(e["event"] == "proxy.stopped" for e in lines)
    assert [e for e in lines if e["event"] == "http.access"] == []


async def test_a_proxy_made_503_carries_its_reason(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}, state="paused", hold_timeout=0.05))
    logs = LogCapture()
    async with running_proxy(router, log=logs) as proxy:
        r = await fetch(proxy.port, path="/held", headers={"X-Request-Id": "held-1"})
    assert r.status == 503 and r.header("x-turnout-error") == "hold-timeout"
    [event] = access(logs)
    assert (event["status"], event["error"], event["request_id"]) == (503, "hold-timeout", "held-1")
    assert (event["service"], event["pool"], event["upstream"]) == ("app", "", "")
    assert event["bytes_sent"] == len(r.head) + len(r.body)
    assert event["duration_ms"] >= 40


async def test_errors_after_routing_name_pool_upstream_and_reason(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs) as proxy:
        r502 = await fetch(proxy.port, path="/die")
        r404 = await fetch(proxy.port, path="/x", host="nowhere.test")
        app500 = await fetch(proxy.port, path="/status/500")
    assert (r502.status, r404.status, app500.status) == (502, 200, 500)  # one service: the default route
    died, default, app_error = access(logs)
    assert (died["status"], died["error"], died["pool"], died["upstream"]) == (
        502, "upstream-closed", "blue", a.address)
    assert default["host"] == "nowhere.test" and default["error"] == ""
    assert (app_error["status"], app_error["error"]) == (500, "")  # the app's own error: no proxy reason


async def test_a_bad_request_is_logged_once(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            await client.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            r = await client.read_response()
        finally:
            await client.close()
    assert r.status == 400
    [event] = access(logs)
    assert (event["status"], event["error"], event["method"]) == (400, r.header("x-turnout-error"), "")
    assert a.requests == []


async def test_a_client_that_leaves_early_is_logged_as_client_closed(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs) as proxy:
        client = await RawClient.connect(proxy.port)
        await client.send(b"GET /slow?s=2 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await wait_for(lambda: router.upstreams[a.address].inflight)
        sock = client.writer.get_extra_info("socket")  # a reset, not a half-close (that gets its answer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.writer.transport.abort()
        await wait_for(lambda: access(logs))
    [event] = access(logs)
    assert (event["status"], event["error"], event["bytes_sent"]) == (499, "client-closed", 0)
    assert (event["pool"], event["upstream"]) == ("blue", a.address)


async def test_no_event_when_the_access_log_is_off(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs, access_log=False) as proxy:
        assert (await fetch(proxy.port)).status == 200
        assert (await fetch(proxy.port, path="/die")).status == 502
        assert proxy.access_log is None and all(c.alog is None for c in proxy.connections)
    assert logs.lines() == []
    # ...and the counters still count.
    assert router.metrics.pools[("app", "blue")].by_class[2] == 1


async def test_concurrent_keep_alive_clients_log_one_event_per_request(ups):
    a, b = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address]), "green": (1, [b.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs) as proxy:
        async def run(i: int) -> list[int]:
            client = await RawClient.connect(proxy.port)
            try:
                return [len((await client.request("GET", "/", headers={"X-Request-Id": f"c{i}-{j}"}))
                            .head) for j in range(5)]
            finally:
                await client.close()
        heads = await asyncio.gather(*(run(i) for i in range(8)))
    events = access(logs)
    assert sorted(e["request_id"] for e in events) == sorted(f"c{i}-{j}" for i in range(8) for j in range(5))
    by_id = {e["request_id"]: e for e in events}
    for i in range(8):
        for j in range(5):
            assert by_id[f"c{i}-{j}"]["bytes_sent"] == heads[i][j] + 1  # body: "a" or "b"
    assert {e["pool"] for e in events} == {"blue", "green"}


async def test_what_clients_control_makes_valid_json_lines_with_the_exact_values(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            await client.send(b'GET /q"uo\\te?x="1" HTTP/1.1\r\nHost: app.test\r\n'
                              b'X-Request-Id: "}\\\xff\t{\r\n\r\n')
            r = await client.read_response()
        finally:
            await client.close()
    assert r.status == 200
    raw = logs.data.decode("ascii")  # non-ASCII is escaped: one line per event, whatever was sent
    [event] = [json.loads(line) for line in raw.splitlines() if '"http.access"' in line]
    assert (event["path"], event["request_id"]) == ('/q"uo\\te', '"}\\\xff\t{')


async def test_combined_format_on_the_wire(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs, access_log_format="combined") as proxy:
        r = await fetch(proxy.port, path="/x?secret=1", headers={"User-Agent": 'ua "1"', "Referer": "http://r/"})
    [line] = logs.lines()
    assert line.startswith("127.0.0.1 - - [")
    assert line.endswith(f'] "GET /x HTTP/1.1" 200 {len(r.head) + len(r.body)} "http://r/" "ua \\x221\\x22"')


async def test_sampled_2xx_and_every_error_on_the_wire(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    logs = LogCapture()
    async with running_proxy(router, log=logs, access_log_sample=0.25) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            statuses = [(await client.request("GET", "/status/404" if i % 10 == 9 else "/")).status
                        for i in range(40)]
        finally:
            await client.close()
        assert (await fetch(proxy.port, path="/die")).status == 502
    events = access(logs)
    assert statuses.count(200) == 36
    assert [e["status"] for e in events].count(200) == 9  # a quarter of the 2xx, evenly
    assert [e["status"] for e in events].count(404) == 4 and events[-1]["error"] == "upstream-closed"


async def test_a_log_pipe_nobody_reads_never_stalls_the_proxy_and_its_drops_are_counted(ups):
    """stderr piped to a reader that stopped reading: every request is answered, the lines that did not
    fit are counted in /metrics, and once someone reads again every other line comes out whole."""
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    r, w = os.pipe()
    writer = LogWriter(fd=w, max_backlog=64 * 1024)
    server = ProxyServer(router, ProxyConfig(listen="127.0.0.1:0"), log_writer=writer)
    await server.start()
    try:
        async def client(i: int) -> list[int]:
            c = await RawClient.connect(server.port)
            try:
                return [(await c.request("GET", "/", headers={"X-Request-Id": f"c{i}-{j}"})).status
                        for j in range(300)]
            finally:
                await c.close()
        statuses = [s for run in await asyncio.gather(*(client(i) for i in range(10))) for s in run]
        assert statuses == [200] * 3000
        dropped = writer.dropped
        assert dropped > 0
        metrics = router.metrics.render([])
        assert f'turnout_log_lines_dropped_total{{to="fd{w}"}} {dropped}' in metrics
    finally:
        await server.stop(2.0)
    got = bytearray()
    reader = threading.Thread(target=_read_all, args=(r, got))
    reader.start()
    writer.close()
    os.close(w)
    reader.join(10)
    os.close(r)
    ids = [json.loads(line)["request_id"] for line in got.splitlines()]
    assert len(ids) + writer.dropped == 3000 and len(set(ids)) == len(ids)


def _read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        into += chunk


async def test_a_log_file_is_reopened_after_logrotate_moved_it(ups, tmp_path):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    path = tmp_path / "access.log"
    async with running_proxy(router, access_log=str(path)) as proxy:
        assert (await fetch(proxy.port, headers={"X-Request-Id": "before"})).status == 200
        path.rename(tmp_path / "access.log.1")
        assert await proxy.reopen_logs() == str(path)
        assert (await fetch(proxy.port, headers={"X-Request-Id": "after"})).status == 200
        assert f'turnout_log_lines_dropped_total{{to="{path}"}} 0' in router.metrics.render([])
    rotated = [json.loads(line) for line in (tmp_path / "access.log.1").read_text().splitlines()]
    fresh = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["request_id"] for e in rotated] == ["before"]
    assert [e["request_id"] for e in fresh] == ["after"]


async def test_an_access_log_file_that_cannot_be_opened_stops_the_start_naming_the_key(tmp_path):
    config = ProxyConfig(listen="127.0.0.1:0", access_log=str(tmp_path / "no" / "x.log"))
    server = ProxyServer(Router(), config)
    with pytest.raises(ValidationError) as err:
        await server.start()
    assert err.value.key == "access_log" and "cannot open" in err.value.message


async def test_https_and_the_front_doors_own_answers_are_logged_with_their_bytes(ups, tmp_path):
    """With [proxy.tls] the plain listener is a front door (redirects) and the HTTPS listener hands its
    connections to the same connection class: both log, with what each client really got."""
    a = ups[0]
    ca = CertAuthority.create(tmp_path)
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.write(certs, "app", ["app.test"])
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}, hosts=["app.test"]))
    logs = LogCapture()
    tls = TlsConfig(listen="127.0.0.1:0", certs_dir=str(certs))
    plain = ProxyServer(router, ProxyConfig(listen="127.0.0.1:0", tls=tls), log_writer=logs.writer)
    https = Https(router, plain.config, plain)  # before the plain listener starts, as the daemon does
    https.server.log_writer = logs.writer
    await plain.start()
    await https.start()
    try:
        redirect = await fetch(plain.port, path="/x", headers={"X-Request-Id": "plain"})
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", https.server.port, ssl=ca.client_context(), server_hostname="app.test")
        client = RawClient(reader, writer)
        try:  # the same answer again: from the second on, passed on whole (`answered_whole`)
            secure = [await client.request("GET", "/", headers={"X-Request-Id": f"tls{i}"}) for i in range(3)]
        finally:
            await client.close()
    finally:
        await https.stop(2.0)
        await plain.stop(2.0)
    assert (redirect.status, [r.status for r in secure]) == (308, [200] * 3)
    by_id = {e["request_id"]: e for e in access(logs)}
    assert by_id["plain"]["status"] == 308
    assert by_id["plain"]["bytes_sent"] == len(redirect.head) + len(redirect.body)
    for i, r in enumerate(secure):
        assert (by_id[f"tls{i}"]["status"], by_id[f"tls{i}"]["pool"]) == (200, "blue")
        assert by_id[f"tls{i}"]["bytes_sent"] == len(r.head) + len(r.body)
