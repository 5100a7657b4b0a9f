"""The toolbox every strategy deploys with: start and health-check containers, install pools,
drain, stop, wait a step, and record each step (journal + live events + log).

Strategies only decide the order; the rules that keep requests safe live here once:
a pool is installed only with healthy containers, and a container is stopped only after its
upstream left routing and drained.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from proxy.metrics import PoolCounters
from proxy.upstream import Upstream

from .analysis import error_breach
from .config.model import HealthCheck, ServiceConfig
from .docker_backend import Container, ContainerSpec, DockerBackend
from .errors import AnalysisFailed, DeployFailed, TurnoutError
from .events import EventLog
from .journal import Journal
from .proxy_control import ProxyControl
from .readiness import wait_healthy
from .release import Release
from .signals import Signals
from .testing import faults

READINESS_POLL = 0.05  # seconds between readiness probes of a new container: it serves sooner
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL; upstreams have drained by then
VERIFY_POLL = 0.1  # seconds between looks at the proxy's counters and health during verification

log = structlog.get_logger("turnout.controller")


class Operations:
    def __init__(self, *, backend: DockerBackend, proxy: ProxyControl, journal: Journal,
                 deployment_id: str, config: ServiceConfig, new: Release, old: Release | None,
                 events: EventLog, signals: Signals, extra_labels: dict[str, str] | None = None) -> None:
        self.backend = backend
        self.proxy = proxy
        self.journal = journal
        self.deployment_id = deployment_id
        self.config = config
        self.new = new
        self.old = old
        self.events = events
        self.signals = signals
        self.extra_labels = extra_labels or {}
        self.timings: dict[str, float] = {}  # phase -> seconds, reported at the end
        # Work that needs no client to wait for it (stopping a drained old set): run after success.
        self.after_success: list[Callable[[], Awaitable[None]]] = []
        # Once the deploy is ending (restoring the old release, promoting, its final status) a journal
        # write that fails must not stop the end: it is logged and kept here, and the result says so.
        self.ending = False
        self.journal_errors: list[str] = []
        self.log = log.bind(service=config.name, deployment_id=deployment_id, version=new.version)
        self.counters_at_start = proxy.counters(config.name)  # the old version's baseline starts here

    # ------------------------------------------------------------ recording
    def step(self, name: str, **detail: Any) -> None:
        fault = faults.ARMED  # test-only (controller/testing/faults.py); None unless a fault test armed it
        if fault is not None:
            fault.reached(name, self.new.version, before=True)
        self.record(f"step {name}", self.journal.step, self.deployment_id, name, **detail)
        self._stepped(name, fault, detail)

    async def switched(self, **detail: Any) -> None:
        """The `switched` step, right after a swap. Its journal write (one SQLite transaction with an
        fsync, ~0.3-0.5 ms) runs in a worker thread, so the requests the swap released are routed
        meanwhile instead of waiting behind the disk. It is written before this returns: what follows a
        switch (a drain, a stop, the verification) still follows its record, as recovery expects."""
        fault = faults.ARMED
        if fault is not None:
            fault.reached("switched", self.new.version, before=True)
        # One loop turn first: the released requests are routed before the thread starts and competes
        # for the GIL (bench/journal_stall.py: a 5 us stall instead of 0.12 ms, and 0.3 ms on the loop).
        await asyncio.sleep(0)
        await asyncio.to_thread(self.record, "step switched", self.journal.step, self.deployment_id,
                                "switched", **detail)
        self._stepped("switched", fault, detail)

    def _stepped(self, name: str, fault: faults.FaultPoint | None, detail: dict[str, Any]) -> None:
        if fault is not None:
            fault.reached(name, self.new.version, before=False)
        self.events.emit("step", step=name, **detail)
        self.log.info(f"deploy.{name}", **detail)

    def record(self, what: str, write: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Make one journal write; once `ending`, a failure is reported (False) rather than raised."""
        try:
            write(*args, **kwargs)
        except Exception as exc:
            if not self.ending:
                raise
            self.journal_errors.append(f"{what}: {exc}")
            self.log.error("deploy.journal_write_failed", write=what, error=str(exc))
            return False
        return True

    def add_time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = round(self.timings.get(phase, 0.0) + seconds, 3)

    # ------------------------------------------------------------ containers
    async def start(self, release: Release, count: int) -> list[Container]:
        """Start `count` containers of `release` and wait until each is healthy.

        All or nothing: if any fails, the ones started here are removed and DeployFailed says what
        was seen. Healthy containers are appended to `release.containers`."""
        self.signals.check()
        started_at = time.monotonic()
        self.step("starting", version=release.version, count=count, image=release.image)
        results = await asyncio.gather(*(self._start_one(release) for _ in range(count)),
                                       return_exceptions=True)
        containers = [r for r in results if isinstance(r, Container)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.remove(containers)
            first = failures[0]
            if not isinstance(first, TurnoutError):
                raise first
            raise DeployFailed(f"{release.version} did not become healthy: {first}") from first
        release.containers.extend(containers)
        self.add_time("start_and_health", time.monotonic() - started_at)
        self.step("healthy", version=release.version, containers=[c.short_id for c in containers],
                  addresses=[c.address for c in containers])
        return containers

    async def _start_one(self, release: Release) -> Container:
        config = self.config
        container = await self.backend.start(ContainerSpec(
            service=config.name, version=release.version, image=release.image, port=config.port,
            deployment_id=self.deployment_id, pool=release.pool, env=config.env, command=config.command,
            volumes=tuple(str(v) for v in config.volumes),  # one bind each: a source may be mounted twice
            extra_labels={**config.labels, **self.extra_labels},
            mem_limit=config.mem_limit, cpus=config.cpus, pids_limit=config.pids_limit or None,
            cap_drop=config.cap_drop, cap_add=config.cap_add, security_opt=config.security_opt,
        ))
        try:
            # Recorded before anything else: only containers the journal knows are routed or removed.
            self.journal.record_container(container.id, config.name, release.pool, self.deployment_id)
            await self._wait_healthy(container)
        except BaseException:
            await self.remove([container])
            raise
        return await self.backend.inspect(container.id)

    async def _wait_healthy(self, container: Container) -> None:
        health = self.config.health or HealthCheck()
        await wait_healthy(self.backend, container.id, container.address, path=health.path,
                           timeout=health.start_timeout, interval=min(health.interval, READINESS_POLL),
                           healthy_threshold=health.healthy, probe_timeout=health.timeout)

    async def restart(self, release: Release) -> None:
        """Start a release's stopped containers again (rollback of big-bang / blue-green)."""
        refreshed = []
        for container in release.containers:
            restarted = await self.backend.restart(container.id)
            await self._wait_healthy(restarted)
            refreshed.append(await self.backend.inspect(container.id))
        release.containers = refreshed

    async def stop(self, containers: Sequence[Container]) -> None:
        """Stop (but keep) containers whose upstreams already drained."""
        await asyncio.gather(*(self.backend.stop(c.id, timeout=STOP_TIMEOUT)
                               for c in containers))

    async def remove(self, containers: Sequence[Container]) -> None:
        """Stop and remove; tolerant of containers that are already gone."""
        async def one(container: Container) -> None:
            try:
                await self.backend.remove(container.id)
            except TurnoutError as exc:
                self.log.warning("deploy.remove_failed", container=container.short_id, error=str(exc))
        await asyncio.gather(*(one(c) for c in containers))

    # ------------------------------------------------------------ routing
    def route(self, weights: Sequence[tuple[Release, int]],
              config: ServiceConfig | None = None) -> list[Upstream]:
        """Install exactly these pools (release, weight) in one swap; returns upstreams now draining.
        `config`: routing settings other than the service's own (blue-green's preview override)."""
        pools = [r.as_pool(w) for r, w in weights]
        return self.proxy.install(config or self.config, pools, labels={"stable": self._stable_pool(weights)})

    @staticmethod
    def _stable_pool(weights: Sequence[tuple[Release, int]]) -> str:
        return max(weights, key=lambda rw: rw[1])[0].pool if weights else ""

    async def drain(self, removed: Sequence[Upstream]) -> None:
        if not removed:
            return
        started = time.monotonic()
        results = await self.proxy.wait_drained(removed)
        self.add_time("drain", time.monotonic() - started)
        aborted = sum(r.aborted for r in results)
        self.step("drained", upstreams=[r.address for r in results],
                  completed=sum(r.completed for r in results), aborted=aborted)

    async def wait_idle(self, release: Release, timeout: float) -> None:
        """Wait until nothing is in flight on a release still in the table (weight 0, kept warm)."""
        deadline = time.monotonic() + timeout
        while self.proxy.in_flight(release.addresses) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def retire(self, release: Release, containers: Sequence[Container],
                     keep_weights: Callable[[], Sequence[tuple[Release, int]]], *, remove: bool) -> None:
        """Take containers out of routing, drain them, then stop (and remove) them."""
        release.containers = [c for c in release.containers if c not in containers]
        removed = self.route(keep_weights())
        await self.drain(removed)
        await (self.remove(containers) if remove else self.stop(containers))

    async def wait_step(self, seconds: float | None,
                        check: Callable[[], Awaitable[None]] | None = None, interval: float = 1.0) -> str:
        return await self.signals.wait_step(seconds, check, interval)

    # ------------------------------------------------------------ verification
    def check_health(self, release: Release) -> None:
        """Raise AnalysisFailed when the proxy's health checks ejected any of the release's upstreams:
        it passed readiness, but is not consistently healthy."""
        ejected = self.proxy.ejected(release.addresses)
        if ejected:
            health = self.config.health or HealthCheck()
            raise AnalysisFailed(
                f"{release.version}: the proxy's health checks ejected {len(ejected)} of "
                f"{len(release.addresses)} upstream(s) ({', '.join(ejected)}): {health.path} failed "
                f"{health.unhealthy} time(s) in a row after it had passed readiness")

    def old_baseline(self) -> PoolCounters | None:
        """What the new version is judged against after a switch, when the old pool gets no traffic any
        more: the old pool's requests from this deploy's start until now (the switch), or, when that
        window holds fewer than `min_requests`, all it counted since the proxy started."""
        if self.old is None:
            return None
        now = self.proxy.counters(self.config.name).get(self.old.pool)
        before = self.counters_at_start.get(self.old.pool)
        if now is None or before is None:
            return now
        window = now - before
        return window if window.requests >= self.config.canary.min_requests else now

    async def verify(self, release: Release) -> None:
        """After a switch to `release` (big-bang, blue-green, rolling): watch it for `config.verify`
        seconds from the proxy's own view, with the canary analysis' thresholds — its error rate over the
        window (once it saw `min_requests`) against the old version's rate just before the switch
        (`old_baseline`, controller/analysis.py), and its upstreams' active health. A breach raises
        AnalysisFailed, and the deployer puts the old release back. 0 seconds: no verification."""
        seconds = self.config.verify
        if seconds <= 0 or not release.containers:
            return
        options = self.config.canary
        started = time.monotonic()
        self.step("verifying", version=release.version, seconds=seconds,
                  max_error_rate=options.max_error_rate, min_requests=options.min_requests)
        baseline = self.proxy.counters(self.config.name).get(release.pool)
        old = self.old_baseline()
        window = None
        while True:
            self.signals.check()
            self.check_health(release)
            now = self.proxy.counters(self.config.name).get(release.pool)
            window = now - baseline if now is not None and baseline is not None else now
            breach = error_breach(window, old, options)
            if breach is not None:
                raise AnalysisFailed(
                    f"{release.version} {breach}, in the {time.monotonic() - started:.1f}s after the switch")
            remaining = started + seconds - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(VERIFY_POLL, remaining))
        self.add_time("verify", time.monotonic() - started)
        self.step("verified", version=release.version, requests=window.requests if window else 0,
                  error_rate=round(window.error_rate, 4) if window else 0.0)
