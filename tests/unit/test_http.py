"""proxy.http: head validation, header rewriting, proxy-made answers, chunked framing (no sockets)."""

from __future__ import annotations

import pytest

from proxy.http import (
    BadRequest,
    ChunkedFramer,
    RequestHeads,
    build_upstream_head,
    error_response,
    forced_and_sticky,
    forwarded_suffix,
    head_tag,
    next_request_id,
    parse_request_head,
    response_head,
    sticky_cookie,
)


def upstream_head(raw: bytes, trusted: bool = False) -> bytes:
    req = parse_request_head(raw)
    return build_upstream_head(raw, req, b"10.0.0.9", trusted, forwarded_suffix("10.0.0.9", trusted))


def test_simple_get():
    req = parse_request_head(b"GET /a/b?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n")
    assert (req.method, req.target, req.http11) == (b"GET", b"/a/b?x=1", True)
    assert (req.host, req.path) == ("example.com", "/a/b")
    assert req.keep_alive and req.content_length == -1 and not req.chunked


@pytest.mark.parametrize(("host", "expected"), [
    (b"[::1]:8000", "[::1]"), (b"app.test", "app.test"), (b"APP.test:80", "app.test")])
def test_host_normalisation(host, expected):
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n").host == expected


def test_absolute_form_target_wins_over_host():
    req = parse_request_head(b"GET http://other.test:81/p?q HTTP/1.1\r\nHost: app.test\r\n\r\n")
    assert (req.host, req.path) == ("other.test", "/p")


def test_http10_keep_alive_only_when_asked():
    assert not parse_request_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert parse_request_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive
    assert not parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive


@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    b"POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
])
def test_hostile_heads_are_refused(raw):
    with pytest.raises(BadRequest) as info:
        parse_request_head(raw)
    assert info.value.status == 400


def test_unsupported_version_is_505():
    with pytest.raises(BadRequest) as info:
        parse_request_head(b"GET / HTTP/1.3\r\nHost: a\r\n\r\n")
    assert info.value.status == 505


def test_websocket_upgrade_is_recognised_and_re_sent():
    raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
    assert parse_request_head(raw).websocket
    head = upstream_head(raw)
    assert head.count(b"Upgrade: websocket\r\n") == 1 and b"Connection: Upgrade\r\n" in head
    assert b"keep-alive" not in head


def test_upstream_head_drops_hop_by_hop_and_forwarded_headers():
    raw = (b"GET /x HTTP/1.1\r\nHost: app.test\r\nConnection: X-Private\r\nX-Private: 1\r\n"
           b"Keep-Alive: 5\r\nProxy-Authorization: t\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\n"
           b"X-Forwarded-Port: 1\r\nForwarded: for=x\r\nX-Request-Id: abc\r\nCookie: a=b\r\n\r\n")
    head = upstream_head(raw)
    assert head.startswith(b"GET /x HTTP/1.1\r\nHost: app.test\r\n")
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
    for gone in (b"X-Private", b"Keep-Alive", b"Proxy-Authorization", b"TE:", b"6.6.6.6",
                 b"X-Forwarded-Port", b"Forwarded: for"):
        assert gone not in head
    assert b"X-Forwarded-For: 10.0.0.9\r\n" in head and b"X-Forwarded-Host: app.test\r\n" in head
    assert b"X-Request-Id: abc\r\n" in head and head.count(b"X-Request-Id") == 1  # kept, not added
    assert b"Cookie: a=b\r\n" in head and b"Via: 1.1 turnout\r\n" in head


def test_trusted_peer_extends_the_chain():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n\r\n"
    head = upstream_head(raw, trusted=True)
    assert b"X-Forwarded-For: 1.1.1.1, 10.0.0.9\r\n" in head and b"X-Forwarded-Proto: https\r\n" in head


def test_request_ids_are_generated_and_distinct():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    ids = {line for line in (upstream_head(raw).split(b"\r\n") + upstream_head(raw).split(b"\r\n"))
           if line.startswith(b"X-Request-Id: ")}
    assert len(ids) == 2


def test_http10_is_forwarded_as_http11():
    assert upstream_head(b"GET /p HTTP/1.0\r\n\r\n").startswith(b"GET /p HTTP/1.1\r\n")


def test_forced_and_sticky_come_from_header_or_cookies():
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: x=1; turnout-pool=green; "
                             b"turnout-app=blue\r\n\r\n")
    assert forced_and_sticky(req, "turnout-app") == ("green", "blue")
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-Turnout-Pool: canary\r\nCookie: y=2\r\n\r\n")
    assert forced_and_sticky(req, "turnout-app") == ("canary", None)
    assert req.cookies is None  # no "turnout" in the Cookie header: not parsed at all


def test_the_pool_override_never_goes_upstream():
    head = upstream_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-Turnout-Pool: v2:secret\r\n"
                         b"Cookie: a=1; turnout-pool=v2:secret;turnout-web=v1; b=2\r\n"
                         b"Cookie: turnout-pool=v2\r\nx-turnout-pool: v3\r\n\r\n")
    assert b"secret" not in head and b"turnout-pool" not in head.lower() and b"v3" not in head
    assert b"\r\nCookie: a=1;turnout-web=v1; b=2\r\n" in head  # the rest, as sent
    assert head.count(b"Cookie:") == 1  # a line holding only the override's cookie goes
    kept = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: xturnout-pool=1; turnout-poolx=2\r\n\r\n"
    assert b"Cookie: xturnout-pool=1; turnout-poolx=2\r\n" in upstream_head(kept)  # other names stay


def test_error_responses_are_marked_and_cached():
    data = error_response(503, "hold-timeout", close=False, retry_after=10)
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"X-Turnout-Error: hold-timeout\r\n" in data and b"Retry-After: 10\r\n" in data
    assert b"Connection: close" not in data
    assert error_response(503, "hold-timeout", close=False, retry_after=10) is data
    head, _, body = error_response(502, "upstream-connect").partition(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(body) in head and b"Connection: close" in head
    assert error_response(502, "upstream-connect", head_only=True).endswith(b"\r\n\r\n")
    assert b"maintenance" in error_response(503, "maintenance")


def test_response_head_framing():
    head = response_head(200, b"OK", b"\r\nX-A: 1", content_length=None, chunked=True, keep_alive=True,
                         http11=True, extra=sticky_cookie("turnout-app", "blue"))
    assert head.startswith(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n")
    assert b"Set-Cookie: turnout-app=blue; Path=/" in head and head.endswith(b"\r\n\r\n")
    head = response_head(200, b"OK", b"", content_length=b"5", chunked=False, keep_alive=True, http11=False)
    assert b"Content-Length: 5\r\n" in head and b"Connection: keep-alive\r\n" in head
    head = response_head(200, b"OK", b"", content_length=b"5", chunked=False, keep_alive=False, http11=True)
    assert b"Connection: close\r\n" in head


def test_chunked_framer_finds_the_end_across_reads():
    body = b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n"
    for split in range(1, len(body)):
        framer = ChunkedFramer()
        assert framer.feed(body[:split]) == split and not framer.done
        assert framer.feed(body[split:] + b"GET /next") == len(body) - split
        assert framer.done and framer.total == 11


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloXX", b"5\nhello\r\n", b"0\r\nbad trailer\r\n",
                                  b"5 5\r\n"])
def test_chunked_framer_refuses_bad_framing(body):
    with pytest.raises(BadRequest):
        ChunkedFramer().feed(body)


# ------------------------------------------------------------- RequestHeads (validated heads, remembered)
def _remembered(heads: RequestHeads, raw: bytes, peer: bytes = b"10.0.0.9", trusted: bool = False):
    key = (raw, head_tag(peer, trusted))
    entry = heads.entries.get(key)
    return entry if entry is not None else heads.miss(key, peer, trusted,
                                                      forwarded_suffix(peer.decode(), trusted))


def _sent(entry) -> bytes:
    _, template, numbered = entry
    return template % next_request_id() if numbered else template


def test_a_remembered_head_gives_what_a_fresh_rewrite_gives_with_a_new_request_id():
    heads = RequestHeads()
    raw = b"GET /a%20b?q=100% HTTP/1.1\r\nHost: a\r\nX-Odd: 50%d %s\r\nConnection: close\r\n\r\n"
    first, second = _remembered(heads, raw), _remembered(heads, raw)
    assert second is first and len(heads.entries) == 1
    one, two = _sent(first), _sent(second)
    fresh = upstream_head(raw)
    strip = [line for line in fresh.split(b"\r\n") if not line.startswith(b"X-Request-Id")]
    assert [line for line in one.split(b"\r\n") if not line.startswith(b"X-Request-Id")] == strip
    assert b"/a%20b?q=100% " in one and b"X-Odd: 50%d %s\r\n" in one and b"Connection" not in one
    ids = [line for head in (one, two) for line in head.split(b"\r\n") if line.startswith(b"X-Request-Id")]
    assert len(set(ids)) == 2


def test_a_head_with_its_own_request_id_is_sent_as_it_was_remembered():
    heads = RequestHeads()
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\n\r\n"
    entry = _remembered(heads, raw)
    assert not entry[2] and _sent(entry).count(b"X-Request-Id") == 1


def test_the_rewrite_is_remembered_per_peer_and_trust():
    heads = RequestHeads()
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n"
    untrusted = _sent(_remembered(heads, raw, b"10.0.0.9"))
    other = _sent(_remembered(heads, raw, b"10.0.0.8"))
    trusted = _sent(_remembered(heads, raw, b"10.0.0.9", trusted=True))
    assert b"X-Forwarded-For: 10.0.0.9\r\n" in untrusted and b"X-Forwarded-For: 10.0.0.8\r\n" in other
    assert b"X-Forwarded-For: 1.1.1.1, 10.0.0.9\r\n" in trusted
    assert len(heads.entries) == 3


def test_refused_heads_are_never_remembered_and_big_heads_not_kept():
    heads = RequestHeads(max_entries=4, max_head=100)
    with pytest.raises(BadRequest):
        _remembered(heads, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert not heads.entries
    _remembered(heads, b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 100 + b"\r\n\r\n")
    assert not heads.entries
    for i in range(10):
        _remembered(heads, b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        assert len(heads.entries) <= 4
