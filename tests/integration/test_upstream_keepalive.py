"""Pooled keep-alive connections the upstream closed while idle (the race with the keep-alive timeouts of
gunicorn, Node and most app servers): when no byte of the answer arrived, an idempotent request without a
body is sent again on a fresh connection (as Go's net/http Transport does), never answered 502."""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from helpers import loopback
from helpers.upstreams import RawClient, running_proxy, service, wait_for
from proxy.router import Router


class KeepAliveUpstream:
    """A keep-alive HTTP/1.1 server (no body framing beyond Content-Length) that closes a connection
    once it sat idle `idle` seconds, and/or drops the `drop`-th request on every connection (every
    request once `dead`): closes the connection (`rst`: resets it) without a byte of an answer, as if
    its idle close had crossed that request."""

    def __init__(self, idle: float | None = None, drop: int = 0, rst: bool = False,
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.idle = idle
        self.drop = drop
        self.rst = rst
        self.dead = False
        self.heads: list[bytes] = []
        self.connections = 0
        self.dropped = 0
        self.server: loopback.LoopbackServer | None = None
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> KeepAliveUpstream:
        self.server = await loopback.start_server(self.serve, self.host, 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"{self.host}:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        self.tasks.add(task)
        n = 0
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle)
                except TimeoutError:
                    return  # idle for too long: close
                n += 1
                self.heads.append(head)
                if n == self.drop or self.dead:
                    self.dropped += 1
                    if self.rst:
                        writer.transport.abort()
                    return
                length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                if length is not None:
                    await reader.readexactly(int(length.group(1)))
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                writer.write(answer if head.startswith(b"HEAD ") else answer + b"ok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)
        await self.server.wait_closed()


@pytest.fixture
async def upstreams():
    started: list[KeepAliveUpstream] = []

    async def start(**kwargs: object) -> KeepAliveUpstream:
        up = await KeepAliveUpstream(**kwargs).start()  # type: ignore[arg-type]
        started.append(up)
        return up

    yield start
    for up in started:
        await up.close()


def routed_to(up: KeepAliveUpstream) -> Router:
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    return router


def request_id(head: bytes) -> bytes:
    return re.search(rb"\r\nX-Request-Id: ([^\r]*)", head).group(1)


@pytest.mark.parametrize("rst", [False, True], ids=["closed", "reset"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
async def test_a_request_crossing_the_idle_close_is_sent_again_on_a_fresh_connection(upstreams, rst, method):
    up = await upstreams(drop=2, rst=rst)
    async with running_proxy(routed_to(up)) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            assert (await client.request("GET", "/first")).status == 200  # its connection is pooled
            r = await client.request(method, "/second")  # the pooled connection dies under it
            assert (r.status, r.header("x-turnout-error")) == (200, None)
            up.drop = 0
            assert (await client.request("GET", "/third")).status == 200  # on the replay's connection
        finally:
            await client.close()
    assert up.dropped == 1 and up.connections == 2
    first, dropped, again, third = up.heads
    assert dropped == again  # the very same request (same X-Request-Id), on the new connection
    assert dropped.startswith(method.encode() + b" /second ") and request_id(dropped) != request_id(first)
    assert third.startswith(b"GET /third ")
    stats = proxy.router.metrics.pools[("app", "blue")]
    assert (stats.by_class[2], stats.by_class[5], stats.inflight) == (3, 0, 0)


@pytest.mark.parametrize("method, body", [("POST", b""), ("PATCH", b"x"), ("PUT", b"with a body")])
async def test_a_request_that_may_not_be_repeated_is_answered_502(upstreams, method, body):
    """Not idempotent, or its body already streamed: the upstream may have acted on it; a 502 says so."""
    up = await upstreams(drop=2)
    async with running_proxy(routed_to(up)) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            assert (await client.request("GET", "/first")).status == 200
            r = await client.request(method, "/second", body=body)
            assert (r.status, r.header("x-turnout-error")) == (502, "upstream-closed")
        finally:
            await client.close()
    assert up.connections == 1 and len(up.heads) == 2


async def test_a_fresh_connection_closed_without_an_answer_is_not_retried(upstreams):
    """Only a pooled connection can have closed while idle; a new one closing is the upstream's answer."""
    up = await upstreams(drop=1)
    async with running_proxy(routed_to(up)) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            r = await client.request("GET", "/")
            assert (r.status, r.header("x-turnout-error")) == (502, "upstream-closed")
        finally:
            await client.close()
    assert up.connections == 1 and len(up.heads) == 1


async def test_a_fresh_connection_closed_without_an_answer_is_retried_on_another_host(upstreams):
    """An upstream that takes a request on a new connection and closes without a byte of an answer is
    going away (a lost Swarm node's app, stopped by its engine): an idempotent request goes again, to an
    upstream on another host; the others get a 502 as before."""
    dying = await upstreams(host="127.0.0.2")
    dying.dead = True
    alive = await upstreams()
    router = Router()
    router.set_service(service(pools={"blue": (1, [dying.address, alive.address])}))
    async def one(method: str) -> int:
        client = await RawClient.connect(proxy.port)  # a 502 closes the client's connection
        try:
            return (await client.request(method, "/")).status
        finally:
            await client.close()

    async with running_proxy(router) as proxy:
        statuses = [await one("GET") for _ in range(20)]
        posts = [await one("POST") for _ in range(20)]
    assert dying.dropped > 0 and statuses == [200] * 20  # before: 502 upstream-closed for each dropped
    assert 502 in posts  # a POST the dying upstream took may have acted: never sent twice


async def test_the_replay_happens_once(upstreams):
    """The replay's fresh connection dying too is a 502, not a loop."""
    up = await upstreams()
    async with running_proxy(routed_to(up)) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            assert (await client.request("GET", "/first")).status == 200
            up.dead = True  # the pooled connection dies under the next request, and so does the fresh one
            r = await client.request("GET", "/second")
            assert (r.status, r.header("x-turnout-error")) == (502, "upstream-closed")
        finally:
            await client.close()
    assert up.connections == 2 and up.dropped == 2


async def test_an_upstream_closing_idle_connections_after_40ms_never_costs_a_502(upstreams):
    """What a user meets: an app server with a 40 ms keep-alive timeout, 16 keep-alive clients pausing
    0-80 ms between requests (so many requests leave just as the upstream's timer fires)."""
    up = await upstreams(idle=0.04)
    rng = random.Random(10)
    statuses: list[int] = []
    async with running_proxy(routed_to(up)) as proxy:

        async def one_client(pauses: list[float]) -> None:
            client = await RawClient.connect(proxy.port)
            try:
                for pause in pauses:
                    await asyncio.sleep(pause)  # the load's shape, not synchronisation
                    r = await client.request("GET", "/")
                    statuses.append(r.status)
                    if r.header("connection") == "close":  # a proxy-made 502 closes: go on, counted
                        await client.close()
                        client = await RawClient.connect(proxy.port)
            finally:
                await client.close()

        await asyncio.gather(*(one_client([rng.uniform(0.0, 0.08) for _ in range(40)]) for _ in range(16)))
        await wait_for(lambda: not proxy.router.metrics.pools[("app", "blue")].inflight)
    assert len(statuses) == 640
    assert statuses.count(502) == 0, f"{statuses.count(502)} answered 502"
    assert set(statuses) == {200}
    assert up.connections > 16  # the upstream did close idle connections along the way
