"""The proxy's side of a hand-over to a new process (`turnout serve --takeover`).

Two jobs, no policy:
- pass open file descriptors (the listening sockets, the state dir's lock) over a unix socket with
  SCM_RIGHTS, in one framed message (`send_fds` / `recv_fds`), as HAProxy's `-x` fetches its listeners;
- retire a listener whose socket the new process now accepts on (`retire`): stop accepting here (the
  socket stays open in the other process, so the kernel's queue keeps every new connection), let each
  exchange in flight finish, and close each keep-alive connection only between two requests: the next
  answer on it says `Connection: close`; one that stays idle is closed only at the end (drain_timeout),
  never while its next request waits unread in the socket. The connections are retired spread over a
  few seconds, so their clients do not all reconnect at once.

Nothing here runs on the request path: the connections are marked from the retire loop's sweep.
"""

from __future__ import annotations

import array
import asyncio
import json
import os
import socket
import struct
from typing import Any

import structlog

from .forward import ClientConnection, now
from .server import ProxyServer

log = structlog.get_logger("turnout.proxy.handover")

MAGIC = b"TOFD"  # "Turnout file descriptors": the frame that carries them
_HEAD = struct.Struct("!4sI")  # magic, length of the JSON that follows
MAX_FDS = 16  # far above what a hand-over passes (plain, https, lock); SCM_MAX_FD is 253
MAX_FRAME = 1 << 20
CLOSE_SPREAD = 2.0  # seconds over which the connections are retired, one after another
SWEEP = 0.02  # seconds between two sweeps of a retiring listener


class HandoverProtocolError(ConnectionError):
    """The other side's frame was not one (wrong magic, too long, cut); `data`: what was read."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


def send_fds(fd: int, payload: dict[str, Any], fds: list[int]) -> None:
    """Write one frame (`payload` as JSON) carrying `fds` on the connected unix socket `fd`, before
    anything else is written on it. Works on a dup, so the caller's socket object (an event loop's
    transport) is left as it was; a non-blocking socket with a full buffer raises BlockingIOError."""
    body = json.dumps(payload).encode()
    if len(fds) > MAX_FDS or len(body) > MAX_FRAME:
        raise ValueError(f"hand-over frame too large ({len(fds)} fds, {len(body)} bytes)")
    frame = _HEAD.pack(MAGIC, len(body)) + body
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        if sent < len(frame):  # the descriptors went with the first byte; the rest is plain data
            sock.setblocking(True)
            sock.sendall(frame[sent:])
    finally:
        sock.close()  # closes the dup only


def recv_fds(sock: socket.socket) -> tuple[dict[str, Any], list[int], bytes]:
    """Read one frame from the blocking unix socket `sock`: (payload, fds, the bytes read past the
    frame). The descriptors are close-on-exec; the caller owns them."""
    fds: list[int] = []
    data = b""
    try:
        while True:
            if len(data) >= _HEAD.size:
                magic, length = _HEAD.unpack_from(data)
                if magic != MAGIC or length > MAX_FRAME:
                    raise HandoverProtocolError("not a hand-over frame", data)
                if len(data) >= _HEAD.size + length:
                    break
            chunk, ancdata, flags, _ = sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * 4),
                                                    socket.MSG_CMSG_CLOEXEC)
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(cdata[: len(cdata) - len(cdata) % got.itemsize])
                    fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                raise HandoverProtocolError("the descriptors were cut (more than expected)")
            if not chunk:
                raise HandoverProtocolError("the connection closed before the frame ended", data)
            data += chunk
        _, length = _HEAD.unpack_from(data)
        end = _HEAD.size + length
        return json.loads(data[_HEAD.size:end]), fds, data[end:]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# ------------------------------------------------------------------ retiring a listener
def retire_connection(connection: ClientConnection) -> None:
    """From now on this connection ends between requests: an answer whose head has not gone out yet
    says `Connection: close`, and so does the answer to any next request."""
    connection.stopping = True
    if connection.busy and not connection.head_sent:
        connection.keep_alive = False


def idle_for(connection: ClientConnection, t: float) -> float:
    """Seconds a keep-alive connection has waited for its next request; 0 when it is not idle (busy, a
    request partly read, a tunnel, or no request yet: a new connection's request is on its way)."""
    if connection.busy or connection.closed or connection.buf or connection.tunnel or not connection.t_end:
        return 0.0
    return t - connection.t_end


def request_waiting(connection: ClientConnection) -> bool:
    """Bytes the client sent that this process has not read yet (its loop is busy): most likely its next
    request, which closing now would lose (a close with unread bytes even sends a RST). It is read on
    the loop's next turn and answered with `Connection: close` instead."""
    sock = connection.transport.get_extra_info("socket")
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return False
    try:
        peek = socket.socket(fileno=fd)  # a view of the transport's socket: detached below, never closed
    except OSError:
        return False
    try:
        return bool(peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the connection is already gone
        return False
    finally:
        peek.detach()


def stop_accepting(server: ProxyServer) -> None:
    """Close this process's copy of the listening socket; its connections are not touched."""
    if server._server is not None:
        server._server.close()


async def retire(server: ProxyServer, timeout: float, grace: float | None = None,
                 spread: float = CLOSE_SPREAD) -> int:
    """Stop accepting, then end every connection between requests (above) within `timeout` seconds;
    then close what is idle and abort what is left. Returns how many were aborted.

    An idle keep-alive connection is closed only then (or once idle `grace` seconds, when given), not
    sooner: its client may pick it for its next request at the very moment it is closed, and that
    request is lost (on a loaded machine a client's pool is full of such connections, closed by the
    server but not yet seen closed by the client). Waiting, its next request is answered with
    `Connection: close`, as HAProxy's `idle-close-on-response` does.

    The connections are retired one after another over `spread` seconds (at most half of `timeout`),
    longest idle first, as HAProxy's `close-spread-time` does: their clients reconnect to the new process
    a few at a time instead of all at once (a storm of TLS handshakes, from one address often enough)."""
    stop_accepting(server)
    grace = float("inf") if grace is None else grace
    start = now()
    deadline = start + timeout
    spread = min(spread, timeout / 2)
    order = sorted(server.connections, key=lambda c: c.t_end)
    due = {c: start + spread * i / len(order) for i, c in enumerate(order)}  # later ones: at once
    handshakes: set[Any] = getattr(server, "handshakes", set())  # HTTPS: handshakes under way finish
    closed_idle = 0
    while server.connections or handshakes:
        t = now()
        if t >= deadline:
            break
        for connection in list(server.connections):
            if not connection.stopping:
                if t < due.get(connection, start):
                    continue
                retire_connection(connection)
            if idle_for(connection, t) >= grace and not request_waiting(connection):
                connection.closed = True
                connection.transport.close()
                closed_idle += 1
        await asyncio.sleep(min(SWEEP, max(0.0, deadline - t)))
    t = now()
    for connection in list(server.connections):  # at the deadline: the idle ones close as above
        if idle_for(connection, t) > 0 and not request_waiting(connection):
            connection.closed = True
            connection.transport.close()
            closed_idle += 1
    left = [c for c in server.connections if not c.closed]  # the closed ones are only being flushed
    aborted = len(left) + len(handshakes)
    for connection in left:
        connection.transport.abort()
    for handshake in list(handshakes):
        handshake.abort()
    log.info("proxy.retired", listen=server.listen, closed_idle=closed_idle, aborted=aborted)
    return aborted
