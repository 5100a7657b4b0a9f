"""The load generator of `turnout rehearse`: HTTP requests through the proxy while a deploy runs,
one record per request, so the report can say exactly what each client saw.

Two modes: open loop (`rate`: starts are scheduled at fixed instants whatever the answers do, so a
stalled upstream shows up as errors and latency instead of silently slowing the load) and closed
loop (`concurrency`: N clients, each sending its next request when the previous one ended).

The figures (counts, latency per phase, windows, timeline) are computed by `LoadResult`;
`controller.rehearsal.report` prints them.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import socket
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import aiohttp.abc

from proxy.limits import raise_open_files_limit

# The marks the rehearsal records; the phases and the misrouting check are keyed on these names.
DEPLOY_STARTED = "deploy_started"
DEPLOY_FINISHED = "deploy_finished"
SWITCH_ACKNOWLEDGED = "switch_acknowledged"

PROXY_ERROR_HEADER = "X-Turnout-Error"
BOTH_VERSIONS_BUCKET = 0.1  # seconds: "both versions answered" means within the same 100 ms
_MAX_NAP = 0.05  # seconds: the open loop wakes at least this often to notice a stop
_BODY_HEAD = 256  # bytes of each body kept for the version extractor
_VERSION_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+\-]{0,63}")
DEFAULT_MAX_IN_FLIGHT = 512
MAX_IN_FLIGHT_LIMIT = 65_536  # one connection (one file descriptor) each: a bound, not a target


class Outcome(StrEnum):
    OK = "ok"
    APP_ERROR = "app_error"  # 4xx/5xx made by the application (passed through by the proxy)
    PROXY_ERROR = "proxy_error"  # made by the proxy itself: carries X-Turnout-Error
    CONNECT_ERROR = "connect_error"  # refused, reset or closed before a response
    TIMEOUT = "timeout"
    TRUNCATED = "truncated"  # a response whose body ended early
    MISROUTED = "misrouted"  # derived, never recorded: an ok answer from the wrong version


FAILED_BY_PROXY = frozenset({Outcome.PROXY_ERROR, Outcome.CONNECT_ERROR, Outcome.TIMEOUT})
SERVED = frozenset({Outcome.OK, Outcome.MISROUTED})  # the client got a good answer (maybe stale)

VersionExtractor = Callable[[Mapping[str, str], bytes], str | None]


def version_from_response(headers: Mapping[str, str], body_head: bytes) -> str | None:
    """The answering version: an `X-Version`/`X-App-Version` header, else the body's first line
    when it looks like a version token (the test app answers "v2\\n")."""
    for name in ("X-Version", "X-App-Version"):
        value = headers.get(name)
        if value:
            return value.strip()
    first_line = body_head.split(b"\n", 1)[0].strip().decode("latin-1")
    return first_line if _VERSION_TOKEN.fullmatch(first_line) else None


@dataclass(frozen=True)
class LoadConfig:
    url: str  # base URL of the service through the proxy, e.g. http://127.0.0.1:8080
    duration: float  # seconds during which requests are started
    rate: float | None = None  # requests/s, open loop
    concurrency: int | None = None  # clients, closed loop
    new_connections: float = 0.0  # fraction of requests sent on a fresh connection
    timeout: float = 10.0  # per request, connect to last body byte
    max_requests: int = 1_000_000  # hard bound on request starts, whatever the duration
    path: str = "/"
    headers: Mapping[str, str] = field(default_factory=dict)
    # Open loop: starts beyond this many requests in flight are skipped (counted as not_sent). Held
    # requests count too: a big-bang hold of H s at rate R needs about R*H beyond the usual.
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    version_of: VersionExtractor = version_from_response
    cacert: str | None = None  # https: a PEM file of CAs to trust (the system's store otherwise)
    connect_to: str | None = None  # "host:port" to connect to instead of the URL's; SNI and Host stay

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("LoadConfig: give exactly one of rate (open loop) or concurrency (closed loop)")
        if self.rate is not None and not self.rate > 0:
            raise ValueError(f"LoadConfig.rate must be > 0, got {self.rate}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"LoadConfig.concurrency must be >= 1, got {self.concurrency}")
        if not 0.0 <= self.new_connections <= 1.0:
            raise ValueError(f"LoadConfig.new_connections must be in [0, 1], got {self.new_connections}")
        for name in ("duration", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LoadConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.max_requests < 1:
            raise ValueError(f"LoadConfig.max_requests must be >= 1, got {self.max_requests}")
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) or not (
            1 <= self.max_in_flight <= MAX_IN_FLIGHT_LIMIT
        ):
            raise ValueError(f"LoadConfig.max_in_flight must be an integer 1-{MAX_IN_FLIGHT_LIMIT}, "
                             f"got {self.max_in_flight!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"LoadConfig.path must start with '/', got {self.path!r}")
        if self.connect_to is not None:
            host, _, port = self.connect_to.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"LoadConfig.connect_to must be host:port, got {self.connect_to!r}")

    @property
    def target(self) -> str:
        return self.url.rstrip("/") + self.path

    @property
    def connection_limit(self) -> int:
        return self.concurrency if self.concurrency is not None else self.max_in_flight

    def describe(self) -> dict[str, Any]:
        mode = {"rate": self.rate} if self.rate is not None else {"concurrency": self.concurrency}
        bound = {"max_in_flight": self.max_in_flight} if self.rate is not None else {}
        via = {"connect_to": self.connect_to} if self.connect_to else {}
        return {"url": self.target, "duration": self.duration, **mode,
                "new_connections": self.new_connections, "timeout": self.timeout, **bound, **via}

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What the client verifies an https:// URL's certificate with (True: the system's store)."""
        if self.cacert is None:
            return True
        return ssl.create_default_context(cafile=self.cacert)


# ------------------------------------------------------------------------------------------ marks
@dataclass(frozen=True)
class Mark:
    name: str
    at: float  # seconds: monotonic in `Marks`, relative to the run start in a `LoadResult`
    expect_version: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


class Marks:
    """Named instants recorded by the rehearsal while the load runs (same clock as the requests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.items: list[Mark] = []

    def mark(self, name: str, *, expect_version: str | None = None, **data: Any) -> Mark:
        item = Mark(name, self._clock(), expect_version, data)
        self.items.append(item)
        return item

    def relative_to(self, origin: float) -> list[Mark]:
        return [Mark(m.name, m.at - origin, m.expect_version, m.data) for m in self.items]


# ---------------------------------------------------------------------------------------- records
@dataclass(slots=True)
class RequestRecord:
    id: str
    start: float  # seconds since the run start
    end: float
    outcome: Outcome
    status: int | None = None
    version: str | None = None
    bytes: int = 0
    complete: bool = False  # the whole body arrived (Content-Length honoured)
    error: str | None = None  # what failed a request that got no whole answer (exception type: message)

    @property
    def latency(self) -> float:
        return self.end - self.start


def classify(status: int, headers: Mapping[str, str], complete: bool) -> Outcome:
    """The outcome of a request that got a response head."""
    if not complete:
        return Outcome.TRUNCATED
    if status >= 400:
        return Outcome.PROXY_ERROR if PROXY_ERROR_HEADER in headers else Outcome.APP_ERROR
    return Outcome.OK


# ---------------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, float]:
        return {"start": round(self.start, 6), "end": round(self.end, 6), "length": round(self.length, 6)}


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, latencies: Iterable[float]) -> LatencyStats:
        values = sorted(latencies)
        if not values:
            return cls(0, None, None, None)
        return cls(len(values), _percentile(values, 50), _percentile(values, 99), values[-1])

    def to_dict(self) -> dict[str, Any]:
        ms = {k: None if v is None else round(v * 1000, 3)
              for k, v in (("p50_ms", self.p50), ("p99_ms", self.p99), ("max_ms", self.max))}
        return {"count": self.count, **ms}


def _percentile(sorted_values: list[float], pct: float) -> float:
    # nearest rank: always a latency that was really measured
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class TimelineSecond:
    second: int
    versions: dict[str, int]  # served answers per version (misrouted ones included)
    errors: dict[str, int]  # failed requests per outcome
    misrouted: int

    @property
    def total(self) -> int:
        return sum(self.versions.values()) + sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {"second": self.second, "versions": self.versions, "errors": self.errors,
                "misrouted": self.misrouted}


@dataclass
class LoadResult:
    """Every request of a run plus the marks, and the figures the report shows.
    Timed by start (phases, misrouting) or by end (when the client saw it: gap, window, timeline)."""

    records: list[RequestRecord]
    marks: list[Mark] = field(default_factory=list)
    duration: float = 0.0  # seconds during which requests were started
    not_sent: int = 0  # open-loop starts skipped because max_in_flight was reached
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.records = sorted(self.records, key=lambda r: r.start)
        self.marks = sorted(self.marks, key=lambda m: m.at)
        self.outcomes = [self._effective_outcome(r) for r in self.records]
        self.counts = Counter(self.outcomes)

    def _effective_outcome(self, record: RequestRecord) -> Outcome:
        if record.outcome is not Outcome.OK:
            return record.outcome
        expected = self.expected_version_at(record.start)
        # An answer whose version cannot be told is not called misrouted: we would be guessing.
        if expected is not None and record.version is not None and record.version != expected:
            return Outcome.MISROUTED
        return Outcome.OK

    def expected_version_at(self, instant: float) -> str | None:
        """The version every answer must come from for a request started at `instant`: set by the
        latest `switch_acknowledged` mark strictly before it."""
        expected = None
        for mark in self.marks:
            if mark.at >= instant:
                break
            if mark.name == SWITCH_ACKNOWLEDGED:
                expected = mark.expect_version
        return expected

    def mark_at(self, name: str) -> float | None:
        return next((m.at for m in self.marks if m.name == name), None)

    # -- counts
    @property
    def sent(self) -> int:
        return len(self.records)

    @property
    def succeeded(self) -> int:
        return self.counts[Outcome.OK]

    @property
    def failed_by_proxy(self) -> int:
        return sum(self.counts[o] for o in FAILED_BY_PROXY)

    @property
    def app_errors(self) -> int:
        return self.counts[Outcome.APP_ERROR]

    @property
    def truncated(self) -> int:
        return self.counts[Outcome.TRUNCATED]

    @property
    def misrouted(self) -> int:
        return self.counts[Outcome.MISROUTED]

    def versions(self) -> list[str]:
        """Versions that answered, in order of first answer."""
        return list(dict.fromkeys(r.version for r in self.records if r.version is not None))

    # -- latency
    def phases(self) -> dict[str, LatencyStats]:
        """Latency of answered requests (any status) by when they started: before/during/after the
        deploy, or one phase `all` when the run has no deploy_started mark."""
        started, finished = self.mark_at(DEPLOY_STARTED), self.mark_at(DEPLOY_FINISHED)
        answered = [r for r in self.records if r.status is not None]
        if started is None:
            return {"all": LatencyStats.of(r.latency for r in answered)}
        finished = math.inf if finished is None else finished
        return {
            "before": LatencyStats.of(r.latency for r in answered if r.start < started),
            "during": LatencyStats.of(r.latency for r in answered if started <= r.start < finished),
            "after": LatencyStats.of(r.latency for r in answered if r.start >= finished),
        }

    # -- windows
    def both_versions_window(self) -> Window | None:
        """From the first to the last answer in any 100 ms bucket where more than one version answered."""
        buckets: dict[int, list[RequestRecord]] = {}
        for record, outcome in zip(self.records, self.outcomes, strict=True):
            if outcome in SERVED and record.version is not None:
                buckets.setdefault(int(record.end // BOTH_VERSIONS_BUCKET), []).append(record)
        mixed = sorted(k for k, rs in buckets.items() if len({r.version for r in rs}) > 1)
        if not mixed:
            return None
        return Window(min(r.end for r in buckets[mixed[0]]), max(r.end for r in buckets[mixed[-1]]))

    def longest_gap(self) -> Window:
        """The longest time no client got a good answer (misrouted answers count as served: the
        client was not left waiting), edges of the run included — the big-bang gap."""
        ends = sorted(r.end for r, o in zip(self.records, self.outcomes, strict=True) if o in SERVED)
        edges = [0.0, *ends, max(self.duration, ends[-1] if ends else 0.0)]
        best = Window(0.0, 0.0)
        for a, b in itertools.pairwise(edges):
            if b - a > best.length:
                best = Window(a, b)
        return best

    def timeline(self) -> list[TimelineSecond]:
        """Per second of answer time: served answers per version and failures per outcome."""
        last = max([self.duration, *(r.end for r in self.records)])
        seconds = max(1, math.ceil(last))
        versions: list[Counter[str]] = [Counter() for _ in range(seconds)]
        errors: list[Counter[str]] = [Counter() for _ in range(seconds)]
        misrouted = [0] * seconds
        for record, outcome in zip(self.records, self.outcomes, strict=True):
            s = min(seconds - 1, max(0, int(record.end)))
            if outcome in SERVED:
                versions[s][record.version or "unknown"] += 1
                misrouted[s] += outcome is Outcome.MISROUTED
            else:
                errors[s][outcome.value] += 1
        return [TimelineSecond(s, dict(versions[s]), dict(errors[s]), misrouted[s]) for s in range(seconds)]

    def peak_in_flight(self) -> int:
        """The most requests in flight at once, as the client saw them (an end at the same instant as a
        start comes first); set beside the open loop's bound, it tells how close a hold came to it."""
        events = sorted([(r.start, 1) for r in self.records] + [(r.end, -1) for r in self.records])
        peak = level = 0
        for _, step in events:
            level += step
            peak = max(peak, level)
        return peak

    def summary(self) -> dict[str, int]:
        return {"sent": self.sent, "succeeded": self.succeeded, "failed_by_proxy": self.failed_by_proxy,
                "app_errors": self.app_errors, "truncated": self.truncated, "misrouted": self.misrouted,
                "not_sent": self.not_sent}

    def failure_lines(self, limit: int = 60, only: frozenset[Outcome] | None = None) -> list[str]:
        """The counts, the marks, then each request that got no good answer (or, given `only`, each with
        one of those outcomes): its outcome, when it started and ended (seconds since the load began), its
        status and what failed it."""
        marks = ", ".join(f"{m.name}@{m.at:.3f}" for m in self.marks)
        failed = [f"  {o.value} {r.start:.3f}->{r.end:.3f} status={r.status} {r.error or ''}".rstrip()
                  for r, o in zip(self.records, self.outcomes, strict=True)
                  if (o in only if only is not None else o not in SERVED)]
        shown = failed[:limit] + ([f"  ... and {len(failed) - limit} more"] if len(failed) > limit else [])
        return [str(self.summary()), f"marks: {marks}", *shown]

    def to_dict(self, include_records: bool = False) -> dict[str, Any]:
        window = self.both_versions_window()
        data: dict[str, Any] = {
            "config": dict(self.config),
            "duration": round(self.duration, 6),
            "summary": self.summary(),
            "outcomes": {o.value: n for o, n in sorted(self.counts.items())},
            "versions": self.versions(),
            "latency": {name: stats.to_dict() for name, stats in self.phases().items()},
            "both_versions_window": window.to_dict() if window else None,
            "longest_gap": self.longest_gap().to_dict(),
            "peak_in_flight": self.peak_in_flight(),
            "marks": [{"name": m.name, "at": round(m.at, 6), "expect_version": m.expect_version,
                       **({"data": dict(m.data)} if m.data else {})} for m in self.marks],
            "timeline": [t.to_dict() for t in self.timeline()],
        }
        if include_records:
            data["records"] = [
                {"id": r.id, "start": round(r.start, 6), "end": round(r.end, 6), "outcome": o.value,
                 "status": r.status, "version": r.version, "bytes": r.bytes, "complete": r.complete}
                for r, o in zip(self.records, self.outcomes, strict=True)]
        return data


# ------------------------------------------------------------------------------------------ runner
OPEN_FILES_MARGIN = 64  # descriptors beyond one per connection: the loop, logs, the admin socket


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def ensure_open_files(max_in_flight: int) -> int:
    """Lift this process's soft open-files limit so `max_in_flight` connections fit (one descriptor
    each, plus a margin), up to the hard limit; returns the limit now in force. The usual soft default
    of 1024 is below what a few thousand requests in flight need."""
    return raise_open_files_limit(max_in_flight + OPEN_FILES_MARGIN)


class _Run:
    """One load run: the sessions, the clock origin, the records."""

    def __init__(self, config: LoadConfig, keepalive: aiohttp.ClientSession,
                 fresh: aiohttp.ClientSession, stop: asyncio.Event | None = None) -> None:
        self.config = config
        # Read before every start, so nothing starts once it is set, even in the loop turn that set it
        # (the watcher that brings the deadline forward runs a turn later).
        self.stop = stop if stop is not None else asyncio.Event()
        self.keepalive = keepalive
        self.fresh = fresh
        self.target = config.target
        self.headers = dict(config.headers)
        self.records: list[RequestRecord] = []
        self.not_sent = 0
        self.started = 0
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:12]
        self._fresh_credit = 0.0
        self.origin = time.monotonic()
        self.deadline = self.origin + config.duration  # brought forward by `stop_now`

    def _next_session(self) -> aiohttp.ClientSession:
        # Deterministic spread: exactly the asked fraction of requests goes on a fresh connection.
        self._fresh_credit += self.config.new_connections
        if self._fresh_credit >= 1.0 - 1e-9:
            self._fresh_credit -= 1.0
            return self.fresh
        return self.keepalive

    async def request(self) -> None:
        self.started += 1
        session = self._next_session()
        request_id = f"{self._id_prefix}-{next(self._ids):x}"
        record = RequestRecord(request_id, time.monotonic() - self.origin, 0.0, Outcome.CONNECT_ERROR)
        try:
            async with session.get(self.target, headers={**self.headers, "X-Request-Id": request_id}) as resp:
                record.status = resp.status
                head = b""
                async for chunk in resp.content.iter_any():
                    record.bytes += len(chunk)
                    if len(head) < _BODY_HEAD:
                        head += chunk[: _BODY_HEAD - len(head)]
                expected = resp.content_length
                record.complete = expected is None or expected == record.bytes
                record.outcome = classify(resp.status, resp.headers, record.complete)
                if record.outcome is Outcome.PROXY_ERROR:  # the proxy's reason, for the failure lines
                    record.error = f"{PROXY_ERROR_HEADER}: {resp.headers.get(PROXY_ERROR_HEADER)}"
                if record.outcome is not Outcome.PROXY_ERROR:  # the proxy's own body names no version
                    record.version = self.config.version_of(resp.headers, head)
        except TimeoutError as exc:  # before the broader connection errors: ServerTimeoutError is both
            record.outcome = Outcome.TIMEOUT
            record.error = _describe(exc)
        except (aiohttp.ClientError, OSError) as exc:
            record.error = _describe(exc)
            # After the head, any failure means the body was cut; before it, no response at all.
            record.outcome = Outcome.TRUNCATED if record.status is not None else Outcome.CONNECT_ERROR
        except asyncio.CancelledError:  # still in flight when the run's grace period ended
            record.outcome = Outcome.TIMEOUT
            raise
        finally:
            record.end = time.monotonic() - self.origin
            self.records.append(record)

    def stop_now(self) -> None:
        self.deadline = min(self.deadline, time.monotonic())

    async def closed_loop(self, clients: int) -> None:
        async def client() -> None:
            while (time.monotonic() < self.deadline and self.started < self.config.max_requests
                   and not self.stop.is_set()):
                await self.request()

        await asyncio.gather(*(client() for _ in range(clients)))

    async def open_loop(self, rate: float) -> None:
        """Start request i at origin + i/rate. Each wake-up starts every start that is due, so a busy
        loop delays starts but never shifts the schedule (no drift, no silent lower rate)."""
        in_flight: set[asyncio.Task[None]] = set()
        limit, bound = self.config.max_in_flight, self.config.max_requests
        index = 0
        try:
            while index < bound and not self.stop.is_set():
                due = self.origin + index / rate
                if due >= self.deadline:
                    break
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(min(due - now, _MAX_NAP))
                    continue
                while index < bound and self.origin + index / rate <= now:
                    if self.origin + index / rate >= self.deadline or self.stop.is_set():
                        break
                    index += 1
                    if len(in_flight) >= limit:
                        self.not_sent += 1
                        continue
                    task = asyncio.create_task(self.request())
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
            await self._finish(in_flight)
        finally:
            for task in in_flight:
                task.cancel()

    async def _finish(self, in_flight: set[asyncio.Task[None]]) -> None:
        # Each request has its own timeout; the grace only guards against a stuck client.
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=self.config.timeout + 1.0)
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)


async def run_load(config: LoadConfig, marks: Marks | None = None,
                   stop: asyncio.Event | None = None) -> LoadResult:
    """Send the configured load and return what every request saw. Bounded by `duration` (then the
    in-flight requests get at most `timeout` more) and by `max_requests`; setting `stop` ends the
    run early (no new request starts, the ones in flight finish)."""
    ensure_open_files(config.connection_limit)
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    # No cookie jar: sticky cookies would pin the whole load to one version, unlike real clients.
    def session(force_close: bool) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=config.connection_limit, force_close=force_close, ssl=config.ssl_context(),
            resolver=ConnectTo(config.connect_to) if config.connect_to else None)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar(),
                                     headers={"User-Agent": "turnout-rehearse"})

    async with session(force_close=False) as keepalive, session(force_close=True) as fresh:
        run = _Run(config, keepalive, fresh, stop)
        watcher = asyncio.create_task(_stop_when_set(stop, run)) if stop is not None else None
        try:
            if config.rate is not None:
                await run.open_loop(config.rate)
            else:
                assert config.concurrency is not None
                await run.closed_loop(config.concurrency)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        duration = min(time.monotonic(), run.deadline) - run.origin
    return LoadResult(records=run.records, marks=marks.relative_to(run.origin) if marks else [],
                      duration=duration, not_sent=run.not_sent, config=config.describe())


class ConnectTo(aiohttp.abc.AbstractResolver):
    """Every name resolves to one address (`--connect-to`): the URL's host still goes in the Host header
    and in TLS's SNI, as curl's --connect-to does."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        return [{"hostname": host, "host": self.host, "port": self.port, "family": family, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


async def _stop_when_set(stop: asyncio.Event, run: _Run) -> None:
    await stop.wait()
    run.stop_now()
