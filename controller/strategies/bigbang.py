"""Big-bang (recreate): stop the old version, start the new one. The proxy holds requests in the gap,
so a restart that fits inside the hold timeout loses none. After the switch the new version is verified
(`Operations.verify`); a breach starts the old set again."""

from __future__ import annotations

import time
from typing import ClassVar

from ..operations import Operations


class BigBang:
    name: ClassVar[str] = "bigbang"
    verifies: ClassVar[bool] = True  # Operations.verify after the switch

    async def run(self, ops: Operations) -> None:
        gap_started = time.monotonic()
        if ops.old is not None:
            removed = ops.route([])  # no pool: requests are held, not refused
            ops.step("holding", reason="old version leaving")
            await ops.drain(removed)
            await ops.stop(ops.old.containers)
            ops.step("old_stopped", version=ops.old.version)
        await ops.start(ops.new, ops.config.replicas)
        ops.route([(ops.new, 100)])
        gap = time.monotonic() - gap_started
        ops.add_time("gap", gap)
        await ops.switched(weights={ops.new.pool: 100}, gap_seconds=round(gap, 3))
        if ops.old is not None:
            await ops.verify(ops.new)  # a breach restarts the (stopped) old set
