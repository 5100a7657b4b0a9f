"""At most `max_connecting` connection attempts per upstream; the other requests queue, oldest first.

Socket-free: real ClientConnection/UpstreamConnection objects on fake transports, an event loop that is
driven step by step, so attempts stay "in flight" exactly as long as a test wants.
"""

from __future__ import annotations

import asyncio

import pytest

from helpers.fake_transport import FakeTransport
from proxy import forward
from proxy.config import ProxyConfig
from proxy.forward import D_QUEUED, ClientConnection
from proxy.router import Router
from proxy.server import ProxyServer
from proxy.specs import ServiceSpec
from proxy.upstream_conn import UpstreamConnection

ADDRESS = "127.0.0.1:9001"


def head(n: int) -> bytes:
    return b"GET /%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % n


class Proxy:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_connecting: int, **config: object) -> None:
        self.loop = loop
        self.router = Router()
        self.router.set_service(ServiceSpec.from_dict(
            {"name": "web", "pools": [{"name": "main", "weight": 1, "upstreams": [ADDRESS]}]}))
        self.server = ProxyServer(self.router, ProxyConfig(listen="127.0.0.1:0", access_log=False,
                                                           max_connecting=max_connecting, **config))
        self.server.loop = loop
        self.upstream = self.router.upstreams[ADDRESS]
        self.clients: list[ClientConnection] = []

    def client(self, n: int) -> tuple[ClientConnection, FakeTransport]:
        conn = ClientConnection(self.server)
        self.clients.append(conn)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(head(n))
        return conn, transport

    def pooled_connection(self) -> UpstreamConnection:
        conn = UpstreamConnection(self.upstream)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        return conn

    def settle(self) -> None:
        """Let callbacks already due run (cancelled attempts end, queued requests wake)."""
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))

    def close(self) -> None:
        tasks = [c.task for c in self.clients if c.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.settle()


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def make_proxy(loop):
    made: list[Proxy] = []

    def make(max_connecting: int, **config: object) -> Proxy:
        made.append(Proxy(loop, max_connecting, **config))
        return made[-1]
    yield make
    for proxy in made:  # end every attempt still in flight, pass or fail
        proxy.close()


@pytest.fixture
def no_connects(monkeypatch):
    """Attempts that never finish by themselves (a test ends them by cancelling)."""
    async def hang(self, upstream):
        await asyncio.Event().wait()
    monkeypatch.setattr(ClientConnection, "_connect", hang)


def test_attempts_beyond_the_limit_queue_in_order(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=2)
    clients = [proxy.client(n)[0] for n in range(5)]
    assert proxy.upstream.connecting == 2
    assert [c.task is not None for c in clients] == [True, True, False, False, False]
    assert list(proxy.upstream.waiting) == clients[2:]
    assert all(c.dkind == D_QUEUED and c.queued_on is proxy.upstream for c in clients[2:])


def test_a_released_connection_goes_to_the_oldest_queued_request(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=1)
    clients = [proxy.client(n)[0] for n in range(3)]
    conn = proxy.pooled_connection()
    conn.release(True)  # an exchange elsewhere finished with this connection
    assert clients[1].upconn is conn and conn.client is clients[1]
    assert conn.transport.written[-1].startswith(b"GET /1 ")  # the queued request went out on it
    assert clients[1].queued_on is None and clients[1].dkind == forward.D_UPSTREAM
    assert list(proxy.upstream.waiting) == [clients[2]] and proxy.upstream.idle == []


def test_an_ended_attempt_lets_the_next_queued_request_connect(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=1)
    clients = [proxy.client(n)[0] for n in range(3)]
    first = clients[0].task
    first.cancel()  # the attempt ends (here: cancelled); its slot frees
    proxy.settle()
    assert proxy.upstream.connecting == 1
    assert clients[1].task is not None and not clients[1].task.done()
    assert list(proxy.upstream.waiting) == [clients[2]]


def test_a_task_cancelled_before_it_ran_still_frees_its_slot(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=1)
    client, _ = proxy.client(0)
    client.task.cancel()  # in the same turn as its creation: its coroutine never started
    proxy.settle()
    assert proxy.upstream.connecting == 0


def test_a_queued_request_whose_client_leaves_is_taken_out(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=1)
    clients = [proxy.client(n)[0] for n in range(3)]
    clients[1].connection_lost(None)
    assert list(proxy.upstream.waiting) == [clients[2]] and clients[1].queued_on is None
    assert clients[1] not in proxy.upstream.inflight


def test_a_queued_request_gives_up_after_connect_timeout(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=1, connect_timeout=0.5)
    proxy.client(0)
    second, transport = proxy.client(1)
    assert second.dkind == D_QUEUED
    assert second.deadline - second.t0 == pytest.approx(0.5, abs=0.05)
    second.on_deadline()  # the sweeper found the deadline passed
    answer = b"".join(transport.written)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"X-Turnout-Error: connect-queue-timeout" in answer and b"Retry-After: 1" in answer
    assert not proxy.upstream.waiting and second not in proxy.upstream.inflight
    assert proxy.router.metrics.pool("web", "main").proxy_errors == 1


def test_a_drain_deadline_takes_queued_requests_out(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=1)
    clients = [proxy.client(n)[0] for n in range(2)]
    clients[1].abort_for_drain()
    assert not proxy.upstream.waiting


def test_no_limit_when_max_connecting_is_0(make_proxy, no_connects):
    proxy = make_proxy(max_connecting=0)
    for n in range(20):
        proxy.client(n)
    assert proxy.upstream.connecting == 20 and not proxy.upstream.waiting


def test_a_failure_while_taking_a_released_connection_stays_with_that_request(make_proxy, no_connects,
                                                                                monkeypatch):
    proxy = make_proxy(max_connecting=1)
    proxy.client(0)
    queued, transport = proxy.client(1)

    def broken(self, client, data):
        raise RuntimeError("boom")
    monkeypatch.setattr(UpstreamConnection, "bind", broken)
    conn = proxy.pooled_connection()
    conn.release(True)  # must not raise into the exchange that released it
    assert b"".join(transport.written).startswith(b"HTTP/1.1 500 ")
    assert queued.upconn is None and conn.transport.closing  # the half-bound connection is dropped
