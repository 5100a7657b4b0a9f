"""The access log: one line per finished exchange, JSON (default) or nginx's combined format.

JSON lines carry fixed fields in a fixed order, between the `event` and the `level`/`timestamp` every
structlog event of the proxy has:

    event ("http.access"), time, client, method, path, host, status, bytes_sent, duration_ms, service,
    pool, upstream, request_id, error, level ("info"), timestamp

`time` is when the request head arrived (UTC, ISO 8601, milliseconds), `timestamp` when the line was made;
`path` is without the query (it may carry secrets); `bytes_sent` counts every byte written to the client
for the exchange (head and body); `error` is the `X-Turnout-Error` reason of a proxy-made answer, `cut`
when the proxy cut the answer short after its head went out, `client-closed` when the client left before
the answer was complete (status 499 when nothing had come back yet), else empty.

`combined` is nginx's: `client - - [time] "METHOD path HTTP/1.x" status bytes_sent "referer" "user-agent"`
(the path without its query; bytes_sent with the head, as nginx's `$bytes_sent`), strings escaped as
nginx does (`"`, `\\` and non-printable bytes as `\\xHH`).

Cost: the line is one f-string. What repeats is made once and remembered (for a second at most): the
request's part per validated head (`RequestHead`, shared by every request with the same head from the
same client address), the routing part per (service, pool, upstream), the time text per millisecond.
Only client-controlled strings are escaped, and those once per head (printable ASCII passes as it is).
Lines go to a `LogWriter` (batched, written by its own thread, bounded). With `sample` < 1, that share
of 2xx answers is logged (evenly spread, not random); every other status and every exchange with an
`error` is always logged. When the log is off (`ProxyConfig.access_log = False`) a connection's `alog`
is None and the hot path pays one test per hook.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .log_writer import LogWriter

if TYPE_CHECKING:
    from .http import RequestHead
    from .pool import Pool
    from .router import Router
    from .service import Service
    from .upstream import Upstream

FIELDS = ("time", "client", "method", "path", "host", "status", "bytes_sent", "duration_ms", "service",
          "pool", "upstream", "request_id", "error")
EVENT = "http.access"
FORMATS = ("json", "combined")
MAX_REMEMBERED = 4096  # request parts and routing parts remembered (then forgotten all at once)

_REQUEST_ID_RE = re.compile(rb"\r\nx-request-id:[ \t]*([^\r]*)", re.IGNORECASE)
_REFERER_RE = re.compile(rb"\r\nreferer:[ \t]*([^\r]*)", re.IGNORECASE)
_USER_AGENT_RE = re.compile(rb"\r\nuser-agent:[ \t]*([^\r]*)", re.IGNORECASE)
_DIGITS3 = tuple(f"{n:03d}" for n in range(1000))
_MS_SUFFIX = tuple(f".{n:03d}Z" for n in range(1000))
_NUMBERS = tuple(str(n) for n in range(1000))  # a status, whole milliseconds: looked up, not formatted
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_wall = time.time
_wall_ns = time.time_ns
_monotonic = time.monotonic  # forward.now: the clock of `t0`


class Exchange(Protocol):
    """What the log reads off a client connection (`forward.ClientConnection`) when an exchange ends,
    and the fields it resets for the next one."""

    router: Router  # its table names the service of a request answered before routing
    service: Service | None
    req: RequestHead | None
    t0: float  # when the head arrived (monotonic)
    t_end: float  # when the pool's counters saw it end (monotonic; older than t0 when they did not)
    peer: bytes  # the client's address
    status: int
    sent: int  # bytes written to the client on this connection so far
    lmark: int  # `sent` when the current exchange began
    lhead: bytes  # the request head as sent upstream (its X-Request-Id), b"" before one was made
    lpool: Pool | None  # where the exchange was routed (kept when the connection forgets it)
    lup: Upstream | None
    lerror: str  # the reason of a proxy-made answer
    lsame: tuple | None  # what its last line said but for times and request id (a key), and its texts
    lparts: tuple

def json_text(s: str) -> str:
    """`s` as the inside of a JSON string (what json.dumps writes between the quotes, ASCII only)."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return s
    return json.dumps(s)[1:-1]


def clf_text(s: str) -> str:
    """`s` as nginx writes a string in its log: `"`, `\\`, controls and non-ASCII as `\\xHH`."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return s
    return "".join(c if " " <= c <= "~" and c not in '"\\' else f"\\x{ord(c):02X}" for c in s)


def format_time(wall: float) -> str:
    """UTC ISO 8601 with milliseconds, as the JSON lines' `time` and `timestamp` (truncated to the ms)."""
    return _iso(int(wall * 1000))


_iso_second = -1
_iso_second_text = ""


def _iso(ms: int) -> str:
    """The text of a time in milliseconds; the part up to the second is remade once a second."""
    global _iso_second, _iso_second_text
    second, ms = divmod(ms, 1000)
    if second != _iso_second:
        _iso_second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _iso_second = second
    return _iso_second_text + _MS_SUFFIX[ms]


def _clf_time(second: int) -> str:
    t = time.gmtime(second)
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:"
            f"{t.tm_sec:02d} +0000")


class AccessLog:
    """The log of one proxy: its format, its sampling and where its lines go."""

    def __init__(self, writer: LogWriter, fmt: str = "json", sample: float = 1.0) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"access log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.writer = writer
        self.format = fmt
        self.sample = sample
        self.sampling = sample < 1.0
        self._credit = 1.0 - sample  # the first 2xx is kept; then one every 1/sample
        self._lines = writer.lines  # the writer's list (the same object for its life)
        self._batch = writer.batch_lines
        # Remembered parts of lines: per request head (with the client: the head cache is per client
        # address), per route, and the time texts of the last millisecond (second) seen.
        self._requests: dict[RequestHead, tuple[str, ...] | tuple[str, str | None, int]] = {}
        self._routes: dict[tuple[object, object, object], str] = {}
        self._numbers: dict[int, str] = {}  # bytes_sent texts (answers of one size repeat)
        self._now_key = self._start_key = self._second = -1
        self._now_text = self._start_text = ""
        # An exchange is over: log it (unless sampled out), then reset `c`'s log fields for the next one.
        # `error`: the exchange's end (cut, client-closed), when not a proxy-made answer's reason.
        self.emit: Callable[[Exchange, str], None] = self._json if fmt == "json" else self._combined

    def flush(self) -> None:
        self.writer.flush()

    def retarget(self, writer: LogWriter, fmt: str, sample: float) -> None:
        """From now on write to `writer` in `fmt`, `sample` of the 2xx answers (`turnout reload`): every
        connection holding this log follows at once. The lines so far go to the old writer."""
        if fmt not in FORMATS:
            raise ValueError(f"access log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.writer.flush()
        self.writer, self._lines, self._batch = writer, writer.lines, writer.batch_lines
        self.format, self.sample, self.sampling = fmt, sample, sample < 1.0
        self._credit = 1.0 - sample
        self._requests.clear()  # remembered texts are per format
        self._routes.clear()
        self.emit = self._json if fmt == "json" else self._combined

    def _new_second(self, second: int) -> None:
        """Forget the remembered parts once a second: they hold routing snapshots and request heads
        that may be gone since (a swap, the head cache's turnover); the live ones are remade at once."""
        self._second = second
        self._requests.clear()
        self._routes.clear()

    def _sampled_out(self, status: int, error: str) -> bool:
        if 200 <= status < 300 and not error:
            self._credit += self.sample
            if self._credit < 1.0:
                return True
            self._credit -= 1.0
        return False

    # ------------------------------------------------------------------ JSON lines
    def _json(self, c: Exchange, error: str) -> None:
        # The hot path's one log call: locals, remembered parts and one f-string (measured with
        # bench/hotpath_micro.py --access-log json; see bench/RESULTS.md, Session 4).
        req = c.req
        status = c.status
        sent = c.sent
        bytes_sent = sent - c.lmark
        head = c.lhead
        error = error or c.lerror
        # What the line says besides its times and request id: mostly what this connection's last line
        # said (a keep-alive client repeating its request), whose text is then reused whole.
        same = (req, c.service, c.lpool, c.lup, status, bytes_sent, error)
        c.lmark = sent
        c.lhead = b""
        c.lpool = c.lup = None
        c.lerror = ""
        if self.sampling and self._sampled_out(status, error):
            return
        wall_ns = _wall_ns()  # an int: no float work for the time texts' keys
        key = wall_ns // 1_000_000
        if key != self._now_key:
            self._now_key = key
            self._now_text = _iso(key)
            if key // 1000 != self._second:
                self._new_second(key // 1000)
        if same == c.lsame:
            middle, after, request_id, id_at = c.lparts
        else:
            middle, after, request_id, id_at = c.lparts = self._json_parts(c, same, head)
            c.lsame = same
        if req is not None:
            duration = c.t_end - c.t0  # the end the pool's counters saw, when this exchange set it
            if duration < 0:  # it did not (cut or left before routing): now
                duration = _monotonic() - c.t0
            micros = int(duration * 1_000_000 + 0.5)  # nearest µs: a float difference falls short
            start = (wall_ns // 1000 - micros) // 1000
            if start == key:
                started = self._now_text
            elif start == self._start_key:
                started = self._start_text
            else:
                self._start_key = start
                started = self._start_text = _iso(start)
            if request_id is None:  # the proxy's, at the end of the head it sent: "...: <id>\r\n\r\n"
                request_id = head[id_at:-4].decode()
        else:  # refused before its head was understood
            started = self._now_text
            micros = 0
        ms = micros // 1000
        lines = self._lines
        lines.append(f'{{"event": "http.access", "time": "{started}", {middle}'
                     f'{_NUMBERS[ms] if ms < 1000 else ms}.{_DIGITS3[micros % 1000]}, '
                     f'{after[0]}{request_id}{after[1]}{self._now_text}"}}\n')
        n = len(lines)
        if n == 1:
            self.writer.started_batch()
        elif n >= self._batch:
            self.writer.flush()

    def _json_parts(self, c: Exchange, same: tuple, head: bytes
                    ) -> tuple[str, tuple[str, str], str | None, int]:
        """The fixed texts of a line: before the duration, around the request id (which is given when
        the client sent it, else read from the head at `id_at`)."""
        req, service, pool, upstream, status, bytes_sent, error = same
        if req is not None:
            known = self._requests.get(req)
            if known is None:
                known = self._json_request(c, req, head)
            part, request_id, id_at = known
        else:  # refused before its head was understood
            part = f'"client": "{c.peer.decode("latin-1")}", "method": "", "path": "", "host": "", '
            request_id, id_at = "", 0
        route_key = (service, pool, upstream)
        route = self._routes.get(route_key)
        if route is None:
            route = self._json_route(c, route_key)
        return (f'{part}"status": {status}, "bytes_sent": {bytes_sent}, "duration_ms": ',
                (f'{route}"request_id": "', f'", "error": "{error}", "level": "info", "timestamp": "'),
                request_id, id_at)

    def _json_request(self, c: Exchange, req: RequestHead, head: bytes) -> tuple[str, str | None, int]:
        # The client's address comes from the kernel (no escaping); the rest from the client.
        part = (f'"client": "{c.peer.decode("latin-1")}", '
                f'"method": "{json_text(req.method.decode("latin-1"))}", "path": "{json_text(req.path)}", '
                f'"host": "{json_text(req.host_raw.decode("latin-1") or req.host)}", ')
        request_id: str | None = None  # made by the proxy: read per request, where this head puts it
        id_at = len(head)
        if req.request_id:  # the client's own, the same for every request with this head
            m = _REQUEST_ID_RE.search(head)
            request_id = json_text(_value(m)) if m is not None else ""
        elif head:  # the same place in every request with this head (only the id's digits follow it)
            id_at = head.rfind(b" ") + 1
        known = (part, request_id, id_at)
        if head:
            _remember(self._requests, req, known)
        return known

    def _json_route(self, c: Exchange, key: tuple[Service | None, Pool | None, Upstream | None]) -> str:
        service, pool, upstream = key
        if service is None and c.req is not None:  # answered before routing (hold timeout, maintenance)
            service = c.router.table.match(c.req.host, c.req.path)
        route = (f'"service": "{json_text(service.name if service is not None else "")}", '
                 f'"pool": "{json_text(pool.name if pool is not None else "")}", '
                 f'"upstream": "{json_text(upstream.address if upstream is not None else "")}", ')
        if key[0] is not None:  # an unrouted line's service depends on the request, not on the key
            _remember(self._routes, key, route)
        return route

    # ------------------------------------------------------------------ combined
    def _combined(self, c: Exchange, error: str) -> None:
        req = c.req
        status = c.status
        sent = c.sent
        bytes_sent = sent - c.lmark
        head = c.lhead
        error = error or c.lerror
        c.lmark = sent
        c.lhead = b""
        c.lpool = c.lup = None
        c.lerror = ""
        if self.sampling and self._sampled_out(status, error):
            return
        second = int(_wall())
        if second != self._now_key:
            self._now_key = second
            self._now_text = _clf_time(second)
            self._new_second(second)
        if req is not None:
            known = self._requests.get(req)
            if known is None:
                known = self._combined_request(c, req, head)
            before, after, tail = known  # type: ignore[misc]
        else:  # refused before its head was understood
            before, after, tail = f"{c.peer.decode('latin-1')} - - [", '] "-" ', ' "-" "-"'
        lines = self._lines
        lines.append(f"{before}{self._now_text}{after}{status} {bytes_sent}{tail}\n")
        n = len(lines)
        if n == 1:
            self.writer.started_batch()
        elif n >= self._batch:
            self.writer.flush()

    def _combined_request(self, c: Exchange, req: RequestHead, head: bytes) -> tuple[str, str, str]:
        known = (f"{c.peer.decode('latin-1')} - - [",
                 f'] "{clf_text(req.method.decode("latin-1"))} {clf_text(req.path)} '
                 f'{"HTTP/1.1" if req.http11 else "HTTP/1.0"}" ',
                 f' "{_header(_REFERER_RE, head)}" "{_header(_USER_AGENT_RE, head)}"')
        if head:
            _remember(self._requests, req, known)  # type: ignore[arg-type]
        return known


def _remember(cache: dict, key: object, value: object) -> None:
    if len(cache) >= MAX_REMEMBERED:
        cache.clear()
    cache[key] = value


_NO_REQUEST_CLF = ('"-" ', ' "-" "-"')  # a request refused before its head was understood


def _value(m: re.Match[bytes]) -> str:
    return m.group(1).rstrip(b" \t").decode("latin-1")


def _header(pattern: re.Pattern[bytes], head: bytes) -> str:
    m = pattern.search(head)
    return clf_text(_value(m)) if m is not None else "-"
