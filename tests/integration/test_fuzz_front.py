"""Property-based fuzzing of the front end (hypothesis): request heads from a grammar that mixes valid and
hostile pieces, sent to a real proxy in front of a recording upstream, and to parse_request_head alone.

Properties: the proxy never crashes (a good request is answered after every example); every answer is a
well-formed HTTP/1.1 response; a request the proxy refuses (X-Turnout-Error) leaves the upstream's bytes
unchanged; what the upstream receives parses, strictly, as exactly the requests the proxy accepted (no
smuggled extra request, no leftover bytes); and the framing the upstream sees is the framing the proxy
used.
"""

from __future__ import annotations

import asyncio
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.upstreams import RawClient, running_proxy, service, start_upstreams
from proxy.http import BadRequest, build_upstream_head, forwarded_suffix, parse_request_head
from proxy.router import Router

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(TOKEN + rb" ([\x21-\x7e]+) HTTP/1\.1\r\n")
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\t\x20-\x7e]*\r\n")
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r\n")
CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]+)(?:;[^\r\n]*)?\r\n")


class Incomplete(Exception):
    pass


def parse_fields(data: bytes, pos: int) -> tuple[list[tuple[bytes, bytes]], int]:
    fields = []
    while not data.startswith(b"\r\n", pos):
        if data.find(b"\r\n", pos) < 0:
            raise Incomplete
        m = FIELD_LINE.match(data, pos)
        assert m is not None, f"malformed field line at {pos}: {data[pos:pos + 80]!r}"
        fields.append((m.group(1).lower(), m.group(2)))
        pos = m.end()
    return fields, pos + 2


def parse_chunked(data: bytes, pos: int) -> int:
    while True:
        if data.find(b"\r\n", pos) < 0:
            raise Incomplete
        m = CHUNK_SIZE.match(data, pos)
        assert m is not None, f"malformed chunk line: {data[pos:pos + 40]!r}"
        size = int(m.group(1), 16)
        pos = m.end()
        if size == 0:
            _, pos = parse_fields(data, pos)  # trailers
            return pos
        if len(data) < pos + size + 2:
            raise Incomplete
        assert data[pos + size:pos + size + 2] == b"\r\n"
        pos += size + 2


def body_end(fields: list[tuple[bytes, bytes]], data: bytes, pos: int, *, response: bool = False,
             no_body: bool = False) -> int | None:
    """Where the message body starting at `pos` ends (None: at the close of the connection)."""
    names = [n for n, _ in fields]
    lengths = [v for n, v in fields if n == b"content-length"]
    tes = [v for n, v in fields if n == b"transfer-encoding"]
    assert len(lengths) <= 1 and len(tes) <= 1 and not (lengths and tes), names
    if no_body:
        return pos
    if tes:
        assert tes[0].lower() == b"chunked"
        return parse_chunked(data, pos)
    if lengths:
        assert lengths[0].isdigit()
        end = pos + int(lengths[0])
        if len(data) < end:
            raise Incomplete
        return end
    return None if response else pos


def parse_requests(data: bytes) -> tuple[list[tuple[bytes, list[tuple[bytes, bytes]]]], bool]:
    """Strictly parse what an upstream received: (complete requests, whether an incomplete one trails)."""
    requests = []
    pos = 0
    while pos < len(data):
        start = pos
        try:
            if data.find(b"\r\n", pos) < 0:
                raise Incomplete
            m = REQUEST_LINE.match(data, pos)
            assert m is not None, f"malformed request line: {data[pos:pos + 80]!r}"
            fields, pos = parse_fields(data, m.end())
            assert [n for n, _ in fields].count(b"host") == 1
            end = body_end(fields, data, pos)
        except Incomplete:
            return requests, True
        assert end is not None
        requests.append((data[start:m.end()], fields))
        pos = end
    return requests, False


def parse_responses(data: bytes, head_requests: list[bool]) -> list[tuple[int, dict[bytes, bytes]]]:
    """Strictly parse everything the client received (every byte must belong to a response)."""
    responses = []
    pos = 0
    while pos < len(data):
        m = STATUS_LINE.match(data, pos)
        assert m is not None, f"malformed status line: {data[pos:pos + 80]!r}"
        try:
            fields, pos = parse_fields(data, m.end())
        except Incomplete:
            raise AssertionError(f"truncated response head: {data[m.start():]!r}") from None
        status = int(m.group(1))
        is_head = len(responses) < len(head_requests) and head_requests[len(responses)]
        try:
            end = body_end(fields, data, pos, response=True, no_body=is_head or status in (204, 304))
        except Incomplete:
            raise AssertionError(f"truncated response body: {data[m.start():]!r}") from None
        pos = len(data) if end is None else end
        responses.append((status, dict(fields)))
    return responses


# ------------------------------------------------------------------------------------------ grammar
def pick(valid: list[bytes], hostile: list[bytes]) -> st.SearchStrategy[bytes]:
    """Mostly valid pieces, sometimes hostile ones."""
    return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(hostile))


METHODS = pick([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"],
               [b"get", b"G\x00T", b"", b"CONNECT", b"A" * 40, b"GET /", b"PRI"])
TARGETS = pick([b"/", b"/echo", b"/a?b=c", b"http://app.test/echo", b"*"],
               [b"http://u@app.test/", b"/\x00", b"", b"/ /", b"foo", b"http:///", b"/\xc3\xa9", b"ftp://x/"])
VERSIONS = pick([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"],
                [b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"", b"HTTP/1.10", b"HTTP/0.9", b"HTTP/1.2"])
SEPARATORS = pick([b" "], [b"  ", b"\t", b""])
EOLS = pick([b"\r\n"], [b"\n", b"\r", b"\r\r\n", b"\n\r"])
NAMES = pick([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"X-A", b"Expect",
              b"Upgrade", b"X-Forwarded-For", b"Forwarded", b"X-Real-IP", b"Cookie", b"X-Turnout-Pool",
              b"TE"],
             [b"Content-Length ", b"Transfer-Encoding\t", b"X\x00A", b"Host ", b" Host", b"",
              b"X_Forwarded_For", b"content-length", b"TRANSFER-ENCODING", b"X-\xe9"])
VALUES = st.one_of(
    pick([b"app.test", b"5", b"0", b"<len>", b"chunked", b"close", b"keep-alive", b"100-continue", b"x",
          b"trailers", b"1.2.3.4"],
         [b"", b"-1", b"+5", b"05", b"5, 5", b"chunked, identity", b"gzip, chunked", b"xchunked", b"Chunked",
          b"keep-alive, X-A", b"Content-Length", b"Host", b"h2c", b"websocket", b"a\x00b", b"a\x01b",
          b"app .test", b"a@app.test", b"99999999999999999999", b" x\r\n folded"]),
    st.binary(max_size=6),
)
BODIES = pick([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n"],
              [b"zz\r\n", b"5\r\nhelloXX", b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
               b"3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
               b"ffffffffffffffffff\r\n"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """One request (bytes) and its method."""
    method, target, version = draw(METHODS), draw(TARGETS), draw(VERSIONS)
    eol = draw(EOLS)
    body = draw(BODIES)
    line = method + draw(SEPARATORS) + target + draw(SEPARATORS) + version + eol
    fields = []
    if draw(st.integers(0, 9)):  # usually a good Host first
        fields.append(b"Host: app.test" + draw(EOLS))
    for name, value in draw(st.lists(st.tuples(NAMES, VALUES), max_size=5)):
        value = value.replace(b"<len>", str(len(body)).encode())
        fields.append(name + draw(pick([b": ", b":"], [b" : ", b":\t", b"\t:"])) + value + draw(EOLS))
    return line + b"".join(fields) + draw(EOLS) + body, method


# ------------------------------------------------------------------------------------------ front end
def test_fuzz_the_front_end_on_real_sockets():
    with asyncio.Runner() as runner:
        up, proxy = runner.run(_start())
        try:
            @settings(max_examples=200, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(st.lists(requests(), min_size=1, max_size=2))
            def check(reqs: list[tuple[bytes, bytes]]) -> None:
                runner.run(_one_example(proxy, up, reqs))

            check()
        finally:
            runner.run(_stop(up, proxy))


async def _start():
    (up,) = await start_upstreams("fuzz")
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    cm = running_proxy(router, header_timeout=0.3, body_idle_timeout=0.2, upstream_timeout=20.0,
                       idle_timeout=2.0)
    proxy = await cm.__aenter__()
    proxy._test_cm = cm  # type: ignore[attr-defined]
    return up, proxy


async def _stop(up, proxy) -> None:
    await proxy._test_cm.__aexit__(None, None, None)
    await up.close()


async def _one_example(proxy, up, reqs: list[tuple[bytes, bytes]]) -> None:
    start = len(up.raw)
    assert start < 900_000, "the recorder's buffer is nearly full"
    client = await RawClient.connect(proxy.port)
    try:
        client.writer.write(b"".join(r for r, _ in reqs))
        client.writer.write_eof()  # the proxy answers what it has, then closes
        received = await asyncio.wait_for(client.reader.read(), 10)
    finally:
        await client.close()
    await asyncio.sleep(0.01)  # what the proxy forwarded has reached the recorder
    # A HEAD answer has no body: known whenever the request line starts with "HEAD " (the rest of the
    # head may be malformed; with another separator nobody can tell the method).
    responses = parse_responses(received, [r.startswith(b"HEAD ") for r, _ in reqs])
    assert len(responses) <= len(reqs)
    forwarded = 0
    for status, fields in responses:
        if b"x-turnout-error" in fields:
            assert status >= 400 and b"x-upstream" not in fields
        else:
            assert fields.get(b"x-upstream") == b"fuzz", fields
            forwarded += 1
    delta = bytes(up.raw[start:])
    got, trailing = parse_requests(delta)
    assert len(got) == forwarded, (delta, received)  # no smuggled request, none lost
    assert all(b"/smuggled" not in line for line, _ in got)
    errors = [f[b"x-turnout-error"] for _, f in responses if b"x-turnout-error" in f]
    if trailing:  # only a request cut by its body deadline may have been left half-sent
        assert errors and errors[-1] == b"body-timeout", (delta, received)
    if not forwarded and errors and errors[-1] != b"body-timeout":
        assert delta == b"", (delta, received)  # refused: nothing reached the upstream
    # Still alive: a good request on a new connection.
    client = await RawClient.connect(proxy.port)
    try:
        r = await client.request("GET", "/")
        assert (r.status, r.body) == (200, b"fuzz")
    finally:
        await client.close()


# ------------------------------------------------------------------------------------------ parser only
@settings(max_examples=1000, deadline=None, database=None)
@given(requests())
def test_fuzz_parse_request_head(request):
    raw, _ = request
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return
    head = raw[:end + 4]
    try:
        req = parse_request_head(head)
    except BadRequest as exc:
        assert exc.status in (400, 501, 505)
        return
    sent = build_upstream_head(head, req, b"127.0.0.1", False, forwarded_suffix("127.0.0.1", False))
    # What the upstream gets is one strictly valid HTTP/1.1 head with one Host ...
    got, trailing = parse_requests(sent)
    assert len(got) == 1 and not trailing
    line, fields = got[0]
    names = [n for n, _ in fields]
    # ... whose framing is exactly the framing the proxy uses for the body ...
    cl = [v for n, v in fields if n == b"content-length"]
    te = [v for n, v in fields if n == b"transfer-encoding"]
    if req.chunked:
        assert [t.lower() for t in te] == [b"chunked"] and not cl
    else:
        assert not te
        assert cl == ([] if req.content_length < 0 else [str(req.content_length).encode()])
    # ... with no hop-by-hop or client-supplied forwarding headers left, and the Host it was routed by.
    for name in (b"connection", b"keep-alive", b"te", b"upgrade", b"forwarded", b"x-real-ip",
                 b"x_forwarded_for", b"proxy-connection"):
        assert (name in (b"connection", b"upgrade") and req.websocket) or name not in names, name
    assert [v for n, v in fields if n == b"x-forwarded-for"] == [b"127.0.0.1"]
    host = next(v for n, v in fields if n == b"host")
    assert host.lower().split(b":")[0] == req.host.encode() or host.startswith(b"[")
