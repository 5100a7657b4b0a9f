"""Waiting until a freshly started container is ready to take traffic.

Docker has no "wait until healthy", so we poll: an HTTP probe against the published address, and every
few probes a look at the container itself, so a crashed container fails fast (with its exit code and log
tail) instead of timing out. On the deadline the error says what the last probe saw.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
import structlog

from controller.errors import ContainerFailed, ContainerNotFound, ReadinessTimeout

if TYPE_CHECKING:
    from controller.engine.base import Container

log = structlog.get_logger(__name__)

# The container's state is read on the first round and then every this many rounds (~1 s at 0.2 s).
STATE_CHECK_EVERY = 5
LOG_TAIL_LINES = 20
# The tail goes into error messages and the journal: a few lines of context, never a log dump.
LOG_TAIL_BYTES = 2048
TRUNCATED = "[truncated]"
_STOPPED_STATES = frozenset({"exited", "dead"})


class ContainerReader(Protocol):
    """The part of DockerBackend readiness needs (fakes implement just this)."""

    async def inspect(self, container_id: str) -> Container: ...

    async def logs_tail(self, container_id: str, lines: int = 20) -> str: ...


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str  # what was seen, for humans: "HTTP 200", "connection error: ...", "no answer within 1s"
    timed_out: bool = False


@dataclass(frozen=True)
class HttpProbe:
    """GET http://<address><path>; a 2xx or 3xx answer counts as ready (redirects are not followed)."""

    path: str = "/healthz"

    def url(self, address: str) -> str:
        return f"http://{address}/{self.path.lstrip('/')}"

    async def check(self, session: aiohttp.ClientSession, address: str, budget: float) -> ProbeResult:
        """One probe, given at most `budget` seconds."""
        try:
            async with session.get(
                self.url(address), allow_redirects=False, timeout=aiohttp.ClientTimeout(total=budget)
            ) as response:
                return ProbeResult(200 <= response.status < 400, f"HTTP {response.status}")
        except TimeoutError:
            return ProbeResult(False, f"no answer within {budget:.3g}s", timed_out=True)
        except aiohttp.ClientError as exc:
            return ProbeResult(False, f"connection error: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class ReadinessResult:
    container_id: str
    address: str
    elapsed: float  # seconds from the call until the last needed probe passed
    probes: int  # HTTP probes made, including failed ones


async def _state(backend: ContainerReader, container_id: str) -> Container:
    """The container as seen now; raises ContainerFailed if it stopped or vanished."""
    try:
        container = await backend.inspect(container_id)
    except ContainerNotFound:
        raise ContainerFailed(container_id, "removed", None, "(container is gone; no logs)") from None
    if container.state in _STOPPED_STATES:
        tail = await _log_tail(backend, container_id)
        raise ContainerFailed(container_id, container.state, container.exit_code, tail)
    return container


async def _log_tail(backend: ContainerReader, container_id: str) -> str:
    try:
        return cap_log_tail(await backend.logs_tail(container_id, LOG_TAIL_LINES))
    except ContainerNotFound:
        return "(container is gone; no logs)"


def cap_log_tail(text: str, lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The end of `text`: at most `lines` lines and `max_bytes` bytes of UTF-8, opened by a
    "[truncated]" line when anything was cut."""
    kept = text.splitlines()
    cut = len(kept) > lines
    tail = "\n".join(kept[-lines:])
    data = tail.encode()
    if len(data) > max_bytes:
        tail = data[-max_bytes:].decode("utf-8", errors="ignore")
        cut = True
    return f"{TRUNCATED}\n{tail}" if cut else tail


async def wait_healthy(
    backend: ContainerReader,
    container_id: str,
    address: str | None,
    path: str = "/healthz",
    # The deadline is ours (not asyncio.timeout) so the error can say what was seen before it.
    timeout: float = 30.0,
    interval: float = 0.2,
    healthy_threshold: int = 1,
    probe_timeout: float = 1.0,
) -> ReadinessResult:
    """Poll until `healthy_threshold` consecutive probes pass.

    `address` may be None when the caller saw no published port yet (e.g. the container is already
    exiting); it is then read from the container. Raises ContainerFailed as soon as the container is
    seen stopped, ReadinessTimeout when `timeout` seconds pass without enough passing probes.
    """
    if healthy_threshold < 1:
        raise ValueError(f"healthy_threshold must be >= 1, got {healthy_threshold}")
    probe = HttpProbe(path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + timeout
    probes = streak = rounds = 0
    last_seen = "nothing yet (no probe was made)"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while loop.time() < deadline:
            if address is None or rounds % STATE_CHECK_EVERY == 0:
                container = await _state(backend, container_id)
                address = address or container.address
            rounds += 1
            if address is None:
                last_seen = "no published port on 127.0.0.1"
            else:
                budget = min(probe_timeout, deadline - loop.time())
                result = await probe.check(session, address, budget)
                probes += 1
                # A probe cut short by the deadline says little; keep the answer seen before it.
                if not (budget < probe_timeout and result.timed_out and probes > 1):
                    last_seen = result.detail
                streak = streak + 1 if result.ok else 0
                if streak >= healthy_threshold:
                    elapsed = loop.time() - started
                    log.info(
                        "readiness.passed",
                        container_id=container_id[:12],
                        address=address,
                        elapsed=round(elapsed, 3),
                        probes=probes,
                    )
                    return ReadinessResult(container_id, address, elapsed, probes)
            await asyncio.sleep(max(0.0, min(interval, deadline - loop.time())))

    # Out of time. A container that died in the meantime is the better explanation, so check first.
    container = await _state(backend, container_id)
    raise ReadinessTimeout(
        container_id,
        probe.url(address) if address else f"(no address){probe.path}",
        timeout,
        probes,
        last_seen,
        container.state,
        await _log_tail(backend, container_id),
    )
