"""What the plain listener does for the HTTPS front door: answer ACME's HTTP-01 challenges, and send
clients of hosts that have a certificate to https:// (308, `redirect_http`).

The plain listener of a proxy with `[proxy.tls]` uses `FrontDoorConnection`, a `ClientConnection` whose
routing first asks the `FrontDoor`; without `[proxy.tls]` the plain listener keeps `ClientConnection`
itself, so its fast lane costs what it did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..forward import CachedHead, ClientConnection, now
from ..http import VIA, RequestHead
from ..table import RoutingTable

if TYPE_CHECKING:
    from ..service import Service
    from .store import CertStore

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
MAX_TOKEN = 256


class Challenges:
    """HTTP-01 tokens being validated now: token -> key authorization (set and cleared by the ACME
    client, read by the plain listener)."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def answer(self, path: str) -> bytes | None:
        token = path[len(CHALLENGE_PREFIX):]
        if len(token) > MAX_TOKEN:
            return None
        value = self.tokens.get(token)
        return None if value is None else value.encode()


class FrontDoor:
    def __init__(self, store: CertStore, https_port: Callable[[], int], redirect: bool,
                 challenges: Challenges | None) -> None:
        self.store = store
        self.https_port = https_port  # the HTTPS listener's port once bound
        self.redirect = redirect
        self.challenges = challenges
        self.redirected = 0
        self.challenges_answered = 0

    def takes(self, req: RequestHead) -> bool:
        """Whether this request is answered here rather than routed (cheap: checked on every request)."""
        if self.challenges is not None and req.path.startswith(CHALLENGE_PREFIX):
            return True
        return self.redirect and self.store.map.find(req.host) is not None

    def answer(self, req: RequestHead) -> tuple[int, bytes, bytes] | None:
        """(status, header lines, body) for a request answered here, or None: route it as usual."""
        if self.challenges is not None and req.path.startswith(CHALLENGE_PREFIX):
            value = self.challenges.answer(req.path)
            if value is not None:
                self.challenges_answered += 1
                return 200, b"Content-Type: application/octet-stream\r\n", value
            # Not one of ours: the app may run its own ACME client; route it (never redirected).
            return None
        if self.redirect and self.store.map.find(req.host) is not None:
            port = self.https_port()
            authority = req.host.encode() if port == 443 else b"%s:%d" % (req.host.encode(), port)
            target = req.origin if req.origin is not None else req.target
            self.redirected += 1
            return 308, b"Location: https://%s%s\r\n" % (authority, target), b""
        return None


_PHRASES = {200: b"OK", 308: b"Permanent Redirect"}


class FrontDoorConnection(ClientConnection):
    """The plain listener's connection when the proxy also speaks HTTPS."""

    __slots__ = ()

    def _fast(self, head: bytes, cached: CachedHead) -> bool:
        if self.server.front_door.takes(cached[0]):  # type: ignore[attr-defined]
            return False  # the full path asks the front door (`_route`)
        return super()._fast(head, cached)

    def _route(self, table: RoutingTable) -> Service | None:
        req = self.req
        assert req is not None
        found = self.server.front_door.answer(req)  # type: ignore[attr-defined]
        if found is None:
            return super()._route(table)
        self._answer_here(*found)
        return None

    def _answer_here(self, status: int, lines: bytes, body: bytes) -> None:
        """Answer the current request from the proxy itself (like `_fail`, without an error mark)."""
        self._dispatch_needed = False
        if self.reading_body:  # the body is not wanted: the connection cannot go on after it
            self.keep_alive = False
            self.reading_body = False
            self.chunker = None
        self.status = status
        self.router.metrics.unrouted[status // 100] += 1
        self.t_end = now()
        self.busy = False
        if not self.closed:
            head = b"HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\nCache-Control: no-store\r\n%s%s\r\n" % (
                status, _PHRASES[status], lines, len(body),
                b"" if self.keep_alive else b"Connection: close\r\n", VIA)
            answer = head if self.is_head else head + body
            self.transport.write(answer)
            self.sent += len(answer)  # for the access log
        self._next()
