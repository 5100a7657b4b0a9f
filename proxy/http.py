"""Pure HTTP/1.1 helpers for the hot path: head validation, header rewriting, the proxy's own answers.

Nothing here touches sockets. Request heads are validated on their raw bytes (one regex, C speed) before
anything is parsed or forwarded, because llhttp is lenient in places (obs-fold, bare LF, ...). Headers
the proxy must look at are found with one more regex on the lower-cased head; every other header line is
forwarded as the very bytes the client sent.
"""

from __future__ import annotations

import itertools
import os
import re

# Hop-by-hop headers (RFC 9110 7.6.1), plus the obsolete Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization",
))

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
MAX_METHOD = 32  # longer methods are answered 501 (no registered method comes close)
# A whole request head: request line, header lines (no obs-fold, no bare CR/LF, no controls), CRLF.
REQUEST_HEAD_RE = re.compile(
    rb"(" + _TOKEN + rb"{1,32}) ([\x21-\x7e]+) HTTP/1\.([01])\r\n"  # 32: MAX_METHOD
    rb"(?:" + _TOKEN + rb"+:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
# Header lines the proxy acts on, matched in the lower-cased head: "\r\nname:[ \t]*value".
_SPECIAL_RE = re.compile(
    rb"\r\n(host|content-length|transfer-encoding|connection|keep-alive|proxy-connection|te|trailer"
    rb"|upgrade|proxy-authenticate|proxy-authorization|cookie|x-turnout-pool|x-request-id|forwarded"
    rb"|x[-_]forwarded[-_][a-z0-9_-]*|x[-_]real[-_]ip):[ \t]*([^\r]*)"
)
# Only on the error path: why a head failed REQUEST_HEAD_RE (a sound request line with another version
# is 505, an overlong method 501, anything else 400).
_REQUEST_LINE_RE = re.compile(rb"(" + _TOKEN + rb"+) [\x21-\x7e]+ HTTP/([0-9])\.([0-9])\r\n")
# Host (and an absolute-form authority): uri-host [":" port], no userinfo, no spaces (RFC 9110 7.2).
_HOST_RE = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
_ABSOLUTE_RE = re.compile(rb"https?://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
_HOST_LINE_RE = re.compile(rb"\r\nhost:[^\r]*", re.IGNORECASE)
_TOKEN_RE = re.compile(_TOKEN + rb"+")
# Connection options that would strip what frames or routes the request upstream (a smuggling trick:
# "Connection: Content-Length" would make the proxy forward a body the upstream reads as a request).
_UNNOMINABLE = frozenset((b"host", b"content-length"))
_COOKIE_RE = re.compile(rb"(?:^|;)[ \t]*(turnout-[^=; \t]*)=[ \t]*([^; \t]*)")
# chunk-size [chunk-ext] (RFC 9112 7.1.1): every ";" is followed by a name, an "=" by a token or a
# quoted-string ("5;" is refused: a lenient reader elsewhere may take the line differently).
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[ \t]*" + _TOKEN + rb"+(?:[ \t]*=[ \t]*(?:"
                            + _TOKEN + rb"+|" + _QUOTED + rb"))?)*")
_TRAILER_RE = re.compile(_TOKEN + rb"+:[\t\x20-\x7e\x80-\xff]*")

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
# Request header lines never forwarded: hop-by-hop, the X-Forwarded-* the proxy sets itself, and the
# pool override (meant for the proxy; with header-secret it carries the secret).
# Also every name with an underscore, as nginx does (`underscores_in_headers off`): CGI/WSGI-style servers
# read "_" as "-", so `Transfer_Encoding` beside a Content-Length would frame the body differently there.
_DROP_NAMES = (rb"connection|keep-alive|proxy-connection|te|trailer|upgrade|proxy-authenticate"
               rb"|proxy-authorization|x-forwarded-for|x-forwarded-proto|x-forwarded-host|x-turnout-pool"
               rb"|[^:\r]*_[^:\r]*")
_UNDERSCORE_NAME_RE = re.compile(rb"\r\n[^:\r]*_")  # in a validated head: a header name with "_"
_DROP_TRUSTED_RE = re.compile(rb"\r\n(?:" + _DROP_NAMES + rb"):[^\r]*", re.IGNORECASE)
# From untrusted peers also every other X-Forwarded-* and Forwarded.
# (X-Real-IP and underscore spellings too: CGI/WSGI servers read X_Forwarded_For as X-Forwarded-For.)
_DROP_UNTRUSTED_RE = re.compile(rb"\r\n(?:" + _DROP_NAMES + rb"|forwarded|x[-_]forwarded[-_][a-z0-9_-]*"
                                rb"|x[-_]real[-_]ip):[^\r]*", re.IGNORECASE)
_DROPPED = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade",
                      b"proxy-authenticate", b"proxy-authorization", b"forwarded"))
# Case-sensitive values, read from the original bytes on the (rarer) paths that need them.
_COOKIE_LINE_RE = re.compile(rb"\r\ncookie:[ \t]*([^\r]*)", re.IGNORECASE)
_POOL_LINE_RE = re.compile(rb"\r\nx-turnout-pool:[ \t]*([^\r]*)", re.IGNORECASE)
_COOKIE_VALUE_RE = re.compile(rb"(\r\ncookie:[ \t]*)([^\r]*)", re.IGNORECASE)
POOL_COOKIE = "turnout-pool"  # the override's cookie
_XF_LINE_RE = re.compile(rb"\r\nx-forwarded-(for|proto|host):[ \t]*([^\r]*)", re.IGNORECASE)

VIA = b"Via: 1.1 turnout\r\n"
next_request_id = itertools.count(1).__next__
_REQUEST_ID_PREFIX = os.urandom(6).hex().encode()


class BadRequest(Exception):
    """A request the proxy refuses before forwarding anything: 400, 413, 414, 431, 501 or 505."""

    def __init__(self, status: int, detail: str, reason: str = "bad-request") -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason


class RequestHead:
    """What the proxy needs to know about one validated request head.

    A plain class with class-level defaults: the hot path sets only what a request actually has.
    Read-only once parsed: `RequestHeads` hands the same object to every request with the same head."""

    host = ""
    path = "/"
    content_length = -1  # -1: none
    chunked = False
    websocket = False
    forced: str | None = None  # X-Turnout-Pool header or turnout-pool cookie
    cookies: dict[str, str] | None = None  # turnout-* cookies, parsed only when present
    request_id = False  # the client sent X-Request-Id
    drop = False  # some header lines must not be forwarded (hop-by-hop, X-Forwarded-*)
    forwarded = False  # the client sent X-Forwarded-* (kept, extended, from trusted peers only)
    named: list[bytes] | None = None  # extra hop-by-hop headers named in Connection
    host_raw = b""
    origin: bytes | None = None  # absolute-form target: its origin-form (sent upstream, with Host rewritten)
    plain = False  # what the fast lane can carry (see `is_plain`)
    raw = b""  # the head's bytes as the client sent them (what routing rules match: proxy/rules.py)

    def __init__(self, method: bytes, target: bytes, http11: bool) -> None:
        self.method = method
        self.target = target
        self.http11 = http11
        self.keep_alive = http11


_HOSTS: dict[bytes, str] = {}  # raw Host value -> routing key (lower-case, port stripped)


def _routing_host(raw: bytes) -> str:
    host = _HOSTS.get(raw)
    if host is None:
        if _HOST_RE.fullmatch(raw) is None:  # only valid hosts are cached: checked once per distinct value
            raise BadRequest(400, "invalid Host")
        if raw[:1] == b"[":  # [v6]:port
            name = raw[: raw.find(b"]") + 1]
        else:
            colon = raw.find(b":")
            name = raw if colon < 0 else raw[:colon]
        host = name.lower().decode("latin-1")
        if len(_HOSTS) < 4096:
            _HOSTS[raw] = host
    return host


def parse_request_head(head: bytes) -> RequestHead:
    """Validate a raw head (ending in CRLF CRLF) and pick out what routing and framing need.

    Raises BadRequest for anything a smuggler could use: CL+TE, several CL, TE other than chunked,
    obs-fold, bare CR/LF, controls, missing or repeated Host, odd versions, malformed request lines."""
    m = REQUEST_HEAD_RE.fullmatch(head)
    if m is None:
        raise _malformed(head)
    method, target, minor = m.group(1, 2, 3)
    http11 = minor == b"1"
    req = RequestHead(method, target, http11)
    req.raw = head
    if method == b"CONNECT":
        raise BadRequest(400, "CONNECT is not proxied")
    hosts = 0
    lengths = 0
    tes = 0
    te_unsupported = False
    connection_tokens: list[bytes] | None = None
    upgrade = b""
    for name, value in _SPECIAL_RE.findall(head.lower(), 0, len(head) - 4):
        if name == b"host":
            hosts += 1
            req.host_raw = value.rstrip(b" \t")
        elif name == b"content-length":
            lengths += 1
            value = value.rstrip(b" \t")
            if not value.isdigit() or len(value) > 18 or (value[0] == 48 and len(value) > 1):  # 48: "0"
                raise BadRequest(400, "bad Content-Length")
            req.content_length = int(value)
        elif name == b"transfer-encoding":
            tes += 1
            value = value.rstrip(b" \t")
            if value != b"chunked":
                te_unsupported = _unsupported_coding(value)
            req.chunked = True
        elif name == b"cookie":
            if b"turnout" in value and req.cookies is None:
                cookies: dict[str, str] = {}
                for line in _COOKIE_LINE_RE.findall(head):
                    for k, v in _COOKIE_RE.findall(line):
                        cookies[k.decode("latin-1")] = v.decode("latin-1")
                req.cookies = cookies
        elif name == b"x-turnout-pool":
            req.drop = True  # never forwarded
            if req.forced is None:
                raw = _POOL_LINE_RE.findall(head)
                req.forced = raw[0].rstrip(b" \t").decode("latin-1") or None if raw else None
        elif name == b"x-request-id":
            req.request_id = True
        else:
            req.drop = True
            if name == b"connection":
                tokens = [t.strip() for t in value.split(b",")]
                connection_tokens = tokens if connection_tokens is None else connection_tokens + tokens
            elif name == b"upgrade":
                upgrade = value.rstrip(b" \t")
            elif name not in _DROPPED:
                req.forwarded = True
    if b"_" in head and _UNDERSCORE_NAME_RE.search(head) is not None:
        req.drop = True
    if hosts != 1:
        if hosts > 1:
            raise BadRequest(400, "several Host headers")
        if http11:
            raise BadRequest(400, "missing Host")
    elif not req.host_raw:
        raise BadRequest(400, "empty Host")
    if lengths > 1:
        raise BadRequest(400, "several Content-Length headers")
    if tes and (tes > 1 or lengths or not http11):
        raise BadRequest(400, "ambiguous message framing")
    if te_unsupported:  # chunked last, after codings the proxy does not implement (RFC 9112 6.1)
        raise BadRequest(501, "transfer coding not implemented", "not-implemented")
    if connection_tokens is not None:
        named = None
        for token in connection_tokens:
            if token == b"close":
                req.keep_alive = False
            elif token == b"keep-alive":
                req.keep_alive = req.keep_alive or not http11
            elif token and token != b"upgrade" and token not in HOP_BY_HOP:
                if token in _UNNOMINABLE:
                    raise BadRequest(400, f"Connection: {token.decode('latin-1')} is refused")
                if token == b"x-request-id":  # stripped: the proxy makes its own
                    req.request_id = False
                named = [token] if named is None else [*named, token]
        req.named = named
    if upgrade:
        tokens = connection_tokens or ()
        if upgrade.lower() != b"websocket" or b"upgrade" not in tokens:
            raise BadRequest(400, f"Upgrade {upgrade.decode('latin-1')!r} is not supported")
        if method != b"GET" or not http11:
            raise BadRequest(400, "websocket upgrade must be an HTTP/1.1 GET")
        req.websocket = True
    if target[0] == 47:  # b"/": origin-form, the common case
        q = target.find(b"?")
        req.path = (target if q < 0 else target[:q]).decode("latin-1")
        if req.host_raw:
            req.host = _routing_host(req.host_raw)
    elif (a := _ABSOLUTE_RE.fullmatch(target)) is not None:
        # absolute-form: its authority wins over Host (RFC 9112 3.2.2); upstream gets origin-form and a
        # Host rewritten to the authority, so it never sees a disagreeing pair.
        authority, rest = a.group(1, 2)
        if not authority:
            raise BadRequest(400, "absolute-form target without a host")
        req.host = _routing_host(authority)
        if rest[:1] != b"/":
            rest = b"/" + rest
        req.origin = rest
        req.host_raw = authority
        req.path = rest.partition(b"?")[0].decode("latin-1")
    elif target == b"*" and method == b"OPTIONS":
        req.path = "*"
        if req.host_raw:
            req.host = _routing_host(req.host_raw)
    else:
        raise BadRequest(400, "bad request target")
    req.plain = is_plain(req)
    return req


def is_plain(req: RequestHead) -> bool:
    """A keep-alive HTTP/1.1 request with no body, no upgrade, no pool override and no Turnout cookie,
    not HEAD, with a path: what `ClientConnection._fast` may carry (anything else takes the full path)."""
    return (req.content_length <= 0 and not req.chunked and not req.websocket and req.forced is None
            and req.cookies is None and req.keep_alive and req.http11 and req.method != b"HEAD"
            and req.path[:1] == "/")


def _malformed(head: bytes) -> BadRequest:
    line = _REQUEST_LINE_RE.match(head)
    if line is not None:
        if len(line.group(1)) > MAX_METHOD:
            return BadRequest(501, "method too long to be one the proxy knows", "not-implemented")
        if line.group(2, 3) not in ((b"1", b"1"), (b"1", b"0")):
            return BadRequest(505, "HTTP version not supported", "version-not-supported")
    return BadRequest(400, "malformed request head")


def _unsupported_coding(value: bytes) -> bool:
    """A Transfer-Encoding other than plain chunked: 400 unless chunked is last (then 501: not done)."""
    codings = [c.strip(b" \t") for c in value.split(b",")]
    if codings[-1] != b"chunked" or any(c == b"chunked" or _TOKEN_RE.fullmatch(c) is None
                                         for c in codings[:-1]):
        raise BadRequest(400, "Transfer-Encoding without chunked as its last coding")
    return True


def forced_and_sticky(req: RequestHead, cookie_name: str) -> tuple[str | None, str | None]:
    forced = req.forced
    cookies = req.cookies
    if cookies is None:
        return forced, None
    if forced is None:
        forced = cookies.get(POOL_COOKIE) or None
    return forced, cookies.get(cookie_name) or None


def forwarded_suffix(peer: str, trusted: bool, proto: bytes = b"http", port: int = 0) -> bytes:
    """The constant part of what the proxy adds to every request of one client connection: for an
    untrusted peer its address, the listener's scheme (`proto`) and port (0: none said)."""
    if trusted:
        return VIA
    port_line = b"X-Forwarded-Port: %d\r\n" % port if port else b""
    return b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n%s%s" % (peer.encode(), proto, port_line, VIA)


def build_upstream_head(head: bytes, req: RequestHead, peer: bytes, trusted: bool, suffix: bytes,
                        proto: bytes = b"http") -> bytes:
    """The request head sent upstream: the client's bytes minus hop-by-hop lines, plus ours."""
    template, numbered = upstream_template(head, req, peer, trusted, suffix, proto)
    return template % next_request_id() if numbered else template


def upstream_template(head: bytes, req: RequestHead, peer: bytes, trusted: bool,
                      suffix: bytes, proto: bytes = b"http") -> tuple[bytes, bool]:
    """The upstream head, and whether it is a template that still needs `% next_request_id()` for the
    X-Request-Id the proxy adds (the client sent none). A pure function of its arguments, so it can be
    remembered per head (`RequestHeads`); the id is the only part that differs per request. `proto`: the
    listener's scheme, what a trusted peer's request says when it brought no X-Forwarded-Proto."""
    base = _upstream_base(head, req, peer, trusted, suffix, proto)
    if req.request_id:
        return base + b"\r\n", False
    return base.replace(b"%", b"%%") + b"X-Request-Id: " + _REQUEST_ID_PREFIX + b"-%x\r\n\r\n", True


def _upstream_base(head: bytes, req: RequestHead, peer: bytes, trusted: bool, suffix: bytes,
                   proto: bytes) -> bytes:
    """Everything of the upstream head but the proxy's X-Request-Id and the final CRLF."""
    xf = {}
    if trusted and req.forwarded:
        xf = {k.lower(): v.rstrip(b" \t") for k, v in _XF_LINE_RE.findall(head)}
    if req.drop:
        head = (_DROP_TRUSTED_RE if trusted else _DROP_UNTRUSTED_RE).sub(b"", head)
        if req.named:  # headers named in Connection are hop-by-hop too (rare)
            names = b"|".join(re.escape(t) for t in req.named)
            head = re.compile(rb"\r\n(?:" + names + rb"):[^\r]*", re.IGNORECASE).sub(b"", head)
    if req.cookies is not None and POOL_COOKIE in req.cookies:
        head = _COOKIE_VALUE_RE.sub(_without_pool_cookie, head)
    if req.origin is not None:  # absolute-form: origin-form target, Host from the authority
        rest = _HOST_LINE_RE.sub(b"", head[head.find(b"\r\n"):])
        head = b"%s %s HTTP/1.1\r\nHost: %s%s" % (req.method, req.origin, req.host_raw, rest)
    elif not req.http11:  # speak HTTP/1.1 upstream, which needs a Host (empty when none came: RFC 9112 3.2)
        line_end = head.find(b"\r\n")
        head = head[: line_end - 8] + b"HTTP/1.1" + (head[line_end:] if req.host_raw
                                                     else b"\r\nHost: " + head[line_end:])
    parts = [head[:-2]]
    if trusted:
        xff = xf[b"for"] + b", " + peer if b"for" in xf else peer
        parts.append(b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\n" % (xff, xf.get(b"proto", proto)))
        host = xf.get(b"host", req.host_raw)
        if host:
            parts.append(b"X-Forwarded-Host: %s\r\n" % host)
    elif req.host_raw:
        parts.append(b"X-Forwarded-Host: %s\r\n" % req.host_raw)
    parts.append(suffix)
    if req.websocket:
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    return b"".join(parts)


def _without_pool_cookie(line: re.Match[bytes]) -> bytes:
    """A Cookie line without the override's cookie (the whole line goes when nothing else is left)."""
    kept = b";".join(pair for pair in line.group(2).split(b";")
                     if pair.partition(b"=")[0].strip(b" \t") != POOL_COOKIE.encode()).strip(b" \t")
    return line.group(1) + kept if kept else b""


CachedHead = tuple[RequestHead, bytes, bool]  # (parsed head, upstream head or template, numbered)


class RequestHeads:
    """Validated request heads and their upstream rewrite, remembered: a client's heads repeat (the same
    URL and headers over a keep-alive connection, health checks, API clients), and validating and
    rewriting one costs about a third of the proxy's Python per request. Both are pure functions of
    (head bytes, peer, trusted), so a hit is exactly what a miss computes; a head that fails validation
    is never stored. Bounded in entries and in head size; `RequestHead`s handed out are shared and
    read-only. One instance per proxy; the key's tag names the peer (`head_tag`)."""

    __slots__ = ("entries", "max_entries", "max_head")

    def __init__(self, max_entries: int = 1024, max_head: int = 2048) -> None:
        self.entries: dict[tuple[bytes, bytes], CachedHead] = {}
        self.max_entries = max_entries
        self.max_head = max_head

    def miss(self, key: tuple[bytes, bytes], peer: bytes, trusted: bool, suffix: bytes,
             proto: bytes = b"http") -> CachedHead:
        """Validate and rewrite `key[0]` (raises BadRequest), remembering the result."""
        head = key[0]
        req = parse_request_head(head)
        template, numbered = upstream_template(head, req, peer, trusted, suffix, proto)
        entry = (req, template, numbered)
        if len(head) <= self.max_head:
            if len(self.entries) >= self.max_entries:
                self.entries.clear()
            self.entries[key] = entry
        return entry


def head_tag(peer: bytes, trusted: bool, listener: bytes = b"") -> bytes:
    """What, besides the head bytes, the upstream rewrite depends on: the client address, and the listener
    (`listener`: its scheme and port, which X-Forwarded-Proto/-Port say)."""
    return (b"t " if trusted else b"u ") + listener + b" " + peer


# ---------------------------------------------------------------------------------------- responses
_RESPONSE_SPECIAL_NAMES = (rb"content-length|transfer-encoding|connection|keep-alive|proxy-connection|te"
                           rb"|trailer|upgrade|proxy-authenticate|proxy-authorization")
_RESPONSE_SPECIAL_RE = re.compile(rb"\r\n(" + _RESPONSE_SPECIAL_NAMES + rb"):[ \t]*([^\r]*)")
_RESPONSE_DROP_RE = re.compile(rb"\r\n(?:" + _RESPONSE_SPECIAL_NAMES + rb"):[^\r]*", re.IGNORECASE)


SplitHead = tuple[bytes, bytes, bytes | None, bool, bool, str, bytes | None]
_SPLIT_CACHE: dict[bytes, SplitHead] = {}
_SPLIT_CACHE_SIZE = 512


def split_response_head(head: bytes, status: int) -> SplitHead:
    """`_split_response_head`, remembered: an app's answer heads repeat (only Date changes, once a
    second), and picking one apart costs ~2 µs of the ~30 µs a request costs. Bounded; a pure function
    of the bytes (`status` is llhttp's reading of those same bytes), so a hit is always right."""
    found = _SPLIT_CACHE.get(head)
    if found is None:
        found = _split_response_head(head, status)
        if len(_SPLIT_CACHE) >= _SPLIT_CACHE_SIZE:
            _SPLIT_CACHE.clear()
        _SPLIT_CACHE[head] = found
    return found


def _split_response_head(head: bytes, status: int) -> SplitHead:
    """Pick apart an upstream's answer head (status line + header lines, without the final CRLF CRLF).

    Returns (reason, kept header block, Content-Length, chunked, Connection: close, framing error, and the
    client head for the common case or None: what `response_head` makes for a keep-alive HTTP/1.1 client
    with no extra lines, when the answer has a Content-Length and no framing error).
    The kept block is the upstream's own bytes minus hop-by-hop and framing lines, each line
    *preceded* by CRLF. llhttp has already accepted this head, so its line structure is sound."""
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = len(head)
    reason = head[13:line_end]  # after "HTTP/1.1 200 "
    block = head[line_end:]
    found = _RESPONSE_SPECIAL_RE.findall(block.lower())
    if not found:
        return reason, block, None, False, False, "", None
    block = _RESPONSE_DROP_RE.sub(b"", block)
    content_length: bytes | None = None
    te = False
    close = False
    bad = ""
    tokens: list[bytes] | None = None
    for name, value in found:
        value = value.rstrip(b" \t")
        if name == b"content-length":
            if content_length is not None and value != content_length:
                bad = "upstream-framing"
            content_length = value
        elif name == b"connection":
            for token in value.split(b","):
                token = token.strip()
                if token == b"close":
                    close = True
                elif token and token != b"keep-alive" and token not in HOP_BY_HOP:
                    tokens = [token] if tokens is None else [*tokens, token]
        elif name == b"transfer-encoding":
            if te or value != b"chunked":
                bad = "upstream-framing"
            te = True
    if te and content_length is not None:
        bad = "upstream-framing"
    if tokens:  # headers named in Connection are hop-by-hop too (rare)
        named = re.compile(rb"\r\n(?:" + b"|".join(re.escape(t) for t in tokens) + rb"):[^\r]*",
                           re.IGNORECASE)
        block = named.sub(b"", block)
    common = None
    if content_length is not None and not bad:
        common = response_head(status, reason, block, content_length=content_length, chunked=False,
                               keep_alive=True, http11=True)
    return reason, block, content_length, te, close, bad, common


def response_head(status: int, reason: bytes, block: bytes, *, content_length: bytes | None,
                  chunked: bool, keep_alive: bool, http11: bool, extra: bytes = b"") -> bytes:
    """The client's response head; `block` holds the kept upstream header lines, each preceded by CRLF."""
    if keep_alive and http11 and content_length is not None:  # the common case, in one format
        return b"HTTP/1.1 %d %s%s\r\nContent-Length: %s\r\n%sVia: 1.1 turnout\r\n\r\n" % (
            status, reason, block, content_length, extra)
    parts = [b"HTTP/1.1 %d %s%s\r\n" % (status, reason, block)]
    if content_length is not None:
        parts.append(b"Content-Length: %s\r\n" % content_length)
    elif chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(extra)
    parts.append(VIA + b"\r\n")
    return b"".join(parts)


_SET_COOKIES: dict[tuple[str, str, bytes], bytes] = {}


def sticky_cookie(cookie_name: str, pool: str, scheme: bytes = b"http", extra: bytes = b"") -> bytes:
    """The Set-Cookie line of a sticky pool (`Secure` on an HTTPS listener, `scheme`), followed by the
    listener's own answer lines (`extra`: Strict-Transport-Security), which it replaces for the answer."""
    key = (cookie_name, pool, scheme + extra)
    line = _SET_COOKIES.get(key)
    if line is None:
        secure = "; Secure" if scheme == b"https" else ""
        line = _SET_COOKIES[key] = (
            f"Set-Cookie: {cookie_name}={pool}; Path=/; HttpOnly; SameSite=Lax{secure}\r\n".encode() + extra
        )
    return line


REASONS = {
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}
_ERRORS: dict[tuple[int, str, bool, int, bool], bytes] = {}

MAINTENANCE_BODY = (
    b"<!doctype html><html><head><title>Down for maintenance</title></head>"
    b"<body><h1>Down for maintenance</h1><p>This service is stopped for maintenance. "
    b"Please try again later.</p></body></html>\n"
)


def error_response(status: int, reason: str, close: bool = True, retry_after: int = 0,
                   head_only: bool = False) -> bytes:
    """A proxy-made answer, marked `X-Turnout-Error: <reason>` (pre-encoded, cached)."""
    key = (status, reason, close, retry_after, head_only)
    cached = _ERRORS.get(key)
    if cached is not None:
        return cached
    phrase = REASONS.get(status, b"Error")
    if reason == "maintenance":
        body, ctype = MAINTENANCE_BODY, b"text/html; charset=utf-8"
    else:
        body, ctype = b"%d %s (%s)\n" % (status, phrase, reason.encode()), b"text/plain; charset=utf-8"
    head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            b"Content-Type: %s\r\nContent-Length: %d\r\n" % (ctype, len(body)),
            b"X-Turnout-Error: %s\r\nCache-Control: no-store\r\n" % reason.encode()]
    if retry_after:
        head.append(b"Retry-After: %d\r\n" % retry_after)
    if close:
        head.append(b"Connection: close\r\n")
    head.append(VIA + b"\r\n")
    data = b"".join(head) + (b"" if head_only else body)
    _ERRORS[key] = data
    return data


# ---------------------------------------------------------------------------------------- chunked
class ChunkedFramer:
    """Finds where a chunked request body ends, validating it; the bytes are forwarded as they are.

    `feed(data)` returns how many bytes of `data` belong to the body (the rest is the next request),
    and sets `done` once the last chunk and trailers are through. Raises BadRequest on bad framing."""

    __slots__ = ("done", "line", "remaining", "size", "state", "total")

    SIZE, DATA, DATA_CRLF, TRAILER = range(4)

    def __init__(self) -> None:
        self.state = self.SIZE
        self.remaining = 0
        self.line = b""
        self.done = False
        self.total = 0  # body bytes (decoded) seen so far

    def feed(self, data: bytes) -> int:
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            state = self.state
            if state == self.DATA:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = self.DATA_CRLF
                    self.line = b""
            elif state == self.DATA_CRLF:
                need = 2 - len(self.line)
                piece = data[pos:pos + need]
                pos += len(piece)
                self.line += piece
                if len(self.line) == 2:
                    if self.line != b"\r\n":
                        raise BadRequest(400, "bad chunk terminator")
                    self.state = self.SIZE
                    self.line = b""
            else:
                end = data.find(b"\n", pos)
                if end < 0:
                    self.line += data[pos:]
                    pos = n
                    if len(self.line) > 4096:
                        raise BadRequest(400, "chunk line too long")
                    break
                line = self.line + data[pos:end + 1]
                pos = end + 1
                self.line = b""
                if len(line) > 4096:  # a whole line in one read (chunk-extension abuse)
                    raise BadRequest(400, "chunk line too long")
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    raise BadRequest(400, "bare LF or CR in chunked body")
                line = line[:-2]
                if state == self.SIZE:
                    m = _CHUNK_SIZE_RE.fullmatch(line)
                    if m is None:
                        raise BadRequest(400, "bad chunk size line")
                    size = int(m.group(1), 16)
                    self.total += size
                    if size == 0:
                        self.state = self.TRAILER
                    else:
                        self.remaining = size
                        self.state = self.DATA
                elif not line:  # the empty line after the last chunk (and trailers)
                    self.done = True
                elif _TRAILER_RE.fullmatch(line) is None:
                    raise BadRequest(400, "bad trailer line")
        return pos
