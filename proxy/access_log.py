"""The access log: one structlog event `http.access` per finished exchange, fixed fields in a fixed order.

    time, client, method, path, host, status, bytes_sent, duration_ms, service, pool, upstream,
    request_id, error

`time` is when the request head arrived (UTC, ISO 8601, milliseconds); `path` is without the query (it may
carry secrets); `bytes_sent` counts every byte written to the client for the exchange (head and body);
`error` is the `X-Turnout-Error` reason of a proxy-made answer, `cut` when the proxy cut the answer short
after its head went out, `client-closed` when the client left before the answer was complete (status 499
when nothing had come back yet), else empty.

Cost: when the log is off (`ProxyConfig.access_log = False`) a connection has no `Tap` and the hot path
pays one `is not None` test at each hook. When on, a `Tap` stands in for the client transport (counting
what is written) and holds the little the event needs that the connection forgets along the way.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import re
import time
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .http import RequestHead
    from .pool import Pool
    from .upstream import Upstream

FIELDS = ("time", "client", "method", "path", "host", "status", "bytes_sent", "duration_ms", "service",
          "pool", "upstream", "request_id", "error")
EVENT = "http.access"

log = structlog.get_logger("turnout.proxy.access")

_REQUEST_ID_RE = re.compile(rb"\r\nx-request-id:[ \t]*([^\r]*)", re.IGNORECASE)
_second = -1
_second_text = ""


def format_time(wall: float) -> str:
    """UTC ISO 8601 with milliseconds; the part up to the second is cached (one strftime a second)."""
    global _second, _second_text
    whole = int(wall)
    if whole != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = whole
    return f"{_second_text}.{int((wall - whole) * 1000):03d}Z"


class Tap:
    """The client transport of one connection, counting bytes written; plus what the event needs."""

    __slots__ = ("error", "head", "mark", "pool", "sent", "transport", "upstream")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.sent = 0  # bytes written on this connection so far
        self.mark = 0  # `sent` when the current exchange began
        self.head: bytes = b""  # the request head as sent upstream (for X-Request-Id)
        self.pool = ""
        self.upstream = ""
        self.error = ""

    # ------------------------------------------------------------------ the transport's face
    def write(self, data: bytes) -> None:
        self.sent += len(data)
        self.transport.write(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def __getattr__(self, name: str) -> Any:  # close, abort, pause_reading, get_extra_info ...
        return getattr(self.transport, name)

    # ------------------------------------------------------------------ hooks (forward.py)
    def routed(self, pool: Pool, upstream: Upstream) -> None:
        self.pool = pool.name
        self.upstream = upstream.address

    def emit(self, req: RequestHead | None, t0: float, client: bytes, status: int, service: str,
             error: str = "") -> None:
        """An exchange is over: log it, then reset for the next one. `t0`: when its head arrived (on
        forward.now's clock); `client`: the peer's address; `service`: the name, or "" when none."""
        duration = time.monotonic() - t0 if req is not None else 0.0
        request_id = ""
        if self.head:
            m = _REQUEST_ID_RE.search(self.head)
            if m is not None:
                request_id = m.group(1).rstrip(b" \t").decode("latin-1")
        fields = dict(
            time=format_time(time.time() - duration),
            client=client.decode(),
            method=req.method.decode("latin-1") if req is not None else "",
            path=req.path if req is not None else "",
            host=(req.host_raw.decode("latin-1") or req.host) if req is not None else "",
            status=status,
            bytes_sent=self.sent - self.mark,
            duration_ms=round(duration * 1000, 3),
            service=service,
            pool=self.pool,
            upstream=self.upstream,
            request_id=request_id,
            error=error or self.error,
        )
        if _sink is not None:
            _sink.write({"event": EVENT, **fields, "level": "info", "timestamp": format_time(time.time())})
        else:
            log.info(EVENT, **fields)
        self.mark = self.sent
        self.head = b""
        self.pool = self.upstream = self.error = ""


class JsonLinesSink:
    """Access-log lines, JSON, written in batches: one write per `interval` (or per 64 KiB), not one
    flushed print per request as the general structlog pipeline does. Used when logs are JSON."""

    def __init__(self, stream: Any, interval: float = 0.25, limit: int = 64 * 1024) -> None:
        self.stream = stream
        self.interval = interval
        self.limit = limit
        self.lines: list[str] = []
        self.size = 0
        self.scheduled = False

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event)
        self.lines.append(line)
        self.size += len(line)
        if self.size >= self.limit:
            self.flush()
        elif not self.scheduled:
            try:
                asyncio.get_running_loop().call_later(self.interval, self.flush)
                self.scheduled = True
            except RuntimeError:  # no loop: write at once
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        if self.lines:
            lines, self.lines, self.size = self.lines, [], 0
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


_sink: JsonLinesSink | None = None


def use_sink(sink: JsonLinesSink | None) -> None:
    """Route access events to `sink` (proxy.log.configure does, for JSON logs); None: structlog."""
    global _sink
    if _sink is not None:
        _sink.flush()
    _sink = sink
    if sink is not None:
        atexit.register(sink.flush)


def flush() -> None:
    if _sink is not None:
        _sink.flush()
