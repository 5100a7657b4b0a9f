"""The load generator against small loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from controller.rehearsal.loadgen import LoadConfig, Marks, Outcome, run_load
from proxy.accepting import stop_accepting

# What a server does with request number n (counted from 0 across all its connections).
OK, PROXY_503, APP_500, TRUNCATE, RESET, HANG = "ok", "proxy503", "app500", "truncate", "reset", "hang"
HOLD = "hold"  # answered (ok) only when the test calls Server.release(), like a big-bang hold


class Server:
    """A tiny HTTP/1.1 server on 127.0.0.1:0 that counts connections and keeps request ids."""

    def __init__(self, behaviour: Callable[[int], str] = lambda n: OK, version: str = "v1") -> None:
        self.behaviour = behaviour
        self.version = version
        self.connections = 0
        self.request_ids: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.on_request: Callable[[int], None] = lambda n: None
        self.held: list[tuple[asyncio.Transport, bytes]] = []
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self.closing = False

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> Server:
        self._server = await asyncio.get_running_loop().create_server(lambda: _Protocol(self), "127.0.0.1", 0)
        return self

    def release(self) -> int:
        """Answer every held request at once (the end of a hold); returns how many there were."""
        held, self.held = self.held, []
        for transport, response in held:
            if not transport.is_closing():
                transport.write(response)
        self.in_flight -= len(held)
        return len(held)

    async def close(self) -> None:
        assert self._server is not None
        self.closing = True
        await stop_accepting(self._server)  # the accepts under way finish first (proxy/accepting.py)
        self._server.close()
        for transport in list(self._transports):
            transport.abort()
        await asyncio.sleep(0)  # their connection_lost (and the sockets' close) run


class _Protocol(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = b""
        self.unanswered = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server._transports.add(transport)
        if self.server.closing:  # accepted just before close()
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._transports.discard(self.transport)
        self.server.in_flight -= self.unanswered

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer and not self.transport.is_closing():
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.answer(head)

    def answer(self, head: bytes) -> None:
        server = self.server
        n = len(server.request_ids)
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
        server.request_ids.append(headers.get("X-Request-Id", ""))
        server.on_request(n)
        action = server.behaviour(n)
        body = f"{server.version}\n".encode()
        if action == OK:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        elif action == PROXY_503:
            self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n"
                                 b"X-Turnout-Error: no_upstream\r\n\r\nnope\n")
        elif action == APP_500:
            self.transport.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
        elif action == TRUNCATE:  # promises 100 bytes, sends 3, closes
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n%s" % body)
            self.transport.close()
        elif action == RESET:  # SO_LINGER 0: the close sends a TCP RST
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        elif action == HOLD:
            server.held.append((self.transport, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body)))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        elif action == HANG:  # never answer; counted until the client gives up on the connection
            self.unanswered += 1
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., asyncio.Future]]:
    servers: list[Server] = []

    async def start(*args, **kwargs) -> Server:
        server = await Server(*args, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def test_every_outcome_class_is_told_apart(start_server):
    cycle = [OK, PROXY_503, APP_500, TRUNCATE]
    server = await start_server(lambda n: cycle[n % len(cycle)])
    result = await run_load(LoadConfig(url=server.url, duration=5.0, concurrency=1, max_requests=40))
    assert result.sent == 40
    assert dict(result.counts) == {Outcome.OK: 10, Outcome.PROXY_ERROR: 10, Outcome.APP_ERROR: 10,
                                   Outcome.TRUNCATED: 10}
    assert result.failed_by_proxy == 10 and result.app_errors == 10
    by_outcome = {r.outcome: r for r in result.records}
    assert by_outcome[Outcome.OK].version == "v1" and by_outcome[Outcome.OK].complete
    assert by_outcome[Outcome.TRUNCATED].bytes == 3 and not by_outcome[Outcome.TRUNCATED].complete
    assert by_outcome[Outcome.PROXY_ERROR].status == 503 and by_outcome[Outcome.PROXY_ERROR].version is None
    # the failure lines name each failed request with the proxy's reason or what cut it
    lines = result.failure_lines(limit=5)  # 30 were not served: 5 shown, then the rest counted
    assert lines[0] == str(result.summary()) and len(lines) == 2 + 5 + 1 and lines[-1] == "  ... and 25 more"
    assert any("status=503 X-Turnout-Error: no_upstream" in line for line in lines[2:])
    # every request carried its own id, and the server saw exactly those
    ids = [r.id for r in result.records]
    assert len(set(ids)) == 40 and sorted(server.request_ids) == sorted(ids)


async def test_resets_refusals_and_hangs_are_connect_errors_and_timeouts(start_server):
    reset = await start_server(lambda n: RESET)
    result = await run_load(LoadConfig(url=reset.url, duration=5.0, concurrency=2, max_requests=20))
    assert result.sent == 20 and result.counts[Outcome.CONNECT_ERROR] == 20

    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    refused = await run_load(LoadConfig(url=f"http://127.0.0.1:{closed_port}", duration=5.0, concurrency=1,
                                        max_requests=5))
    assert refused.counts[Outcome.CONNECT_ERROR] == 5 and refused.longest_gap().length > 0

    hang = await start_server(lambda n: HANG)
    result = await run_load(LoadConfig(url=hang.url, duration=0.3, rate=20, timeout=0.2))
    assert result.sent >= 4 and result.counts[Outcome.TIMEOUT] == result.sent
    assert all(r.latency > 0.19 for r in result.records)  # each one waited out its own timeout


async def test_rate_mode_keeps_its_schedule(start_server):
    server = await start_server()
    rate, duration = 400.0, 1.5
    result = await run_load(LoadConfig(url=server.url, duration=duration, rate=rate))
    assert result.sent == pytest.approx(rate * duration, rel=0.03)
    assert result.succeeded == result.sent and result.not_sent == 0
    starts = [r.start for r in result.records]
    # the schedule is fixed: no start comes before its slot (a busy loop may only delay some),
    # and the run keeps starting requests up to its end rather than giving up early
    assert all(n <= rate * s + 1 for n, s in enumerate(sorted(starts))), "a start came before its slot"
    assert starts[-1] > duration * 0.8


async def test_rate_mode_skips_starts_beyond_the_in_flight_bound(start_server):
    server = await start_server(lambda n: HANG)
    result = await run_load(LoadConfig(url=server.url, duration=0.5, rate=100, timeout=0.3, max_in_flight=3))
    assert result.not_sent > 0
    assert server.max_in_flight <= 3 and len(server.request_ids) == result.sent
    assert result.sent + result.not_sent == pytest.approx(50, abs=2)


@pytest.mark.parametrize("bound", [16, 256])
async def test_rate_mode_through_a_hold_offers_the_full_rate_when_the_bound_fits(start_server, bound):
    # A hold like big-bang's: requests wait (in flight) until the hold ends, then all are answered at
    # once. With a bound of 256 it ends when the 60th request arrives, which is answered at once: the
    # schedule starts every slot (late ones as soon as the loop wakes), so 59 are held however busy the
    # machine is. A bound of 16 lets no 17th request reach the server while 16 are held: that hold ends
    # 0.3 s after the 16th arrived, while the schedule's starts every 10 ms are skipped. (Both end on
    # what the server saw, not at a fixed time that a slow run could reach before the 60th request.)
    holding = [True]
    server = await start_server(lambda n: HOLD if holding[0] else OK)
    loop = asyncio.get_running_loop()

    def end_hold() -> None:
        if holding[0]:
            holding[0] = False
            server.release()

    def on_request(n: int) -> None:
        if bound == 256 and n == 59:
            end_hold()
        elif bound == 16 and n == 15:
            loop.call_later(0.3, end_hold)

    server.on_request = on_request
    result = await run_load(LoadConfig(url=server.url, duration=1.0, rate=100, max_in_flight=bound))
    assert result.sent + result.not_sent == pytest.approx(100, abs=2)
    assert result.config["max_in_flight"] == bound
    assert result.failed_by_proxy == 0 and result.succeeded == result.sent == len(server.request_ids)
    if bound == 16:
        assert server.max_in_flight == 16 and result.not_sent > 0  # starts skipped while 16 were held
    else:
        assert server.max_in_flight == 59 and result.not_sent == 0  # every start offered through it
    # the client's own count agrees: at least the held ones, never beyond its bound. (Not "held + 1": on a
    # busy machine the loop wakes late and starts several overdue slots at once, so more than one request
    # can be on its way when the 60th reaches the server and ends the hold.)
    assert server.max_in_flight <= result.peak_in_flight() <= bound
    assert result.to_dict()["peak_in_flight"] == result.peak_in_flight()


@pytest.mark.parametrize("bad", [0, -1, 65_537, 2.5, True])
def test_in_flight_bound_is_validated(bad):
    with pytest.raises(ValueError, match="max_in_flight"):
        LoadConfig(url="http://127.0.0.1:1", duration=1.0, rate=10, max_in_flight=bad)


async def test_new_connections_fraction_opens_that_many_connections(start_server):
    fresh = await start_server()
    result = await run_load(LoadConfig(url=fresh.url, duration=5.0, concurrency=4, max_requests=200,
                                       new_connections=1.0))
    assert result.succeeded == 200 and fresh.connections == 200

    reused = await start_server()
    result = await run_load(LoadConfig(url=reused.url, duration=5.0, concurrency=4, max_requests=200))
    assert result.succeeded == 200 and reused.connections <= 4

    half = await start_server()
    result = await run_load(LoadConfig(url=half.url, duration=5.0, concurrency=4, max_requests=200,
                                       new_connections=0.5))
    assert result.succeeded == 200 and 100 <= half.connections <= 104


async def test_closed_loop_keeps_concurrency_and_stops_at_max_requests(start_server):
    server = await start_server()
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run_load(LoadConfig(url=server.url, duration=30.0, concurrency=8, max_requests=300))
    assert result.sent == 300 and len(server.request_ids) == 300
    assert loop.time() - started < 10  # the count bound ended the run, not the 30 s duration


async def test_misrouted_when_the_old_version_answers_after_the_switch(start_server):
    server = await start_server(version="v1")
    marks = Marks()

    def acknowledge_too_early(n: int) -> None:  # the switch is "acknowledged", yet v1 still answers
        if n == 100:
            marks.mark("switch_acknowledged", expect_version="v2")

    server.on_request = acknowledge_too_early
    result = await run_load(LoadConfig(url=server.url, duration=5.0, concurrency=1, max_requests=200), marks)
    assert result.misrouted == 99  # request 100 itself started before the mark
    assert result.succeeded == 101 and result.failed_by_proxy == 0


async def test_clean_switch_has_a_short_both_versions_window_and_nothing_misrouted(start_server):
    server = await start_server(version="v1")
    marks = Marks()

    def switch(n: int) -> None:
        if n == 150:
            marks.mark("deploy_started")
            server.version = "v2"
            marks.mark("switch_acknowledged", expect_version="v2")
        elif n == 250:
            marks.mark("deploy_finished")

    server.on_request = switch
    result = await run_load(LoadConfig(url=server.url, duration=5.0, concurrency=4, max_requests=400), marks)
    assert result.misrouted == 0 and result.succeeded == 400
    assert result.versions() == ["v1", "v2"]
    window = result.both_versions_window()
    assert window is not None and 0 <= window.length < 0.5  # only the answers in flight at the switch
    assert set(result.phases()) == {"before", "during", "after"}
    assert sum(sum(t.versions.values()) for t in result.timeline()) == 400


@pytest.mark.parametrize("mode", [{"rate": 200.0}, {"concurrency": 4}])
async def test_stop_event_ends_a_long_run_early(start_server, mode):
    server = await start_server()
    stop = asyncio.Event()
    marks = Marks()

    def stop_after_50(n: int) -> None:
        if n == 50:
            marks.mark("stop")
            stop.set()

    server.on_request = stop_after_50
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await run_load(LoadConfig(url=server.url, duration=60.0, **mode), marks=marks, stop=stop)
    # a 60 s run ended right after the stop, every request answered
    assert loop.time() - started < 30.0 and result.duration < 30.0
    assert result.succeeded == result.sent >= 51
    # and nothing started once the stop was set: the open loop started only the slots due by then
    # (however late a busy loop woke), the closed loop's clients only what they had in flight
    stop_at = result.mark_at("stop")
    assert stop_at is not None
    if "rate" in mode:
        assert result.sent <= mode["rate"] * stop_at + 1, (result.sent, stop_at)
    else:
        assert result.sent <= 50 + mode["concurrency"], result.sent
