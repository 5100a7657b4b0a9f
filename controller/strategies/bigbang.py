"""Big-bang (recreate): stop the old version, start the new one. The proxy holds requests in the gap,
by default for as long as the gap can last (`gap_hold_timeout`), so a restart loses none. After the
switch the new version is verified (`Operations.verify`); a breach starts the old set again."""

from __future__ import annotations

import math
import time
from typing import ClassVar

from ..config.model import HealthCheck, ServiceConfig
from ..operations import KILLED_EXIT_CODE, Operations

GAP_MARGIN = 5.0  # seconds for the Docker calls around the gap's waits (stop, create, start, inspect)
MAX_HOLD = 3600.0  # the proxy's bound on any hold


def gap_hold_timeout(config: ServiceConfig, proxy_drain_timeout: float) -> float:
    """How long a request held in the gap may wait before the proxy answers 503 hold-timeout.

    A `hold_timeout` set on the service (config or `--hold-timeout`) is the user's word and is kept.
    Otherwise the gap's bound: the old set drains (the service's drain_timeout, else the proxy's), then
    stops (`stop_timeout`: SIGTERM, then SIGKILL; Docker counts whole seconds), then the new set starts
    and passes its health check (`health.start_timeout`), plus a margin for the Docker calls. The
    proxy-wide `[proxy] hold_timeout` stays the default of other holds (a paused service)."""
    if config.hold_timeout is not None:
        return config.hold_timeout
    drain = config.drain_timeout if config.drain_timeout is not None else proxy_drain_timeout
    start = (config.health or HealthCheck()).start_timeout
    return min(MAX_HOLD, drain + math.ceil(config.stop_timeout) + start + GAP_MARGIN)


class BigBang:
    name: ClassVar[str] = "bigbang"
    verifies: ClassVar[bool] = True  # Operations.verify after the switch

    async def run(self, ops: Operations) -> None:
        old, new = ops.old, ops.new
        gap_started = time.monotonic()
        parts: dict[str, float] = {}
        killed = 0
        if old is not None:
            hold = gap_hold_timeout(ops.config, ops.proxy.router.drain_timeout)
            removed = ops.route([], hold_timeout=hold)  # no pool: requests are held, not refused
            ops.step("holding", reason="old version leaving", hold_timeout=round(hold, 3))
            await ops.drain(removed)
            parts["drain"] = time.monotonic() - gap_started
            stopped = await ops.stop(old.containers)
            parts["stop"] = time.monotonic() - gap_started - parts["drain"]
            killed = sum(c.exit_code == KILLED_EXIT_CODE for c in stopped)
            ops.step("old_stopped", version=old.version, seconds=round(parts["stop"], 3), killed=killed)
        started = time.monotonic()
        await ops.start(new, ops.config.replicas)
        parts["start_and_health"] = time.monotonic() - started
        await ops.pre_traffic()  # (requests are still held)
        ops.route([(new, 100)])
        gap = time.monotonic() - gap_started
        ops.add_time("gap", gap)
        await ops.switched(weights={new.pool: 100}, gap_seconds=round(gap, 3),
                           gap_parts={k: round(v, 3) for k, v in parts.items()})
        await ops.hook("post_switch")
        if killed and old is not None:  # why the gap was long, in the deploy's result
            ops.notes.append(f"big-bang's gap lasted {gap:.1f}s (requests were held): {parts['stop']:.1f}s "
                             f"waiting for {old.version} to exit, {parts['start_and_health']:.1f}s starting "
                             f"{new.version} until healthy")
        if old is not None:
            await ops.verify(new)  # a breach restarts the (stopped) old set
