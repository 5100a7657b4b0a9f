"""Hostile requests on raw sockets (bytes in, bytes out): refused with the fitting status and a closed
connection, and nothing reaches the upstream (the recording upstream receives no byte, no connection).

Complements tests/integration/test_forward_framing.py (32 cases there, none repeated here). The allowed
variants (headers nominated in Connection, spoofed forwarding headers, absolute-form targets, Expect,
pipelining) are checked on the bytes the upstream actually received, never through an HTTP library.
"""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest

from helpers import loopback
from helpers.upstreams import RawClient, running_proxy, service, start_upstreams, wait_for
from proxy.router import Router

H = b"Host: app.test"
MAX_HEADER = 4096
MAX_BODY = 1000


def get(*lines: bytes, line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n"


def post(*lines: bytes, body: bytes = b"") -> bytes:
    return get(H, *lines, line=b"POST /echo HTTP/1.1") + body


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked", body=body)


def head_of(size: int, path: bytes = b"/") -> bytes:
    """A GET head of exactly `size` bytes: request line, header lines and the final CRLF CRLF."""
    start = b"GET %s HTTP/1.1\r\nHost: app.test\r\nX-Pad: " % path
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


BAD, E501, E505 = (400, "bad-request"), (501, "not-implemented"), (505, "version-not-supported")
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n\r\n"
SMUGGLED_CL = b"Content-Length: %d" % len(SMUGGLED)

# name -> (bytes sent in one write, (status, X-Turnout-Error))
HOSTILE: dict[str, tuple[bytes, tuple[int, str]]] = {
    # ---- Content-Length obfuscations
    "cl-negative": (post(b"Content-Length: -5", body=b"hello"), BAD),
    "cl-leading-zeros": (post(b"Content-Length: 005", body=b"hello"), BAD),
    "cl-octal-looking": (post(b"Content-Length: 010", body=b"12345678"), BAD),
    "cl-inner-space": (post(b"Content-Length: 1 0", body=b"0123456789"), BAD),
    "cl-hex": (post(b"Content-Length: 0x5", body=b"hello"), BAD),
    "cl-decimal": (post(b"Content-Length: 5.0", body=b"hello"), BAD),
    "cl-empty": (post(b"Content-Length: ", body=b"hello"), BAD),
    "cl-20-digits": (post(b"Content-Length: 99999999999999999999", body=b"hello"), BAD),
    "cl-list-differing": (post(b"Content-Length: 5,6", body=b"hello!"), BAD),
    "cl-fullwidth-digit": (post("Content-Length: \uff15".encode(), body=b"hello"), BAD),
    "cl-tab-before-colon": (post(b"Content-Length\t: 5", body=b"hello"), BAD),
    # ---- Transfer-Encoding obfuscations
    "te-chunked-identity": (post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"), BAD),
    "te-chunked-twice-in-list": (post(b"Transfer-Encoding: chunked, chunked", body=b"0\r\n\r\n"), BAD),
    "te-identity-chunked": (post(b"Transfer-Encoding: identity, chunked", body=b"0\r\n\r\n"), E501),
    "te-uppercase-with-cl": (post(b"Transfer-Encoding: CHUNKED", b"Content-Length: 5",
                             body=b"0\r\n\r\n"), BAD),
    "te-tab-value-with-cl": (post(b"Content-Length: 5", b"Transfer-Encoding:\tchunked",
                             body=b"0\r\n\r\n"), BAD),
    "te-space-before-colon": (post(b"Transfer-Encoding : chunked", body=b"0\r\n\r\n"), BAD),
    "te-leading-comma": (post(b"Transfer-Encoding: ,chunked", body=b"0\r\n\r\n"), BAD),
    "te-second-line-identity": (post(b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity",
                                     body=b"0\r\n\r\n"), BAD),
    "te-vertical-tab": (post(b"Transfer-Encoding:\x0bchunked", body=b"0\r\n\r\n"), BAD),
    "te-empty": (post(b"Transfer-Encoding: ", body=b"0\r\n\r\n"), BAD),
    "te-quoted": (post(b'Transfer-Encoding: "chunked"', body=b"0\r\n\r\n"), BAD),
    "te-with-parameter": (post(b"Transfer-Encoding: chunked;q=1", body=b"0\r\n\r\n"), BAD),
    "te-trailing-junk": (post(b"Transfer-Encoding: chunked x", body=b"0\r\n\r\n"), BAD),
    # ---- chunk-size syntax and overflow (head and body in one write: refused before anything goes out)
    "chunk-hex-overflow": (chunked(b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n"), BAD),
    "chunk-16-digits": (chunked(b"0000000000000005\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-negative": (chunked(b"-5\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-0x": (chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-empty-size": (chunked(b"\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-size-inner-space": (chunked(b"5 5\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-ext-bare-lf": (chunked(b"5;a=b\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-ext-4k": (chunked(b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-ext-nul": (chunked(b"5;a=\x00\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-ext-empty": (chunked(b"5;\r\nhello\r\n0\r\n\r\n"), BAD),  # RFC 9112 7.1.1: a name after ";"
    "chunk-ext-empty-after-one": (chunked(b"5;a=b;\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-ext-empty-value": (chunked(b"5;a=\r\nhello\r\n0\r\n\r\n"), BAD),
    "chunk-missing-crlf-after-data": (chunked(b"5\r\nhelloX\r\n0\r\n\r\n"), BAD),
    "chunk-bare-lf-after-data": (chunked(b"5\r\nhello\n0\r\n\r\n"), BAD),
    "chunk-trailer-no-colon": (chunked(b"0\r\nX Bad\r\n\r\n"), BAD),
    "chunk-trailer-obs-fold": (chunked(b"0\r\nX-T: a\r\n b\r\n\r\n"), BAD),
    # ---- line endings and control characters
    "bare-cr-ends-request-line": (b"GET / HTTP/1.1\r\r\n" + H + b"\r\n\r\n", BAD),
    "bare-lf-ends-head": (b"GET / HTTP/1.1\r\n" + H + b"\n\n", BAD),
    "nul-in-target": (get(H, line=b"GET /\x00 HTTP/1.1"), BAD),
    "nul-in-method": (get(H, line=b"G\x00ET / HTTP/1.1"), BAD),
    "del-in-name": (get(H, b"X\x7fA: b"), BAD),
    "tab-in-name": (get(H, b"X\tA: b"), BAD),
    "non-ascii-name": (get(H, b"X-\xe9: b"), BAD),
    "esc-in-host": (get(b"Host: app\x1b.test"), BAD),
    "formfeed-in-value": (get(H, b"X-A: a\x0cb"), BAD),
    "utf8-in-target": (get(H, line="GET /\u00e9 HTTP/1.1".encode()), BAD),
    # ---- request lines and versions
    "tab-separators": (get(H, line=b"GET\t/\tHTTP/1.1"), BAD),
    "leading-space": (get(H, line=b" GET / HTTP/1.1"), BAD),
    "missing-target": (get(H, line=b"GET HTTP/1.1"), BAD),
    "empty-version": (get(H, line=b"GET / "), BAD),
    "version-trailing-space": (get(H, line=b"GET / HTTP/1.1 "), BAD),
    "version-two-digit-minor": (get(H, line=b"GET / HTTP/1.10"), BAD),
    "version-https": (get(H, line=b"GET / HTTPS/1.1"), BAD),
    "version-no-slash": (get(H, line=b"GET / HTTP1.1"), BAD),
    "version-0.9-explicit": (get(H, line=b"GET / HTTP/0.9"), E505),
    "version-3.0": (get(H, line=b"GET / HTTP/3.0"), E505),
    "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", E505),
    "method-100-chars": (get(H, line=b"A" * 100 + b" / HTTP/1.1"), E501),
    # ---- Host
    "host-with-space": (get(b"Host: app .test"), BAD),
    "host-userinfo": (get(b"Host: a@app.test"), BAD),
    "host-empty": (get(b"Host: "), BAD),
    "host-bad-port": (get(b"Host: app.test:80x"), BAD),
    "host-with-path": (get(b"Host: app.test/evil"), BAD),
    "host-list": (get(b"Host: app.test, evil.test"), BAD),
    "host-ipv6-unclosed": (get(b"Host: [::1"), BAD),
    "host-missing-absolute-form": (get(line=b"GET http://app.test/ HTTP/1.1"), BAD),
    "host-twice-http10": (get(b"Host: app.test", b"Host: evil.test", line=b"GET / HTTP/1.0"), BAD),
    # ---- absolute-form targets
    "absolute-userinfo": (get(H, line=b"GET http://user@app.test/ HTTP/1.1"), BAD),
    "absolute-empty-authority": (get(H, line=b"GET http:///x HTTP/1.1"), BAD),
    "absolute-other-scheme": (get(H, line=b"GET ftp://app.test/ HTTP/1.1"), BAD),
    "absolute-bad-port": (get(H, line=b"GET http://app.test:8o/ HTTP/1.1"), BAD),
    # ---- asterisk-form is for OPTIONS only (RFC 9112 3.2.4)
    "asterisk-form-delete": (get(H, line=b"DELETE * HTTP/1.1"), BAD),
    "asterisk-form-get": (get(H, line=b"GET * HTTP/1.1"), BAD),
    # ---- headers nominated in Connection that would unframe or unroute the request upstream
    "connection-content-length": (post(SMUGGLED_CL, b"Connection: keep-alive, Content-Length",
                                       body=SMUGGLED), BAD),
    "connection-host": (get(H, b"Connection: Host"), BAD),
    # ---- upgrades
    "upgrade-h2c-alone": (get(H, b"Upgrade: h2c"), BAD),
    # Upgrade without the "upgrade" Connection option (RFC 9110 7.8 requires both): never an upgrade
    "upgrade-websocket-alone": (get(H, b"Upgrade: websocket"), BAD),
    "upgrade-websocket-keep-alive": (get(H, b"Connection: keep-alive", b"Upgrade: websocket"), BAD),
    "upgrade-h2c-or-websocket": (get(H, b"Connection: Upgrade", b"Upgrade: h2c, websocket"), BAD),
    "upgrade-websocket-post": (post(b"Connection: Upgrade", b"Upgrade: websocket", b"Content-Length: 0"),
                               BAD),
    "upgrade-websocket-http10": (get(H, b"Connection: Upgrade", b"Upgrade: websocket",
                                     line=b"GET / HTTP/1.0"), BAD),
    # ---- oversized (max_header_bytes=4096, max_body_bytes=1000 here)
    "request-line-too-long": (get(H, line=b"GET /" + b"a" * 5000 + b" HTTP/1.1"), (414, "uri-too-long")),
    "head-one-byte-over-the-limit": (head_of(MAX_HEADER + 1), (431, "header-too-large")),
    "too-many-header-lines": (get(H, *[b"X-%d: v" % i for i in range(600)]), (431, "header-too-large")),
    "cl-too-large-with-expect": (post(b"Content-Length: 1001", b"Expect: 100-continue"),
                                 (413, "body-too-large")),
    "chunk-declared-too-large": (chunked(b"fffffff\r\nabc"), (413, "body-too-large")),
}


@pytest.fixture
async def recorder():
    (up,) = await start_upstreams("rec")
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    async with running_proxy(router, max_header_bytes=MAX_HEADER, max_body_bytes=MAX_BODY,
                             header_timeout=3.0, body_idle_timeout=3.0) as proxy:
        yield proxy, up
    await up.close()


@contextlib.asynccontextmanager
async def connect(port: int):
    client = await RawClient.connect(port)
    try:
        yield client
    finally:
        await client.close()


def test_the_cases_are_distinct_and_at_least_60_with_the_framing_file():
    from test_forward_framing import HOSTILE as EXISTING

    mine = {raw for raw, _ in HOSTILE.values()}
    assert len(mine) == len(HOSTILE)  # no two cases send the same bytes
    assert not mine & set(EXISTING.values())
    assert len(HOSTILE) + len(EXISTING) >= 60


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_request_is_refused_closed_and_never_forwarded(recorder, name):
    proxy, up = recorder
    raw, expected = HOSTILE[name]
    async with connect(proxy.port) as client:
        await client.send(raw)
        r = await client.read_response()
        assert (r.status, r.header("x-turnout-error")) == expected, name
        assert r.header("connection") == "close"
        assert await client.at_eof()
    await asyncio.sleep(0.05)  # anything wrongly sent on would have reached the recorder by now
    assert (up.connections, up.bytes_received) == (0, 0), bytes(up.raw)


async def test_the_recorder_does_see_a_valid_request(recorder):
    """The negative assertions above could not pass by accident: a good request is recorded."""
    proxy, up = recorder
    async with connect(proxy.port) as client:
        await client.send(post(b"Content-Length: 5", body=b"hello"))
        assert (await client.read_response()).body == b"hello"
    assert up.connections == 1 and up.raw.endswith(b"\r\n\r\nhello")


# ------------------------------------------------------------------------------ streamed chunked bodies
SEGMENTED = {
    # name: (segments, the status) — the first segments are valid and go out; a later one turns bad
    "bad-size-in-second-segment": ([b"5\r\nhello\r\n", b"zz\r\nhello\r\n0\r\n\r\n"], BAD),
    "missing-crlf-in-third-segment": ([b"5\r\nhel", b"lo", b"XX6\r\n world\r\n0\r\n\r\n"], BAD),
    "bare-lf-in-trailer-later": ([b"5\r\nhello\r\n0\r\n", b"X-T: a\n\r\n"], BAD),
    "overflow-in-later-segment": ([b"5\r\nhello\r\n", b"10000000000000000\r\n"], BAD),
    "too-large-in-later-segment": ([b"5\r\nhello\r\n", b"3e8\r\n" + b"x" * 10], (413, "body-too-large")),
    # a chunk line trickled over reads: refused once it passes 4 KiB, not buffered without end
    "chunk-line-trickled-past-4k": ([b"5;a=" + b"b" * 2000, b"b" * 2000, b"b" * 200], BAD),
}


@pytest.mark.parametrize("name", sorted(SEGMENTED))
async def test_chunked_body_turning_malformed_later_is_cut_upstream(recorder, name):
    """Bodies are streamed, so the valid prefix has gone out; the bad bytes never do, the upstream
    connection is aborted, and the upstream never completes a request."""
    proxy, up = recorder
    segments, expected = SEGMENTED[name]
    async with connect(proxy.port) as client:
        await client.send(chunked(b""))
        for segment in segments:
            await asyncio.sleep(0.05)
            await client.send(segment)
        r = await client.read_response()
        assert (r.status, r.header("x-turnout-error")) == expected
        assert await client.at_eof()
    await wait_for(lambda: up.open_connections == 0)
    assert up.requests == []
    head, _, body = bytes(up.raw).partition(b"\r\n\r\n")
    assert head.startswith(b"POST /echo HTTP/1.1\r\n")
    assert body == b"".join(segments[:-1])  # exactly the valid segments; the bad one never went out


# ------------------------------------------------------------------------------ allowed, but rewritten
async def upstream_head(proxy, up, raw: bytes, path: bytes = b"/headers") -> bytes:
    """Send `raw`, expect it answered by the upstream; return the head the upstream received."""
    async with connect(proxy.port) as client:
        await client.send(raw)
        r = await client.read_response()
        assert r.status == 200 and r.header("x-turnout-error") is None
    assert up.requests, "nothing reached the upstream"
    return up.requests[-1].head


def lines_named(head: bytes, name: bytes) -> list[bytes]:
    return re.findall(rb"\r\n" + re.escape(name) + rb":[ \t]*([^\r]*)", head, re.IGNORECASE)


@pytest.mark.parametrize("connection", [b"X-Secret", b"x-secret, X-Other", b"keep-alive, X-SECRET , X-Other"])
async def test_headers_nominated_in_connection_are_stripped(recorder, connection):
    proxy, up = recorder
    head = await upstream_head(proxy, up, get(H, b"Connection: " + connection, b"X-Secret: s",
                                              b"X-Other: o", b"X-Kept: k", line=b"GET /headers HTTP/1.1"))
    assert lines_named(head, b"x-secret") == []
    assert lines_named(head, b"connection") == []
    assert lines_named(head, b"x-kept") == [b"k"]
    assert (lines_named(head, b"x-other") == []) == (b"other" in connection.lower())


async def test_connection_nominating_x_request_id_gets_the_proxys_own(recorder):
    proxy, up = recorder
    head = await upstream_head(proxy, up, get(H, b"Connection: X-Request-Id", b"X-Request-Id: forged",
                                              line=b"GET /headers HTTP/1.1"))
    ids = lines_named(head, b"x-request-id")
    assert len(ids) == 1 and ids[0] != b"forged"


SPOOFED = (b"X-Forwarded-For: 6.6.6.6", b"X-Forwarded-Host: evil.test", b"X-Forwarded-Proto: https",
           b"x-forwarded-port: 443", b"Forwarded: for=6.6.6.6;proto=https", b"X-Real-IP: 6.6.6.6",
           b"X_Forwarded_For: 6.6.6.6", b"X-Real_IP: 6.6.6.6")


async def test_spoofed_forwarding_headers_from_an_untrusted_peer_are_replaced(recorder):
    proxy, up = recorder
    head = await upstream_head(proxy, up, get(H, *SPOOFED, line=b"GET /headers HTTP/1.1"))
    assert b"6.6.6.6" not in head and b"evil.test" not in head and b"https" not in head
    assert lines_named(head, b"x-forwarded-for") == [b"127.0.0.1"]
    assert lines_named(head, b"x-forwarded-proto") == [b"http"]
    assert lines_named(head, b"x-forwarded-host") == [b"app.test"]
    assert lines_named(head, b"x-forwarded-port") == [b"%d" % proxy.port]  # the listener's, not 443
    for name in (b"forwarded", b"x-real-ip", b"x_forwarded_for", b"x-real_ip"):
        assert lines_named(head, name) == [], name


async def test_header_names_with_an_underscore_never_reach_the_upstream(recorder):
    """CGI/WSGI-style servers read `Transfer_Encoding` as Transfer-Encoding: beside a Content-Length it
    would frame the body differently there than here. Dropped, as nginx does (`underscores_in_headers`)."""
    proxy, up = recorder
    chunked_body = b"5\r\nhello\r\n0\r\n\r\n"
    head = await upstream_head(proxy, up, get(
        H, b"Transfer_Encoding: chunked", b"Content-Length: %d" % len(chunked_body), b"X_Custom: 1",
        b"x-also_this: 2", b"X-Kept: a_b", line=b"POST /echo?a_b=1 HTTP/1.1") + chunked_body)
    assert up.requests[-1].body == chunked_body  # framed by the Content-Length, as the proxy framed it
    assert b"_" not in head.split(b"\r\n", 1)[1].replace(b"a_b", b"")  # no underscore name at all
    assert lines_named(head, b"x-kept") == [b"a_b"]  # underscores in values and targets are fine
    assert head.startswith(b"POST /echo?a_b=1 HTTP/1.1\r\n")


async def test_proxy_connection_is_hop_by_hop(recorder):
    proxy, up = recorder
    head = await upstream_head(proxy, up, get(H, b"Proxy-Connection: keep-alive", b"X-Kept: k",
                                              line=b"GET /headers HTTP/1.1"))
    assert lines_named(head, b"proxy-connection") == []
    assert lines_named(head, b"x-kept") == [b"k"]


async def test_a_head_exactly_at_max_header_bytes_is_forwarded(recorder):
    """`max_header_bytes` bounds the whole head, final CRLF CRLF included: at the limit it passes, one
    byte over is 431 (`head-one-byte-over-the-limit` above)."""
    proxy, up = recorder
    raw = head_of(MAX_HEADER, path=b"/headers")
    assert len(raw) == MAX_HEADER
    head = await upstream_head(proxy, up, raw)
    assert lines_named(head, b"x-pad") == lines_named(raw, b"x-pad")


async def test_absolute_form_wins_and_the_upstream_sees_a_consistent_host(recorder):
    proxy, up = recorder
    head = await upstream_head(proxy, up, get(b"Host: evil.test", line=b"GET http://App.Test:80/headers?q=1 "
                                                                         b"HTTP/1.1"))
    assert head.startswith(b"GET /headers?q=1 HTTP/1.1\r\n")  # origin-form upstream
    assert lines_named(head, b"host") == [b"App.Test:80"]
    assert b"evil.test" not in head
    head = await upstream_head(proxy, up, get(line=b"GET http://app.test/headers HTTP/1.0"))
    assert head.startswith(b"GET /headers HTTP/1.1\r\n") and lines_named(head, b"host") == [b"app.test"]


async def test_absolute_form_routes_by_its_authority():
    ups = await start_upstreams("one", "two")
    router = Router()
    router.set_service(service("one", pools={"p": (1, [ups[0].address])}, hosts=["one.test"]))
    router.set_service(service("two", pools={"p": (1, [ups[1].address])}, hosts=["two.test"]))
    try:
        async with running_proxy(router) as proxy, connect(proxy.port) as client:
            await client.send(get(b"Host: one.test", line=b"GET http://two.test/ HTTP/1.1"))
            r = await client.read_response()
            assert r.body == b"two"
            assert lines_named(ups[1].requests[0].head, b"host") == [b"two.test"]
            assert ups[0].bytes_received == 0
    finally:
        for u in ups:
            await u.close()


# ------------------------------------------------------------------------------ Expect: 100-continue
class ContinueUpstream:
    """Answers 100 Continue, reads the Content-Length body, answers 200 with it (keep-alive)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: loopback.LoopbackServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> ContinueUpstream:
        self.server = await loopback.start_server(self.serve, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                n = int((lines_named(head, b"content-length") or [b"0"])[0])
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await reader.readexactly(n)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


async def test_expect_100_continue_is_passed_upstream_and_its_100_relayed():
    """Decision (RFC 9110 10.1.1): the proxy forwards the head with its Expect at once and relays the
    upstream's 100; it never answers 100 itself (it would not know the upstream accepts the body)."""
    up = await ContinueUpstream().start()
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    try:
        async with running_proxy(router) as proxy, connect(proxy.port) as client:
            await client.send(post(b"Content-Length: 5", b"Expect: 100-continue"))
            interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await client.send(b"hello")
            r = await client.read_response()
            assert (r.status, r.body) == (200, b"hello")
            assert lines_named(up.heads[0], b"expect") == [b"100-continue"]
            # An HTTP/1.0 client never gets the interim answer, only the final one.
            await client.send(get(H, b"Content-Length: 3", b"Expect: 100-continue", line=b"POST / HTTP/1.0")
                              + b"abc")
            rest = await asyncio.wait_for(client.reader.read(), 5)
            assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nabc")
            assert b" 100 " not in rest
    finally:
        await up.close()


async def test_expect_100_continue_without_an_interim_answer_upstream(recorder):
    """An upstream that ignores Expect: the client's body, sent after its wait, still goes through."""
    proxy, up = recorder
    async with connect(proxy.port) as client:
        await client.send(post(b"Content-Length: 5", b"Expect: 100-continue"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 0.2)
        await client.send(b"hello")
        r = await client.read_response()
        assert (r.status, r.body) == (200, b"hello")
    assert up.requests[0].headers["expect"] == "100-continue"


# ------------------------------------------------------------------------------ pipelining
SMUGGLE_BEHIND = {  # name: (good requests first, then one hostile request; all in one write)
    "te-list-behind-get": (1, get(H) + post(b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n")),
    "obs-fold-behind-chunked-post": (1, chunked(b"3\r\nabc\r\n0\r\n\r\n") + get(H, b"X-A: a", b" b")),
    "connection-cl-behind-two": (2, get(H) + post(b"Content-Length: 2", body=b"ok")
                                 + post(SMUGGLED_CL, b"Connection: content-length", body=SMUGGLED)),
}


@pytest.mark.parametrize("name", sorted(SMUGGLE_BEHIND))
async def test_smuggling_attempt_behind_good_pipelined_requests_is_never_forwarded(recorder, name):
    proxy, up = recorder
    good, raw = SMUGGLE_BEHIND[name]
    async with connect(proxy.port) as client:
        await client.send(raw)
        answers = [await client.read_response() for _ in range(good + 1)]
        assert [r.status for r in answers] == [200] * good + [400]
        assert await client.at_eof()
    assert len(up.requests) == good
    assert up.raw.count(b" HTTP/1.1\r\n") == good
    assert b"smuggled" not in up.raw and b"identity" not in up.raw and b" b\r\n" not in up.raw


async def test_good_pipelined_requests_with_bodies_are_answered_in_order(recorder):
    proxy, up = recorder
    async with connect(proxy.port) as client:
        await client.send(chunked(b"3\r\none\r\n0\r\nX-Trailer: t\r\n\r\n")
                          + post(b"Content-Length: 3", body=b"two") + get(H, line=b"GET /status/404 HTTP/1.1")
                          + b"\r\n" + chunked(b"5\r\nthree\r\n0\r\n\r\n"))
        answers = [await client.read_response() for _ in range(4)]
    assert [(r.status, r.body) for r in answers] == [(200, b"one"), (200, b"two"), (404, b"status body"),
                                                     (200, b"three")]
    assert [q.body for q in up.requests] == [b"one", b"two", b"", b"three"]
    assert up.connections == 1
