"""A/B: start the new version beside the old at weight 0, and let only requests matching `--match` reach it
(a routing rule named "ab", first, to the canary pool) for `--duration`. The canary's analysis judges them
against the stable pool meanwhile (error rate, p99: controller/analysis.py); a breach raises and the
deployer rolls back. Then the new version is promoted (one switch), or, with `--then canary`, handed on
to the canary's weight steps (the rule stays until the switch, so matched clients stay on it).
`turnout promote` ends the A/B phase early; `turnout abort` rolls back."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

from ..config.model import ServiceConfig
from ..config.reader import match_text
from ..errors import DeployFailed, UsageError
from ..operations import Operations
from .canary import Judge, shift, switch


class AB:
    name: ClassVar[str] = "ab"
    verifies: ClassVar[bool] = False  # judged before the switch, like the canary

    @staticmethod
    def check(config: ServiceConfig) -> None:
        if config.ab.match is None:
            raise UsageError("the ab strategy needs --match (e.g. --match 'header:X-Canary=always'), or "
                             f"match in [services.{config.name}.ab]")

    async def run(self, ops: Operations) -> None:
        options = ops.config.ab
        old, new = ops.old, ops.new
        self.check(ops.config)
        assert options.match is not None
        await ops.start(new, ops.config.replicas)
        await ops.pre_traffic()
        if old is None:  # a first deploy has nothing to compare with
            ops.route([(new, 100)])
            await ops.switched(weights={new.pool: 100})
            await ops.hook("post_switch")
            return
        routing = replace(ops.config, rules=(options.match, *ops.config.rules))
        ops.route([(old, 100), (new, 0)], routing)
        await ops.settled()
        ops.step("ab", pool=new.pool, match=match_text(options.match.to_dict()["match"]),
                 seconds=options.duration, then=options.then)
        judge = Judge(ops, stable=old, canary=new)
        outcome = await ops.wait_step(options.duration, judge.check, ops.config.canary.analysis_interval)
        await judge.check()  # a last look at the whole A/B window
        stable, canary = judge.windows()
        seen = canary.requests if canary is not None else 0
        ops.step("ab_judged", requests=seen, error_rate=round(canary.error_rate, 4) if canary else 0.0,
                 stable_requests=stable.requests if stable is not None else 0, ended=outcome)
        if options.then == "canary":
            await shift(ops, old, new, routing)
            return
        minimum = ops.config.canary.min_requests
        if seen < minimum and outcome != "promoted":
            raise DeployFailed(f"{new.version} saw {seen} matching request(s) in the A/B window, fewer than "
                               f"min_requests ({minimum}): not judged, so not promoted (check --match, or "
                               "`turnout promote` to end the window by hand)")
        await switch(ops, old, new)
