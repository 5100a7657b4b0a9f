"""Blue-green: start the full new set beside the old, (optionally preview it), switch all traffic in
one swap, drain the old set, verify the new one (`Operations.verify`: a breach switches back to the
still running old set), then stop the old set but keep it present (or warm) so rollback is fast."""

from __future__ import annotations

from typing import ClassVar

from ..operations import Operations


class BlueGreen:
    name: ClassVar[str] = "bluegreen"
    verifies: ClassVar[bool] = True  # Operations.verify after the switch

    async def run(self, ops: Operations) -> None:
        options = ops.config.bluegreen
        old, new = ops.old, ops.new
        await ops.start(new, ops.config.replicas)
        if old is not None and options.preview:
            ops.route([(old, 100), (new, 0)])
            ops.step("preview", pool=new.pool, header=f"X-Turnout-Pool: {new.pool}",
                     hint="test the new version with that header, then `turnout promote`")
            await ops.wait_step(None)  # until promote (or abort)
        if old is None:
            ops.route([(new, 100)])
            ops.step("switched", weights={new.pool: 100})
            return
        keep_warm = options.keep_old > 0
        removed = ops.route([(new, 100), (old, 0)] if keep_warm else [(new, 100)])
        ops.step("switched", weights={new.pool: 100, old.pool: 0})
        if keep_warm:
            # Blue stays routable at weight 0 (instant rollback); the deployer retires it later.
            await ops.wait_idle(old, ops.config.drain_timeout or ops.proxy.router.drain_timeout)
            await ops.verify(new)
            ops.step("old_kept_warm", version=old.version, seconds=options.keep_old)
            return
        await ops.drain(removed)
        await ops.verify(new)  # blue still runs: a breach switches straight back

        async def stop_old() -> None:  # out of routing and drained: stopping it need not delay the deploy
            await ops.stop(old.containers)
            ops.step("old_stopped", version=old.version, kept_for_rollback=True)

        ops.after_success.append(stop_old)
