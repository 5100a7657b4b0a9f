"""Misbehaving upstreams: every bad answer ends as a 502 marked X-Turnout-Error, or as a visibly
incomplete answer (the client connection closes before the declared end), and the bad upstream
connection is never pooled: the next client's request gets the right body on a new connection.

Complements test_forward.py (/conflict, /dupcl, /truncate, /die there are not repeated here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from helpers import loopback
from helpers.upstreams import RawClient, running_proxy, service
from proxy.router import Router
from proxy.upstream_conn import _KNOWN_ANSWERS, MAX_INTERIM

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]
GOOD = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"


class ScriptedUpstream:
    """A raw upstream: the request path picks a behaviour; every other path answers GOOD (keep-alive)."""

    def __init__(self, behaviours: dict[bytes, Behaviour]) -> None:
        self.behaviours = behaviours
        self.connections = 0
        self.open_connections = 0
        self.heads: list[bytes] = []
        self.server: loopback.LoopbackServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> ScriptedUpstream:
        self.server = await loopback.start_server(self.serve, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ", 2)[1]
                behaviour = self.behaviours.get(path)
                if behaviour is None:
                    writer.write(GOOD)
                elif not await behaviour(reader, writer, head):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open_connections -= 1
            self.writers.discard(writer)
            self.tasks.discard(task)
            writer.transport.abort()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)
        await self.server.wait_closed()


def send(data: bytes, keep: bool = False) -> Behaviour:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(data)
        return keep

    return behaviour


def send_then(first: bytes, later: bytes, keep: bool = False) -> Behaviour:
    """`first`, then (in another TCP segment) `later`."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(later)
        await writer.drain()
        if not keep:
            await asyncio.sleep(0.1)
        return keep

    return behaviour


def answer_early(data: bytes) -> Behaviour:
    """Answer without reading the request body, then keep the connection open, reading nothing."""

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(30)
        return False

    return behaviour


# name -> (behaviour, X-Turnout-Error of the 502)
FAIL_502: dict[str, tuple[Behaviour, str]] = {
    "te-then-cl": (send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
                        b"5\r\nhello\r\n0\r\n\r\n", keep=True), "upstream-framing"),
    "cl-list-differing": (send(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", keep=True),
                          "upstream-framing"),
    "cl-negative": (send(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello", keep=True),
                    "upstream-framing"),
    "cl-signed": (send(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", keep=True), "upstream-framing"),
    "te-gzip-chunked": (send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                             keep=True), "upstream-framing"),
    "bad-chunk-size": (send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                            keep=True), "upstream-framing"),
    "garbage-status-line": (send(b"HELLO WORLD\r\n\r\n", keep=True), "upstream-protocol"),
    "status-four-digits": (send(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", keep=True),
                           "upstream-protocol"),
    "http-0.9-body-only": (send(b"<html>no head at all</html>\r\n\r\n", keep=True), "upstream-protocol"),
    "bare-lf-head": (send(b"HTTP/1.1 200 OK\nContent-Length: 4\n\ngood", keep=True), "upstream-protocol"),
    "nul-in-header": (send(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 4\r\n\r\ngood", keep=True),
                      "upstream-protocol"),
    "oversized-head": (send(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70_000 + b"\r\n"
                            b"Content-Length: 4\r\n\r\ngood", keep=True), "upstream-protocol"),
    "two-answers-in-one-write": (send(GOOD + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", keep=True),
                                 "upstream-protocol"),
    "1xx-flood": (send(b"HTTP/1.1 100 Continue\r\n\r\n" * 100 + GOOD, keep=True), "upstream-protocol"),
    "101-without-upgrade-request": (send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                                         b"Connection: Upgrade\r\n\r\nevil", keep=True), "upstream-protocol"),
    "head-cut-by-close": (send(b"HTTP/1.1 200 OK\r\nContent-Le"), "upstream-closed"),
    "bad-chunk-after-a-pause-before-any-head": (
        send_then(b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r\n\r\n-1\r\n"), "upstream-framing"),
}

# name -> (behaviour, the body bytes the client sees before the cut)
INCOMPLETE: dict[str, tuple[Behaviour, bytes]] = {
    "bad-chunk-in-a-later-segment": (send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                               b"5\r\nhello\r\n", b"zz\r\nworld\r\n0\r\n\r\n", keep=True),
                                     b"hello"),
    "chunked-body-cut-by-close": (send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                            b"5\r\nhello\r\n", b"5\r\nwor"), b"hello"),
    "cl-body-longer-in-a-later-segment": (send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
                                                    b"world, and then some more", keep=True), b""),
    "second-answer-in-a-later-segment-mid-body": (
        send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhel",
                  b"lo!!!HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", keep=True), b""),
}


@pytest.fixture
async def scripted():
    behaviours: dict[bytes, Behaviour] = {}
    for name, (b, _) in {**FAIL_502, **INCOMPLETE}.items():
        behaviours[b"/" + name.encode()] = b
    behaviours[b"/early-413"] = answer_early(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n"
                                             b"Connection: close\r\n\r\nbig")
    behaviours[b"/early-200-keep-alive"] = answer_early(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
    behaviours[b"/late-extra-answer"] = send_then(GOOD, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
                                                  keep=True)
    behaviours[b"/good-then-extra"] = send(GOOD + b"EXTRA", keep=True)
    behaviours[b"/good-split"] = send_then(GOOD[:-4], GOOD[-4:], keep=True)
    behaviours[b"/good-head-only"] = send(GOOD[:-4], keep=True)  # a right answer to HEAD: no body
    behaviours[b"/early-hints"] = send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                                       b"HTTP/1.1 100 Continue\r\n\r\n" + GOOD, keep=True)
    up = await ScriptedUpstream(behaviours).start()
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    async with running_proxy(router, upstream_timeout=5.0) as proxy:
        yield proxy, up
    await up.close()


async def good_request_is_not_desynchronised(proxy, up: ScriptedUpstream, connections: int) -> None:
    """From another client connection: the right body, on a connection the upstream newly accepted."""
    client = await RawClient.connect(proxy.port)
    try:
        r = await client.request("GET", "/good")
    finally:
        await client.close()
    assert (r.status, r.body, r.header("x-turnout-error")) == (200, b"good", None)
    assert up.connections == connections, "the bad exchange's connection was reused"
    assert len(proxy.router.upstreams[up.address].idle) == 1  # only the good one is pooled


@pytest.mark.parametrize("name", sorted(FAIL_502))
async def test_bad_answer_is_502_and_its_connection_never_reused(scripted, name):
    proxy, up = scripted
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"GET /%s HTTP/1.1\r\nHost: app.test\r\n\r\n" % name.encode())
        r = await client.read_response()
        assert (r.status, r.header("x-turnout-error")) == (502, FAIL_502[name][1])
        assert b"evil" not in r.body
        assert await client.at_eof()
    finally:
        await client.close()
    await good_request_is_not_desynchronised(proxy, up, 2)


@pytest.mark.parametrize("name", sorted(INCOMPLETE))
async def test_bad_answer_after_its_head_is_visibly_incomplete(scripted, name):
    proxy, up = scripted
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"GET /%s HTTP/1.1\r\nHost: app.test\r\n\r\n" % name.encode())
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        rest = await asyncio.wait_for(client.reader.read(), 5)  # until the proxy closes
    finally:
        await client.close()
    if b"chunked" in head.lower():
        assert not rest.endswith(b"0\r\n\r\n")  # no last chunk: the client knows it is cut
        assert rest.startswith(b"5\r\n" + INCOMPLETE[name][1] + b"\r\n")
    else:
        declared = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert len(rest) < declared  # closed before the declared length
        assert b"evil" not in rest
    await good_request_is_not_desynchronised(proxy, up, 2)


async def test_early_413_while_the_client_is_still_uploading(scripted):
    proxy, up = scripted
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"POST /early-413 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000000\r\n\r\n"
                          + b"x" * 16384)
        r = await client.read_response()
        assert (r.status, r.body) == (413, b"big")
        assert await client.at_eof()  # the rest of the upload is not read as a next request
    finally:
        await client.close()
    await good_request_is_not_desynchronised(proxy, up, 2)


async def test_early_keep_alive_answer_before_the_body_is_read_is_not_pooled(scripted):
    proxy, up = scripted
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"POST /early-200-keep-alive HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n"
                          b"\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n")
        r = await client.read_response()
        assert (r.status, r.body) == (200, b"early")
        assert r.header("connection") == "close" and await client.at_eof()
    finally:
        await client.close()
    await good_request_is_not_desynchronised(proxy, up, 2)
    assert [h.split(b" ")[1] for h in up.heads] == [b"/early-200-keep-alive", b"/good"]


async def test_an_answer_arriving_on_an_idle_pooled_connection_is_dropped(scripted):
    """Response-queue poisoning: an extra answer sent after a complete one must not become the answer
    to the next request; the idle connection that spoke unasked is closed."""
    proxy, up = scripted
    client = await RawClient.connect(proxy.port)
    try:
        r = await client.request("GET", "/late-extra-answer")
        assert r.body == b"good"
        await asyncio.sleep(0.3)  # the extra answer reaches the idle pooled connection
        r = await client.request("GET", "/good")
        assert r.body == b"good"
    finally:
        await client.close()
    assert up.connections == 2


async def test_a_few_interim_answers_are_relayed(scripted):
    """The control for the 1xx flood: 103 and 100 (up to MAX_INTERIM) pass through, then the answer."""
    assert MAX_INTERIM >= 2
    proxy, up = scripted
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"GET /early-hints HTTP/1.1\r\nHost: app.test\r\n\r\n")
        first = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert first.startswith(b"HTTP/1.1 103 ") and b"rel=preload" in first
        r = await client.read_response()
        assert (r.status, r.body) == (200, b"good")
        assert (await client.request("GET", "/good")).body == b"good"
    finally:
        await client.close()
    assert up.connections == 1  # a sound exchange keeps its connection


# ------------------------------------------------------------------ answers under a head llhttp passed before
# upstream_conn passes an answer on without llhttp when it arrives whole, in one read, under a head the
# parser accepted earlier (_KNOWN_ANSWERS). Each case below first makes GOOD's head known, then sends an
# answer under that same head that must not take the shortcut.

async def _make_good_known(proxy, up: ScriptedUpstream) -> RawClient:
    client = await RawClient.connect(proxy.port)
    for _ in range(2):
        r = await client.request("GET", "/good")
        assert (r.status, r.body) == (200, b"good")
    assert GOOD[: GOOD.find(b"\r\n\r\n")] in _KNOWN_ANSWERS
    return client


async def test_a_known_answer_is_passed_on_whole_and_its_connection_reused(scripted):
    proxy, up = scripted
    client = await _make_good_known(proxy, up)
    try:
        for _ in range(3):
            r = await client.request("GET", "/good")
            assert (r.status, r.body, r.header("via")) == (200, b"good", "1.1 turnout")
            assert r.header("content-length") == "4"
    finally:
        await client.close()
    assert up.connections == 1


async def test_a_known_head_with_more_bytes_than_its_length_is_502(scripted):
    proxy, up = scripted
    client = await _make_good_known(proxy, up)
    try:
        await client.send(b"GET /good-then-extra HTTP/1.1\r\nHost: app.test\r\n\r\n")
        r = await client.read_response()
        assert (r.status, r.header("x-turnout-error")) == (502, "upstream-protocol")
        assert b"EXTRA" not in r.body
    finally:
        await client.close()
    await good_request_is_not_desynchronised(proxy, up, 2)


async def test_a_known_head_whose_body_comes_later_goes_through_the_parser(scripted):
    proxy, up = scripted
    client = await _make_good_known(proxy, up)
    try:
        r = await client.request("GET", "/good-split")
        assert (r.status, r.body) == (200, b"good")
        r = await client.request("GET", "/good")
        assert (r.status, r.body) == (200, b"good")
    finally:
        await client.close()
    assert up.connections == 1  # the split answer was complete: the connection stayed in use


@pytest.mark.parametrize("path", [b"/good-head-only", b"/good"])  # /good: a body in spite of HEAD
async def test_a_head_request_under_a_known_head_gets_no_body(scripted, path):
    proxy, up = scripted
    client = await _make_good_known(proxy, up)
    try:
        await client.send(b"HEAD %s HTTP/1.1\r\nHost: app.test\r\n\r\n" % path)
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 4\r\n" in head
        r = await client.request("GET", "/good")
        assert r.head.startswith(b"HTTP/1.1 200 ")  # nothing of a body was left in the stream before it
        assert (r.status, r.body) == (200, b"good")
    finally:
        await client.close()
