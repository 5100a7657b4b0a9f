"""Canary: start the new version beside the old, then move weight in steps (e.g. 5, 25, 50, 100),
pausing at each. During a pause the canary's error rate and p99 latency are compared with the stable
pool's, from the proxy's own per-pool counters; a breach raises and the deployer rolls back."""

from __future__ import annotations

from typing import ClassVar

from proxy.metrics import PoolCounters

from ..analysis import error_breach, latency_breach
from ..errors import AnalysisFailed
from ..operations import Operations
from ..release import Release


class Canary:
    name: ClassVar[str] = "canary"
    verifies: ClassVar[bool] = False  # its analysis runs before the switch, none after

    async def run(self, ops: Operations) -> None:
        options = ops.config.canary
        old, new = ops.old, ops.new
        await ops.start(new, ops.config.replicas)
        if old is None:
            ops.route([(new, 100)])
            await ops.switched(weights={new.pool: 100})
            return
        for weight in options.steps:
            if weight >= 100:
                break
            ops.route([(old, 100 - weight), (new, weight)])
            ops.step("weight", weights={old.pool: 100 - weight, new.pool: weight})
            judge = Judge(ops, stable=old, canary=new)
            outcome = await ops.wait_step(options.step_pause, judge.check, options.analysis_interval)
            await judge.check()  # a last look at the full step window
            if outcome == "promoted":
                ops.step("promoted", at_weight=weight)
                break
        removed = ops.route([(new, 100)])
        await ops.switched(weights={new.pool: 100})
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

    async def check(self) -> None:
        self.ops.check_health(self.canary_release)  # ejected by the proxy's health checks: not healthy
        now = self.ops.proxy.counters(self.ops.config.name)
        stable = _window(now, self.baseline, self.stable)
        canary = _window(now, self.baseline, self.canary)
        breach = error_breach(canary, stable, self.options) or latency_breach(canary, stable, self.options)
        if breach is not None:
            raise AnalysisFailed(f"canary {self.canary} {breach}")


def _window(now: dict[str, PoolCounters], before: dict[str, PoolCounters], pool: str) -> PoolCounters | None:
    if pool not in now:
        return None
    return now[pool] - before[pool] if pool in before else now[pool]
