"""Shadow traffic: copies of sampled requests sent to another pool, and their answers compared with the
client's (proxy/mirror_diff.py).

Only services with a mirror whose target pool is routable pay anything: such a service never takes the
fast lane (`Service.full_path_only`), and its requests are sampled in the full path (`sample`: method,
percent, `max_per_second`; the target must be another pool than the one serving the client). A sampled
request is queued as a `Job` — the head the upstream got, marked `X-Turnout-Mirror: 1`, plus its body up
to `max_body` — in a bounded queue (a full queue drops the copy and counts it), and workers send it on
connections of their own, with their own timeout. Nothing of this can delay, change or fail the client's
exchange: the copy leaves after the request was read, its answer is read by a worker, and every failure
on the mirror's side is counted, never raised into the client's path.

With `compare`, the client's answer is tee'd as it is written (`Tee`: the client connection's transport
for that one exchange, parsing a copy up to `max_body`) and compared with the mirror's. When the stable
pool has a second upstream, the request also goes there, and what differs between the two stable answers
is learned as noise (Diffy's trick). A target that fails copies in a row gets none for a while
(`FAILURES_TO_PAUSE`), so a dead one costs no connection attempt per sampled request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog
from httptools import HttpResponseParser

from .metrics import MirrorStats
from .mirror_diff import Answer, DiffReport, differences, endpoint
from .specs import MirrorSpec
from .upstream import Upstream

if TYPE_CHECKING:
    from .http import RequestHead
    from .pool import Pool

log = structlog.get_logger("turnout.proxy.mirror")

MAX_QUEUE = 256  # copies waiting for a worker; more are dropped (counted)
MAX_WORKERS = 16  # copies in flight per service
MARK = b"X-Turnout-Mirror: 1\r\n"
# A target that failed this many copies in a row is given none for a pause (1 s, doubling up to 30 s, reset
# by a copy that gets through): a dead target must not cost a connection attempt per sampled request.
FAILURES_TO_PAUSE = 5
MAX_PAUSE = 30.0


class _AnswerReader:
    """Parses one HTTP/1.1 answer from the bytes fed to it, keeping the body up to `limit` bytes."""

    __slots__ = ("answer", "complete", "head_only", "headers_done", "limit", "parser", "size")

    def __init__(self, limit: int, head_only: bool) -> None:
        self.limit = limit
        self.head_only = head_only
        self.answer = Answer(0)
        self.parser = HttpResponseParser(self)
        self.complete = False
        self.headers_done = False
        self.size = 0

    def feed(self, data: bytes) -> None:
        if not self.complete:
            self.parser.feed_data(data)

    def eof(self) -> None:
        """The connection closed: a close-delimited body ends here."""
        if self.headers_done:
            self.complete = True

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.answer.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.answer.status = status
        if status >= 200:
            self.headers_done = True
            if self.head_only:
                self.complete = True

    def on_body(self, body: bytes) -> None:
        room = self.limit - self.size
        self.size += len(body)
        if room > 0:
            self.answer.body += body[:room]
        if self.size > self.limit:
            self.answer.truncated = True
            self.complete = True  # enough: the rest is not read

    def on_message_complete(self) -> None:
        if self.answer.status >= 200:
            self.complete = True
        else:  # an interim answer (100 Continue): the final one follows
            self.answer = Answer(0)


class Tee:
    """The client connection's transport during one sampled exchange: every write goes on to the real
    transport first, and a copy of the answer is parsed (`result` gets it, or None when the exchange
    ended otherwise). It puts the real transport back once the answer is complete, or as soon as it sees
    a write of another exchange."""

    __slots__ = ("client", "inner", "reader", "result", "t0")

    def __init__(self, client: Any, limit: int, head_only: bool) -> None:
        self.client = client
        self.inner = client.transport
        self.t0 = client.t0  # which exchange this is
        self.reader = _AnswerReader(limit, head_only)
        self.result: asyncio.Future[Answer | None] = client.loop.create_future()
        client.transport = self

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        if self.client.t0 != self.t0:
            return self._finish(None)
        try:
            self.reader.feed(data)
        except Exception:  # a bad answer (the client got it as it was): nothing to compare
            return self._finish(None)
        if self.reader.complete:
            self._finish(self.reader.answer)
        return None

    def _finish(self, answer: Answer | None) -> None:
        if self.client.transport is self:
            self.client.transport = self.inner
        if not self.result.done():
            self.result.set_result(answer)

    def abandon(self) -> None:
        self._finish(None)

    def __getattr__(self, name: str) -> Any:  # close, pause_reading, get_extra_info, ...: the real one's
        return getattr(self.inner, name)


class Job:
    """One copy to send: where, what (head and body), and the client's answer to compare with."""

    __slots__ = ("body", "body_size", "endpoint", "head", "head_only", "mirror", "second", "target",
                 "targets", "tee")

    def __init__(self, mirror: Mirror, endpoint_name: str, head: bytes, targets: tuple[Upstream, ...],
                 second: Upstream | None, tee: Tee | None, head_only: bool) -> None:
        self.mirror = mirror
        self.targets = targets  # the target pool's upstreams when the copy was made
        self.target = random.choice(targets)
        self.endpoint = endpoint_name
        self.head = head
        self.second = second
        self.tee = tee
        self.head_only = head_only
        self.body: list[bytes] = []
        self.body_size = 0


class Mirror:
    """One service's shadow traffic: sampling, the bounded queue, the workers, counters and the report.
    Lives as long as the service's name in the router, across snapshots (`configure` per snapshot)."""

    def __init__(self, service: str, stats: MirrorStats) -> None:
        self.service = service
        self.stats = stats
        self.spec = MirrorSpec()
        self.report = DiffReport()
        self._methods: frozenset[bytes] = frozenset()
        self._queue: deque[Job] = deque()
        self._workers: set[asyncio.Task[None]] = set()
        self._tokens = 0.0
        self._refilled = time.monotonic()
        self._failures = 0  # copies failed in a row
        self._pause = 0.0  # seconds of the last pause
        self._paused_until = 0.0
        self._paused_for: tuple[Upstream, ...] = ()  # the target's upstreams when the pause began

    def configure(self, spec: MirrorSpec) -> None:
        if spec != self.spec:
            self.spec = spec
            self._tokens = float(spec.max_per_second)
        self._methods = frozenset(m.encode() for m in spec.methods)

    @property
    def idle(self) -> bool:
        """No copy queued or in flight."""
        return not self._queue and not self._workers

    # ------------------------------------------------------------------ the client's side (hot path)
    def sample(self, client: Any, pool: Pool, upstream: Upstream, target_pool: Pool,
               req: RequestHead) -> Job | None:
        """Whether to copy this request (just routed to `pool`/`upstream`); queues the copy of a request
        without a body at once, and returns the job of one whose body is still to come (`add_body`, then
        `submit`). Never raises: a failure here is counted, and the client's exchange goes on."""
        try:
            return self._sample(client, pool, upstream, target_pool, req)
        except Exception:
            log.exception("mirror.sample_failed", service=self.service)
            self.stats.internal_errors += 1
            return None

    def _sample(self, client: Any, pool: Pool, upstream: Upstream, target_pool: Pool,
                req: RequestHead) -> Job | None:
        spec = self.spec
        if req.method not in self._methods or target_pool.name == pool.name or req.websocket:
            return None
        if spec.percent < 100.0 and random.random() * 100.0 >= spec.percent:
            return None
        self.stats.sampled += 1
        if not self._take_token():
            self.stats.dropped_rate += 1
            return None
        if self._paused_until and time.monotonic() < self._paused_until:
            if target_pool.eligible == self._paused_for:  # the upstreams that failed: still paused
                self.stats.dropped_target_down += 1
                return None
            self._paused_until = self._pause = 0.0  # other upstreams now: they get their chance
        has_body = req.chunked or req.content_length > 0
        if has_body and (req.content_length > spec.max_body or spec.max_body == 0):
            self.stats.dropped_body += 1
            return None
        head = client.pending[0]
        second = None
        if spec.compare and len(pool.eligible) > 1:
            second = random.choice([u for u in pool.eligible if u is not upstream])
        head_only = req.method == b"HEAD"
        tee = Tee(client, spec.max_body, head_only) if spec.compare else None
        job = Job(self, endpoint(req.method.decode("latin-1"), req.path), head[:-2] + MARK + b"\r\n",
                  target_pool.eligible, second, tee, head_only)
        if has_body:
            return job
        self.submit(job)
        return None

    def add_body(self, job: Job, piece: bytes) -> bool:
        """Part of a sampled request's body; False (the copy is dropped) once over `max_body`."""
        job.body_size += len(piece)
        if job.body_size > self.spec.max_body:
            self.stats.dropped_body += 1
            if job.tee is not None:
                job.tee.abandon()
            return False
        job.body.append(piece)
        return True

    def _take_token(self) -> bool:
        now = time.monotonic()
        rate = self.spec.max_per_second
        self._tokens = min(float(rate), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def submit(self, job: Job) -> None:
        """Queue a copy (dropped and counted when the queue is full); a worker takes it. Never raises."""
        if len(self._queue) >= MAX_QUEUE:
            self.stats.dropped_queue_full += 1
            if job.tee is not None:
                job.tee.abandon()
            return
        self._queue.append(job)
        if len(self._workers) < MAX_WORKERS:
            try:
                task = asyncio.get_running_loop().create_task(self._work())
            except Exception:  # no running loop: nothing can send it
                log.exception("mirror.submit_failed", service=self.service)
                self.stats.internal_errors += 1
                self._queue.remove(job)
                return
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    # ------------------------------------------------------------------ the workers
    async def _work(self) -> None:
        """Send queued copies until the queue is empty, then end (no task outlives the traffic)."""
        queue = self._queue
        while queue:
            job = queue.popleft()
            try:
                await self._run(job)
            except Exception:
                log.exception("mirror.copy_failed", service=self.service, endpoint=job.endpoint)
                self.stats.internal_errors += 1

    async def _run(self, job: Job) -> None:
        spec = self.spec
        deadline = time.monotonic() + spec.timeout
        copies = [self._fetch(job.target, job, spec)]
        if job.second is not None:
            copies.append(self._fetch(job.second, job, spec))
        answers = await asyncio.gather(*copies, return_exceptions=True)
        mirrored = answers[0]
        if isinstance(mirrored, BaseException) or mirrored is None:
            self.stats.failed += 1
            self._failed(job.targets)
            if job.tee is not None:
                job.tee.abandon()
            return
        self.stats.sent += 1
        self._failures = 0
        self._pause = 0.0
        if job.tee is None:
            return
        primary = await self._primary(job.tee, deadline)
        if primary is None:
            self.stats.unanswered += 1  # the client's exchange ended without a whole answer
            return
        second = answers[1] if len(answers) > 1 else None
        if isinstance(second, Answer):
            self.report.learn_noise(job.endpoint, differences(primary, second, spec.headers, spec.ignore))
        self.report.record(job.endpoint, differences(primary, mirrored, spec.headers, spec.ignore))
        self.stats.compared += 1

    def _failed(self, targets: tuple[Upstream, ...]) -> None:
        self._failures += 1
        if self._failures >= FAILURES_TO_PAUSE:
            self._paused_for = targets
            self._failures = 0
            self._pause = min(MAX_PAUSE, max(1.0, self._pause * 2))
            self._paused_until = time.monotonic() + self._pause
            log.warning("mirror.target_paused", service=self.service, seconds=self._pause,
                        reason=f"{FAILURES_TO_PAUSE} copies failed in a row")

    @staticmethod
    async def _primary(tee: Tee, deadline: float) -> Answer | None:
        try:
            return await asyncio.wait_for(asyncio.shield(tee.result), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            tee.abandon()
            return None

    @staticmethod
    async def _fetch(upstream: Upstream, job: Job, spec: MirrorSpec) -> Answer | None:
        """One copy on a connection of its own: the answer, or None (refused, reset, timed out, bad)."""
        writer = None
        try:
            async with asyncio.timeout(spec.timeout):
                reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
                writer.write(job.head)
                for piece in job.body:
                    writer.write(piece)
                answer = _AnswerReader(spec.max_body, job.head_only)
                while not answer.complete:
                    data = await reader.read(65536)
                    if not data:
                        answer.eof()
                        break
                    answer.feed(data)
                return answer.answer if answer.complete else None
        except (OSError, TimeoutError, ValueError):
            return None
        except Exception as exc:  # httptools' errors: a bad answer from the mirror target
            if type(exc).__module__.startswith("httptools"):
                return None
            raise
        finally:
            if writer is not None:
                writer.transport.abort()

    async def wait_idle(self) -> None:
        """Until no copy is queued or in flight (tests, and a clean stop)."""
        while self._workers:
            await asyncio.wait(list(self._workers))

    def describe(self) -> dict[str, Any]:
        compared, differing = self.report.totals()
        return {"service": self.service, "mirror": self.spec.to_dict(), "counts": self.stats.as_dict(),
                "queued": len(self._queue), "in_flight": len(self._workers),
                "diff_rate": round(differing / compared, 4) if compared else None,
                "endpoints": self.report.describe()}
