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
from dataclasses import replace
from typing import Any

import structlog

from proxy.metrics import PoolCounters
from proxy.upstream import Upstream

from .analysis import error_breach
from .apply.spec import spec_hash
from .config.model import HealthCheck, ServiceConfig
from .engine.base import Container, ContainerSpec, Engine
from .errors import AnalysisFailed, DeployFailed, TurnoutError
from .events import EventLog
from .fleet import ProxiesLagging
from .hooks import HookFailed, HookResult, preview_config, preview_secret, run_hook
from .journal import Journal
from .proxy_control import ProxyControl
from .readiness import wait_healthy
from .release import Release
from .signals import Signals
from .testing import faults

READINESS_POLL = 0.05  # seconds between readiness probes of a new container: it serves sooner
KILLED_EXIT_CODE = 137  # 128 + SIGKILL: what `docker stop` leaves when the grace ran out
VERIFY_POLL = 0.1  # seconds between looks at the proxy's counters and health during verification

log = structlog.get_logger("turnout.controller")


class Operations:
    def __init__(self, *, backend: Engine, proxy: ProxyControl, journal: Journal,
                 deployment_id: str, config: ServiceConfig, new: Release, old: Release | None,
                 events: EventLog, signals: Signals, extra_labels: dict[str, str] | None = None,
                 allow_host_hooks: bool = False, hooks: bool = True) -> None:
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
        self.notes: list[str] = []  # what a reader of the result should know (why the gap was long)
        self._failed_before = proxy.failed_requests(config.name)  # the proxy's count as the deploy began
        # Work that needs no client to wait for it (stopping a drained old set): run after success.
        self.after_success: list[Callable[[], Awaitable[None]]] = []
        # Once the deploy is ending (restoring the old release, promoting, its final status) a journal
        # write that fails must not stop the end: it is logged and kept here, and the result says so.
        self.ending = False
        self.journal_errors: list[str] = []
        self.log = log.bind(service=config.name, deployment_id=deployment_id, version=new.version)
        self.counters_at_start = proxy.counters(config.name)  # the old version's baseline starts here
        self._spec_hashes: dict[str, str] = {}  # image -> spec hash of this config with it
        self.allow_host_hooks = allow_host_hooks  # `run` hooks may run ([proxy] allow_host_hooks)
        self.hooks_enabled = hooks  # False for rollbacks: the service's hooks are its new version's
        self.preview_value: str | None = None  # X-Turnout-Pool value of a hook's preview route
        self.hook_results: list[HookResult] = []
        self.new_schema: tuple[int, int] | None = None  # schema versions the new image reads
        self.contract_started = False  # the contract hook began: a failure from here on freezes
        self.contracted = False  # ... and finished: the schema floor is this deploy's
        self.force_past_migration = False  # a rollback told to ignore the schema gate

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
        await self.settled()  # remote proxies: the switch is done when each one applied it
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

    def result(self) -> dict[str, Any]:
        """What the deploy's end reports beside its status: requests of this service the proxy failed
        itself while the deploy ran (502/503/504 it made, 503 hold-timeout included), and the notes."""
        return {"proxy_failed": self.proxy.failed_requests(self.config.name) - self._failed_before,
                "notes": list(self.notes)}

    # ------------------------------------------------------------ hooks
    async def hook(self, point: str) -> HookResult | None:
        """Run the service's hook at `point`, if it has one (controller/hooks.py), as two journalled
        steps. A failure with `on_failure = "abort"` raises HookFailed; with "warn" the deploy goes on."""
        hook = self.config.hooks.get(point) if self.hooks_enabled else None
        if hook is None:
            return None
        if point != "on_failure":
            self.signals.check()
        self.step("hook_started", point=point, kind=hook.kind, timeout=hook.timeout,
                  on_failure=hook.on_failure)
        result = await run_hook(self, point, hook)
        self.hook_results.append(result)
        self.add_time(f"hook_{point}", result.seconds)
        self.step("hook_finished", **result.describe(), on_failure=hook.on_failure)
        if not result.ok and hook.on_failure == "abort" and point != "on_failure":
            raise HookFailed(result)
        return result

    async def pre_traffic(self) -> None:
        """The `pre_traffic` hook, once the new set is healthy and before it gets traffic. An http hook
        reaches it through a preview route: the new pool at weight 0 beside what is routed now, with an
        override secret made for the hook."""
        hook = self.config.hooks.get("pre_traffic") if self.hooks_enabled else None
        if hook is None:
            return
        if hook.http is not None:
            secret = preview_secret()
            current = [p for p in self.proxy.pools(self.config.name).values() if p.name != self.new.pool]
            spec = self.proxy.router.specs.get(self.config.name)
            self.proxy.install(preview_config(self, secret), [*current, self.new.as_pool(0)],
                               labels=spec.labels if spec else None)
            self.preview_value = f"{self.new.pool}:{secret}"
        try:
            await self.hook("pre_traffic")
        finally:
            self.preview_value = None

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

    async def spec_hash(self, image: str) -> str:
        """The spec hash of this deploy's container definition with `image` as it is now (its ID)."""
        if image not in self._spec_hashes:
            self._spec_hashes[image] = spec_hash(self.config, await self.backend.image_id(image))
        return self._spec_hashes[image]

    async def _start_one(self, release: Release) -> Container:
        config = self.config
        container = await self.backend.start(ContainerSpec(
            service=config.name, version=release.version, image=release.image, port=config.port,
            deployment_id=self.deployment_id, pool=release.pool, env=config.env, command=config.command,
            volumes=tuple(str(v) for v in config.volumes),  # one bind each: a source may be mounted twice
            extra_labels={**config.labels, **self.extra_labels},
            mem_limit=config.mem_limit, cpus=config.cpus, pids_limit=config.pids_limit or None,
            cap_drop=config.cap_drop, cap_add=config.cap_add, security_opt=config.security_opt,
            spec_hash=await self.spec_hash(release.image),
            init=config.init, stop_timeout=config.stop_timeout,
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

    async def stop(self, containers: Sequence[Container]) -> list[Container]:
        """Stop (but keep) containers whose upstreams already drained: SIGTERM, then SIGKILL after the
        service's `stop_timeout`. Containers that had to be killed are recorded (`killed_after_grace`)
        with a note for the result: their app ignored SIGTERM, and the wait was the whole grace."""
        timeout = self.config.stop_timeout
        started = time.monotonic()
        stopped = await asyncio.gather(*(self.backend.stop(c.id, timeout=timeout) for c in containers))
        seconds = time.monotonic() - started
        self.add_time("stop", seconds)
        killed = [c for c in stopped if c.exit_code == KILLED_EXIT_CODE]
        if killed:
            versions = sorted({c.version for c in killed})
            self.step("killed_after_grace", containers=[c.short_id for c in killed], versions=versions,
                      stop_timeout=timeout, seconds=round(seconds, 3), exit_code=KILLED_EXIT_CODE,
                      hint="the app ignored SIGTERM (PID 1 without a handler?): handle SIGTERM, or set "
                           "init = true, or a shorter stop_timeout")
            self.notes.append(
                f"{len(killed)} container(s) of {', '.join(versions)} ignored SIGTERM and were killed after "
                f"the {timeout:g}s stop_timeout (exit {KILLED_EXIT_CODE}); stopping took {seconds:.1f}s")
        return list(stopped)

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
              config: ServiceConfig | None = None, hold_timeout: float | None = None) -> list[Upstream]:
        """Install exactly these pools (release, weight) in one swap; returns upstreams now draining.
        `config`: routing settings other than the service's own (blue-green's preview override);
        `hold_timeout`: how long a request held while this table is in place may wait (None: the
        service's own), e.g. for big-bang's gap."""
        pools = [r.as_pool(w) for r, w in weights]
        config = config or self.config
        if hold_timeout is not None:
            config = replace(config, hold_timeout=hold_timeout)
        return self.proxy.install(config, pools, labels=self._labels(weights))

    async def settled(self) -> None:
        """Until every remote proxy applied the last route (ProxiesLagging names one that did not in
        time); at once without remote proxies. Once the deploy is ending (the old release being put
        back) a lagging proxy does not stop that: it is named in the notes and the end goes on."""
        try:
            await self.proxy.settle()
        except ProxiesLagging as exc:
            if not self.ending:
                raise
            self._lagging(exc)

    def _lagging(self, exc: ProxiesLagging) -> None:
        self.log.error("deploy.proxies_lagging", error=str(exc))
        self.notes.append(f"while ending: {exc}")

    def _labels(self, weights: Sequence[tuple[Release, int]]) -> dict[str, str]:
        """Which pool is stable (the heaviest) and, while the new release is routed beside it, which is
        the canary: what routing rules' `to = "stable"` / `"canary"` name (proxy/service.py)."""
        stable = max(weights, key=lambda rw: rw[1])[0].pool if weights else ""
        labels = {"stable": stable}
        if any(release.pool == self.new.pool for release, _ in weights) and self.new.pool != stable:
            labels["canary"] = self.new.pool
        return labels

    async def drain(self, removed: Sequence[Upstream]) -> None:
        if not removed:
            return
        started = time.monotonic()
        try:
            results = await self.proxy.wait_drained(removed)
        except ProxiesLagging as exc:
            if not self.ending:
                raise
            self._lagging(exc)
            results = await self.proxy.router.wait_drained(removed)  # the local drain, at least
        self.add_time("drain", time.monotonic() - started)
        aborted = sum(r.aborted for r in results)
        self.step("drained", upstreams=[r.address for r in results],
                  completed=sum(r.completed for r in results), aborted=aborted,
                  replayed=sum(r.replayed for r in results))

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
