"""Blue-green: start the full new set beside the old, (optionally preview it), switch all traffic in
one swap, drain the old set, verify the new one (`Operations.verify`: a breach switches back to the
still running old set), then stop the old set but keep it present (or warm) so rollback is fast.

The preview routes the new set at weight 0, reachable with the pool override only (proxy/override.py).
A service whose override is off gets one for the preview alone: `header-secret` with a secret made for
it, valid until the next swap (the switch, or the restore on abort). How to reach the preview goes to
the deploy's followers (`turnout deploy` prints it), not to the journal or the log."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import ClassVar

from ..config.model import ServiceConfig
from ..operations import Operations


class BlueGreen:
    name: ClassVar[str] = "bluegreen"
    verifies: ClassVar[bool] = True  # Operations.verify after the switch

    async def run(self, ops: Operations) -> None:
        options = ops.config.bluegreen
        old, new = ops.old, ops.new
        await ops.start(new, ops.config.replicas)
        await ops.pre_traffic()
        if old is not None and options.preview:
            config, value, who = preview_access(ops.config, new.pool)
            ops.route([(old, 100), (new, 0)], config)
            ops.step("preview", pool=new.pool, override=config.override, who=who,
                     hint=f"then `turnout promote {ops.config.name}` (or abort)")
            ops.events.emit("preview_access", header=f"X-Turnout-Pool: {value}",
                            cookie=f"turnout-pool={value}")
            await ops.wait_step(None)  # until promote (or abort)
        if old is None:
            ops.route([(new, 100)])
            await ops.switched(weights={new.pool: 100})
            await ops.hook("post_switch")
            return
        keep_warm = options.keep_old > 0
        removed = ops.route([(new, 100), (old, 0)] if keep_warm else [(new, 100)])
        await ops.switched(weights={new.pool: 100, old.pool: 0})
        await ops.hook("post_switch")
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


def preview_access(config: ServiceConfig, pool: str) -> tuple[ServiceConfig, str, str]:
    """The routing settings for a preview of `pool`, the override value that reaches it, and who may
    send that value. The service's own override when it has one (its secret is not repeated here)."""
    if config.override == "trusted":
        return config, pool, f"clients in {', '.join(config.override_networks)}"
    if config.override == "header-secret":
        return config, f"{pool}:<override_secret>", "anyone with the service's override_secret"
    secret = secrets.token_urlsafe(24)
    return (replace(config, override="header-secret", override_secret=secret), f"{pool}:{secret}",
            "anyone with this secret, made for this preview")
