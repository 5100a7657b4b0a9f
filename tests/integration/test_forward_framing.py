"""Hostile request framing is refused with 400 and a closed connection; the upstream receives nothing."""

from __future__ import annotations

import asyncio

import pytest

from helpers.upstreams import RawClient, running_proxy, service, start_upstreams
from proxy.router import Router

HOSTILE = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "two-cl-differing": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                        b"Content-Length: 6\r\n\r\nhello!",
    "two-cl-same": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n"
                   b"Content-Length: 5\r\n\r\nhello",
    "cl-list": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5, 5\r\n\r\nhello",
    "cl-signed": b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: +5\r\n\r\nhello",
    "te-gzip-chunked": b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                       b"0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n  continued\r\n\r\n",
    "obs-fold-tab": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n\tcontinued\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: app.test\r\n\r\n",
    "bare-lf-header": b"GET / HTTP/1.1\r\nHost: app.test\nX-A: b\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: app.test\rX-A: b\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\x00b\r\n\r\n",
    "ctl-in-value": b"GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\x01b\r\n\r\n",
    "ctl-in-name": b"GET / HTTP/1.1\r\nHost: app.test\r\nX\x01A: b\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: app.test\r\nContent-Length : 5\r\n\r\nhello",
    "missing-host": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
    "http-2.0": b"GET / HTTP/2.0\r\nHost: app.test\r\n\r\n",
    "http-1.2": b"GET / HTTP/1.2\r\nHost: app.test\r\n\r\n",
    "http-0.9": b"GET /\r\nHost: app.test\r\n\r\n",
    "lowercase-version": b"GET / http/1.1\r\nHost: app.test\r\n\r\n",
    "double-space": b"GET  / HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "extra-token": b"GET / HTTP/1.1 x\r\nHost: app.test\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "bad-method": b"G(T / HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "no-header-name": b"GET / HTTP/1.1\r\nHost: app.test\r\n: b\r\n\r\n",
    "relative-target": b"GET foo HTTP/1.1\r\nHost: app.test\r\n\r\n",
    "connect": b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n",
}
# Refused with another status than 400 (RFC 9112 6.1: a transfer coding not implemented is 501;
# RFC 9110 15.6.6: an HTTP version the proxy does not support is 505).
STATUS = {"te-gzip-chunked": (501, "not-implemented"), "http-2.0": (505, "version-not-supported"),
          "http-1.2": (505, "version-not-supported")}


@pytest.fixture
async def recorder():
    (up,) = await start_upstreams("rec")
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    async with running_proxy(router) as proxy:
        yield proxy, up
    await up.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_framing_is_rejected_and_never_forwarded(recorder, name):
    proxy, up = recorder
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(HOSTILE[name])
        r = await client.read_response()
        assert (r.status, r.header("x-turnout-error")) == STATUS.get(name, (400, "bad-request")), name
        assert await client.at_eof()
    finally:
        await client.close()
    await asyncio.sleep(0)  # let anything (wrongly) sent reach the recorder
    assert up.bytes_received == 0, up.raw


async def test_a_hostile_request_pipelined_behind_a_good_one_is_not_forwarded(recorder):
    proxy, up = recorder
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"GET /echo HTTP/1.1\r\nHost: app.test\r\n\r\n" + HOSTILE["cl-and-te"])
        assert (await client.read_response()).status == 200
        assert (await client.read_response()).status == 400
        assert await client.at_eof()
    finally:
        await client.close()
    assert up.raw.count(b"HTTP/1.1") == 1 and b"Transfer-Encoding" not in up.raw


async def test_a_smuggled_request_inside_a_body_stays_a_body(recorder):
    proxy, up = recorder
    inner = b"GET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n"
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(inner), inner))
        r = await client.read_response()
    finally:
        await client.close()
    assert r.body == inner
    assert [q.target for q in up.requests] == ["/echo"]


async def test_bad_chunked_body_is_400_and_closes(recorder):
    proxy, up = recorder
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"zz\r\nhello\r\n0\r\n\r\n")
        r = await client.read_response()
        assert r.status == 400 and await client.at_eof()
    finally:
        await client.close()
    assert up.requests == []  # the head may have gone out, but never a complete request


async def test_valid_chunked_upload_is_streamed_through(recorder):
    proxy, up = recorder
    client = await RawClient.connect(proxy.port)
    try:
        await client.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5;ext=1\r\nhello\r\n")
        await client.send(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = await client.read_response()
        assert (r.status, r.body) == (200, b"hello world")
        r = await client.request("GET", "/")
        assert r.body == b"rec"
    finally:
        await client.close()
