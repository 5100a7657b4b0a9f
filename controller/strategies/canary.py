"""Canary: start the new version beside the old, then move weight in steps (e.g. 5, 25, 50, 100),
pausing at each. During a pause the canary's error rate and p99 latency are compared with the stable
pool's, from the proxy's own per-pool counters; a breach raises and the deployer rolls back."""

from __future__ import annotations

from typing import ClassVar

from proxy.metrics import PoolCounters

from ..analysis import error_breach, latency_breach
from ..config.model import ServiceConfig
from ..errors import AnalysisFailed
from ..operations import Operations
from ..release import Release


class Canary:
    name: ClassVar[str] = "canary"
    verifies: ClassVar[bool] = False  # its analysis runs before the switch, none after

    async def run(self, ops: Operations) -> None:
        old, new = ops.old, ops.new
        await ops.start(new, ops.config.replicas)
        await ops.pre_traffic()
        if old is None:
            ops.route([(new, 100)])
            await ops.switched(weights={new.pool: 100})
            await ops.hook("post_switch")
            return
        await shift(ops, old, new)


async def shift(ops: Operations, old: Release, new: Release, routing: ServiceConfig | None = None) -> None:
    """Move the weight from `old` to the running, healthy `new` in the canary's steps, judging each, then
    switch, drain and remove the old set. `routing`: the routing settings of the steps (the `ab`
    strategy keeps its rule while it hands on); the final switch uses the service's own."""
    options = ops.config.canary
    # For followers (the dashboard's step list): the weights to come; not a step of the journal.
    ops.events.emit("plan", steps=list(options.steps), step_pause=options.step_pause)
    for weight in options.steps:
        if weight >= 100:
            break
        ops.route([(old, 100 - weight), (new, weight)], routing)
        await ops.settled()  # every proxy routes by this weight before the step's window opens
        ops.step("weight", weights={old.pool: 100 - weight, new.pool: weight})
        judge = Judge(ops, stable=old, canary=new)
        outcome = await ops.wait_step(options.step_pause, judge.check, options.analysis_interval)
        await judge.check()  # a last look at the full step window
        if outcome == "promoted":
            ops.step("promoted", at_weight=weight)
            break
    await switch(ops, old, new)


async def switch(ops: Operations, old: Release, new: Release) -> None:
    """All traffic to `new` in one swap; then drain and remove the old set."""
    removed = ops.route([(new, 100)])
    await ops.switched(weights={new.pool: 100})
    await ops.hook("post_switch")
    await ops.drain(removed)
    await ops.remove(old.containers)
    old.containers = []  # gone: a rollback redeploys this version's image
    ops.step("old_removed", version=old.version)


class Judge:
    """Compares the canary with the stable pool over the current step's window (controller/analysis.py:
    the canary is judged against the stable's error rate and p99 over the same window)."""

    def __init__(self, ops: Operations, stable: Release, canary: Release) -> None:
        self.ops = ops
        self.stable, self.canary = stable.pool, canary.pool
        self.canary_release = canary
        self.options = ops.config.canary
        self.baseline = ops.proxy.counters(ops.config.name)
        self.diffs_baseline = ops.proxy.mirror_totals(ops.config.name)
        self.verdict = ""

    def windows(self) -> tuple[PoolCounters | None, PoolCounters | None]:
        """(stable, canary): what each pool answered since this judge began."""
        now = self.ops.proxy.counters(self.ops.config.name)
        return _window(now, self.baseline, self.stable), _window(now, self.baseline, self.canary)

    async def check(self) -> None:
        try:
            self.ops.check_health(self.canary_release)  # ejected by the health checks: not healthy
            self._check_counters()
        except AnalysisFailed as exc:
            self._tell("failing", reason=str(exc))
            raise

    def _check_counters(self) -> None:
        stable, canary = self.windows()
        breach = (error_breach(canary, stable, self.options) or latency_breach(canary, stable, self.options)
                  or self._diff_breach())
        if breach is not None:
            raise AnalysisFailed(f"canary {self.canary} {breach}")
        if canary is None or canary.requests < self.options.min_requests:
            self._tell("waiting", requests=canary.requests if canary else 0, needed=self.options.min_requests)
        else:
            self._tell("passing", requests=canary.requests, error_rate=round(canary.error_rate, 4),
                       max_error_rate=self.options.max_error_rate)

    def _diff_breach(self) -> str | None:
        """Shadow traffic (proxy/mirror.py) to the canary: the share of compared copies whose answers
        differed from the stable's, since this judge began, against `max_diff_rate`."""
        limit = self.options.max_diff_rate
        now = self.ops.proxy.mirror_totals(self.ops.config.name)
        if limit is None or now is None:
            return None
        compared, differing = now
        if self.diffs_baseline is not None:
            compared, differing = compared - self.diffs_baseline[0], differing - self.diffs_baseline[1]
        if compared < max(1, self.options.min_requests) or differing / compared <= limit:
            return None
        return (f"diff rate {differing / compared:.1%} of {compared} mirrored requests exceeds "
                f"max_diff_rate {limit:.1%} (see `turnout mirror report {self.ops.config.name}`)")

    def _tell(self, verdict: str, **figures: object) -> None:
        """An `analysis` event for followers (the dashboard, `turnout deploy`) when the verdict changes:
        a few per step, not one per check."""
        if verdict != self.verdict:
            self.verdict = verdict
            self.ops.events.emit("analysis", verdict=verdict, canary=self.canary, **figures)


def _window(now: dict[str, PoolCounters], before: dict[str, PoolCounters], pool: str) -> PoolCounters | None:
    if pool not in now:
        return None
    return now[pool] - before[pool] if pool in before else now[pool]
