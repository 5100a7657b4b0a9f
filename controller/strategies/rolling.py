"""Rolling update: replace containers in batches bounded by max_surge (extra containers allowed) and
max_unavailable (containers that may be missing), like Kubernetes' RollingUpdate.

Each batch: start new ones and wait healthy, add them to the new pool, take as many old ones out of
routing, drain, stop. Pool weights follow container counts, so every container gets an equal share."""

from __future__ import annotations

from typing import ClassVar

from ..operations import Operations
from ..release import Release


class Rolling:
    name: ClassVar[str] = "rolling"
    verifies: ClassVar[bool] = True  # Operations.verify after the switch

    async def run(self, ops: Operations) -> None:
        options = ops.config.rolling
        old, new = ops.old, ops.new
        replicas = ops.config.replicas
        if old is None:
            await ops.start(new, replicas)
            await ops.pre_traffic()
            ops.route([(new, 100)])
            await ops.switched(weights={new.pool: 100})
            await ops.hook("post_switch")
            return

        def weights() -> list[tuple[Release, int]]:
            pools = [(new, len(new.containers)), (old, len(old.containers))]
            return [(r, n) for r, n in pools if n > 0]

        batch = max(options.max_surge, options.max_unavailable, 1)
        while len(new.containers) < replicas:
            count = min(batch, replicas - len(new.containers))
            # max_unavailable lets old ones go before their replacements are healthy
            # (if that empties routing, the proxy holds requests rather than refusing them).
            early = min(options.max_unavailable, len(old.containers), count)
            if early:
                await ops.retire(old, old.containers[:early], weights, remove=True)
            await ops.start(new, count)
            if len(new.containers) == count:  # the first batch: before any of it gets traffic
                await ops.pre_traffic()
            ops.route(weights())
            await ops.settled()
            late = min(count - early, len(old.containers))
            if late:
                await ops.retire(old, old.containers[:late], weights, remove=True)
            ops.step("batch_done", new=len(new.containers), old=len(old.containers),
                     weights={r.pool: w for r, w in weights()})
        if old.containers:  # more old than replicas (replicas was lowered)
            await ops.retire(old, list(old.containers), weights, remove=True)
        ops.route([(new, 100)])
        await ops.switched(weights={new.pool: 100})
        await ops.hook("post_switch")
        await ops.verify(new)  # a breach starts the old version again (its containers are gone)
