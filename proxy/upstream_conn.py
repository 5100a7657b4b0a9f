"""The upstream side of the hot path: one asyncio.Protocol per TCP connection to an upstream.

A connection carries one exchange at a time for a client connection (`forward.ClientConnection`),
parses the response with httptools, rewrites its head for the client and streams the body with one
client write per upstream read. An answer that arrives whole under a head the parser accepted before
(`_KNOWN_ANSWERS`) is passed on without it. Idle keep-alive connections live in `Upstream.idle` (LIFO); a
connection whose framing is uncertain, or released while its upstream drains, is closed instead. A pooled
connection the upstream closed while idle, under a request that got no byte of an answer, hands the
request back for one replay on a fresh connection (`ClientConnection.upstream_lost`). The client side is
reached through `Client`, a protocol of calls.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from .http import response_head, split_response_head
from .upstream import Upstream

MAX_RESPONSE_HEAD = 64 * 1024
MAX_INTERIM = 8  # 1xx answers relayed per request; more is a flood: 502
_NO_BODY_STATUS = (204, 304)
_UPGRADE_EXTRA = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
# Answer heads llhttp has accepted, that frame a Content-Length body on a reusable HTTP/1.1 connection:
# head bytes (without the final CRLF CRLF) -> (status, body length, the client's head). An answer that
# arrives whole in one read under such a head is passed on without the parser (about 15% of the proxy's
# Python per request); anything else, or any doubt (more bytes, fewer bytes), goes through llhttp.
# A pure function of the head bytes, which an app repeats (Date changes once a second). Bounded.
_KNOWN_ANSWERS: dict[bytes, tuple[int, int, bytes]] = {}
MAX_KNOWN_ANSWERS = 512
MAX_KNOWN_HEAD = 2048


class Client(Protocol):
    """The client side of an exchange (`forward.ClientConnection`), as an upstream connection sees it: what
    it reads about the request, the transport the answer goes to, and one call for each turn the answer
    takes. The upstream side reads these fields and never writes them, but for `sent`."""

    transport: asyncio.Transport  # the client's: the answer is written here
    sent: int  # bytes written to that transport (for the access log): whoever writes there adds to it
    wpaused: bool  # that transport is paused for writing (back-pressure): start the exchange paused
    is_head: bool
    reading_body: bool  # the request body is still arriving
    keep_alive: bool
    http11: bool
    websocket: bool  # the request asked for a websocket upgrade (a 101 is expected)
    resp_extra: bytes  # header lines the proxy adds to the answer (a sticky cookie)

    def response_started(self, status: int) -> None: ...
    def answered_whole(self, conn: UpstreamConnection, status: int, answer: bytes) -> None: ...
    def upstream_complete(self, conn: UpstreamConnection, reusable: bool) -> None: ...
    def upstream_lost(self, replay: bytes | None, first: bool = False) -> None: ...
    def upstream_error(self, reason: str, unsent: bool) -> None: ...
    def internal_error(self, where: str, error: BaseException, unsent: bool) -> None: ...
    def close_after_answer(self) -> None: ...
    def tunnel_started(self) -> None: ...
    def tunnel_closed(self) -> None: ...
    def pause_reading_for_upstream(self) -> None: ...
    def resume_reading_for_upstream(self) -> None: ...


class _StopParsing(Exception):
    """Raised from a parser callback to stop llhttp on a bad answer (`bad` says why)."""


class _HeadAnswered(Exception):
    """Raised from a parser callback to stop llhttp once the head of an answer to HEAD is read."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("bad", "chunked", "client", "closed", "complete", "conn_close", "first", "head_only",
                 "headbuf", "head_pending", "interim", "out", "parser", "read_paused", "request", "reusable",
                 "status", "transport", "tunnel", "until_close", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: Client | None = None
        self.parser = HttpResponseParser(self)
        self.out: list[bytes] = []
        self.closed = False
        self.tunnel = False
        self.read_paused = False
        self.headbuf = b""  # the answer's bytes until its head is complete (parsed here, not per header)
        self.head_pending = False
        self.interim = 0
        self.status = 0
        self.bad = ""
        self.conn_close = False
        self.chunked = False
        self.until_close = False
        self.head_only = False
        self.complete = False
        self.reusable = False
        # What the current exchange wrote at its start, kept for a replay (`connection_lost`); None when
        # its body went with it. `first`: what the connection's first exchange wrote (set by
        # `ClientConnection._connect`), so a close of that exchange is told from an idle close.
        self.request: bytes | None = None
        self.first: bytes | None = None

    # ------------------------------------------------------------------ driven by the client side
    def bind(self, client: Client, data: bytes) -> None:
        """Start an exchange: remember the client and write its request head (and body so far)."""
        self.client = client
        self.status = 0
        self.head_pending = True
        self.interim = 0
        self.chunked = self.until_close = self.head_only = self.complete = False
        self.request = data
        if client.wpaused:
            self.transport.pause_reading()
            self.read_paused = True
        self.transport.write(data)

    def release(self, reusable: bool) -> None:
        """The exchange is over: pool the connection when that is safe, else close it."""
        self.client = None
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        upstream = self.upstream
        if (reusable and not self.closed and not upstream.draining and not self.transport.is_closing()
                and len(upstream.idle) < upstream.idle_limit):
            upstream.idle.append(self)
        else:
            self.transport.close()

    def abort(self) -> None:
        self.client = None
        if not self.closed:
            self.transport.abort()

    def close(self) -> None:  # Upstream.close_idle
        self.client = None
        if not self.closed:
            self.transport.close()

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        client = self.client
        self.client = None
        if client is None:
            try:
                self.upstream.idle.remove(self)
            except ValueError:
                pass
            return
        if self.tunnel:
            client.tunnel_closed()
        elif self.until_close and not self.head_pending:  # a close-delimited body ends here, complete
            if self.chunked:
                client.transport.write(b"0\r\n\r\n")
                client.sent += 5
            client.upstream_complete(self, False)
        elif self.head_pending and not self.headbuf and not self.interim and self.request is not None:
            # Not a byte of an answer. On a connection that had served one before: the upstream closed
            # it while idle, crossing this request (the race with its keep-alive timeout). On its first
            # exchange: the upstream took the request and went away (its app stopped, its node lost).
            # Safe to replay?
            client.upstream_lost(self.request, self.request is self.first)
        else:
            client.upstream_lost(None)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # nobody asked: an idle connection must stay silent
            self.transport.abort()
            return
        if self.tunnel:
            client.transport.write(data)
            client.sent += len(data)
            return
        pending = self.head_pending  # nothing of the final answer has reached the client yet
        if pending:
            if self.headbuf:
                self.headbuf += data
            else:  # a new answer starts with this read: is it, whole, one llhttp has already passed?
                end = data.find(b"\r\n\r\n")
                known = _KNOWN_ANSWERS.get(data[:end]) if end > 0 else None
                if (known is not None and len(data) == end + 4 + known[1] and not client.is_head
                        and not client.reading_body and client.keep_alive and client.http11
                        and not client.resp_extra):
                    # What feeding llhttp would do, without it; the parser stays between two answers.
                    self.head_pending = False
                    self.status = status = known[0]
                    return client.answered_whole(self, status, known[2] + data[end + 4:])
                self.headbuf = data
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            if not self.tunnel:
                return self._fail(client, "upstream-protocol", pending)
            rest = data[exc.args[0]:]
            if rest:
                self.out.append(rest)
        except HttpParserCallbackError as exc:
            # llhttp wraps whatever a callback raised; the callback's own exception is the context.
            stop = exc.__context__
            if not isinstance(stop, _HeadAnswered):
                if isinstance(stop, _StopParsing):
                    return self._fail(client, self.bad or "upstream-protocol", pending)
                return self._internal_error(client, stop or exc, pending)  # Turnout's bug, not the upstream's
            # A HEAD answer: its head is all there is. Reuse the connection only when the head ended
            # exactly at the end of this read (otherwise the framing is uncertain).
            self.complete = True
            self.reusable = (data.find(b"\r\n\r\n") == len(data) - 4 and not self.conn_close
                             and self.parser.get_http_version() == "1.1")
            self.parser = HttpResponseParser(self)
        except HttpParserError as exc:
            text = str(exc)
            framing = "Content-Length" in text or "Transfer-Encoding" in text or "chunk" in text
            return self._fail(client, self.bad or ("upstream-framing" if framing else "upstream-protocol"),
                              pending)
        if self.head_pending and len(self.headbuf) > MAX_RESPONSE_HEAD:
            return self._fail(client, "upstream-protocol", True)
        out = self.out
        if out:
            chunk = out[0] if len(out) == 1 else b"".join(out)
            client.transport.write(chunk)
            client.sent += len(chunk)
            out.clear()
        if self.complete:
            self.complete = False
            client.upstream_complete(self, self.reusable)
        elif self.tunnel:
            client.tunnel_started()

    def _fail(self, client: Client, reason: str, unsent: bool = False) -> None:
        """Bad answer: drop this read's output and the connection. `unsent`: the answer's head was
        still in `out` (not written), so the client can get a clean 502 instead of a cut."""
        self.out.clear()
        self.client = None
        self.transport.abort()
        client.upstream_error(reason, unsent and not self.tunnel)

    def _internal_error(self, client: Client, error: BaseException, unsent: bool) -> None:
        """A parser callback raised something of its own: drop the connection like `_fail`, but as the
        proxy's failure (logged with the original exception, counted, 500), not the upstream's."""
        self.out.clear()
        self.client = None
        self.transport.abort()
        client.internal_error("upstream-parser", error, unsent and not self.tunnel)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading_for_upstream()

    # ------------------------------------------------------------------ httptools callbacks
    def on_headers_complete(self) -> None:
        client = self.client
        status = self.parser.get_status_code()
        buf = self.headbuf
        end = buf.find(b"\r\n\r\n")
        # A second answer to one request, no head, or a head over the limit (arrived in one read).
        if self.complete or end < 0 or client is None or end > MAX_RESPONSE_HEAD:
            self.bad = "upstream-protocol"
            raise _StopParsing
        interim = status < 200 and status != 101
        if interim:
            self.interim += 1
            if self.interim > MAX_INTERIM:
                self.bad = "upstream-protocol"
                raise _StopParsing
        self.headbuf = buf[end + 4:] if interim else b""
        self.head_pending = interim
        split = split_response_head(buf[:end], status)
        reason, block, content_length, te, self.conn_close, bad, common = split
        self.status = status
        if bad:
            self.bad = bad
            raise _StopParsing
        if status < 200:
            if status == 101:
                if not client.websocket:
                    self.bad = "upstream-protocol"
                    raise _StopParsing
                self.tunnel = True
                self.out.append(response_head(101, reason, block, content_length=None, chunked=False,
                                              keep_alive=True, http11=True, extra=_UPGRADE_EXTRA))
                client.response_started(101)
            elif client.http11:  # interim (100 Continue, 103 Early Hints): pass on, keep waiting
                self.out.append(b"HTTP/1.1 %d %s%s\r\n\r\n" % (status, reason, block))
            return
        chunked = False
        if client.reading_body:  # answered before the request body was read: the client connection closes
            client.close_after_answer()
        if client.is_head or status in _NO_BODY_STATUS:
            self.head_only = client.is_head
        elif content_length is None:
            self.until_close = not te
            if client.http11:
                chunked = self.chunked = True
            else:  # HTTP/1.0 client: a close-delimited body
                client.close_after_answer()
        if common is not None and client.keep_alive and client.http11 and not client.resp_extra:
            self.out.append(common)  # the usual answer: its client head was made once, with the split
            if (status not in _NO_BODY_STATUS and not te and not self.conn_close and end <= MAX_KNOWN_HEAD
                    and self.parser.get_http_version() == "1.1"):
                if len(_KNOWN_ANSWERS) >= MAX_KNOWN_ANSWERS:
                    _KNOWN_ANSWERS.clear()
                _KNOWN_ANSWERS[buf[:end]] = (status, int(content_length), common)  # type: ignore[arg-type]
        else:
            self.out.append(response_head(status, reason, block, content_length=content_length,
                                          chunked=chunked, keep_alive=client.keep_alive, http11=client.http11,
                                          extra=client.resp_extra))
        client.response_started(status)
        if self.head_only:
            raise _HeadAnswered

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            self.out += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        status = self.status
        if status < 200:
            if status != 101:
                self.status = 0  # the interim answer is done; the final one follows
            return
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.complete = True
        self.reusable = not self.until_close and not self.conn_close and self.parser.should_keep_alive()
