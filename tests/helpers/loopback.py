"""Loopback test servers that end every connection they accepted when they close.

Python 3.11's `Server.close()` stops listening but leaves accepted connections open, and a connection
accepted just before it leaked (see proxy/accepting.py); a test server that tracked its connections in
its streams handler also missed those whose handler task never ran before the test's loop closed. Either
way the transport stayed open until garbage collection warned "unclosed transport" in whichever later
test it happened to run (a ResourceWarning: an error here).

`start_server` is `asyncio.start_server` with that closed: connections are tracked from `connection_made`,
and `wait_closed()` stops accepting (letting the accepts under way finish), aborts every connection, and
returns once all are gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.accepting import let_accepts_finish, pause_accepting

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _Accepted:
    """The transports a server accepted and has not lost yet."""

    def __init__(self) -> None:
        self.transports: set[asyncio.BaseTransport] = set()
        self.closing = False
        self.all_lost = asyncio.Event()
        self.all_lost.set()

    def made(self, transport: asyncio.BaseTransport) -> None:
        self.transports.add(transport)
        self.all_lost.clear()
        if self.closing:  # accepted just before close(): end it at once
            transport.abort()  # type: ignore[attr-defined]

    def lost(self, transport: asyncio.BaseTransport) -> None:
        self.transports.discard(transport)
        if not self.transports:
            self.all_lost.set()


class _TrackedStreamProtocol(asyncio.StreamReaderProtocol):
    def __init__(self, reader: asyncio.StreamReader, handler: Handler, accepted: _Accepted) -> None:
        super().__init__(reader, handler)
        self._accepted = accepted
        self._tracked: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tracked = transport
        super().connection_made(transport)
        self._accepted.made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._tracked is not None:
            self._accepted.lost(self._tracked)


class LoopbackServer:
    """What `start_server` returns: the asyncio server's `sockets`, `close()` and `wait_closed()`, the
    latter ending every accepted connection."""

    def __init__(self, server: asyncio.Server, accepted: _Accepted) -> None:
        self._server = server
        self._accepted = accepted
        self._paused = False

    @property
    def sockets(self) -> tuple[Any, ...]:
        return self._server.sockets

    def close(self) -> None:
        """Accept no more connections; `wait_closed()` closes the server and ends its connections."""
        if not self._accepted.closing:
            self._accepted.closing = True
            self._paused = pause_accepting(self._server)

    async def wait_closed(self) -> None:
        self.close()
        if self._paused:
            await let_accepts_finish()  # while the server is still open (proxy/accepting.py)
        self._server.close()
        for transport in list(self._accepted.transports):
            transport.abort()  # type: ignore[attr-defined]
        await asyncio.wait_for(self._accepted.all_lost.wait(), 10)


async def start_server(handler: Handler, host: str = "127.0.0.1", port: int = 0,
                       limit: int = 2**16, **kwargs: Any) -> LoopbackServer:
    """`asyncio.start_server(handler, host, port)`, tracking every connection from `connection_made`."""
    loop = asyncio.get_running_loop()
    accepted = _Accepted()

    def protocol() -> _TrackedStreamProtocol:
        return _TrackedStreamProtocol(asyncio.StreamReader(limit=limit, loop=loop), handler, accepted)

    server = await loop.create_server(protocol, host, port, **kwargs)
    return LoopbackServer(server, accepted)
