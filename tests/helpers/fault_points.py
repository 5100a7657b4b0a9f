"""Where a v1 -> v2 deploy can be cut: the steps each strategy journals, in order, under KILL_CONFIG.

The Docker battery (tests/docker/test_kill_at_every_step.py) kills `turnout serve` at each of them; the
unit test tests/unit/test_fault_points.py runs every strategy against the fake Docker client with the
same config and asserts it journals exactly these lists, so they cannot go stale when a strategy changes.
"""

from __future__ import annotations

import tomllib

from controller.config.model import ServiceConfig
from controller.config.reader import parse_config

# Fast everything: 2 healthy probes 200 ms apart, a 300 ms verification window, canary 50% for 300 ms, an
# A/B phase of 300 ms handed on to the canary (no traffic matches: the canary's steps still promote).
KILL_CONFIG = """
[services.web]
image = "turnout-testapp:v1"
port = 8080
replicas = 2
drain_timeout = "3s"
hold_timeout = "15s"
verify = "300ms"
[services.web.health]
path = "/healthz"
interval = "200ms"
timeout = "1s"
healthy = 2
unhealthy = 2
start_timeout = "5s"
[services.web.canary]
steps = [50, 100]
step_pause = "300ms"
analysis_interval = "100ms"
min_requests = 10
max_error_rate = 0.05
[services.web.ab]
match = { header = { X-Canary = "always" } }
duration = "300ms"
then = "canary"
"""

# What `turnout history web --json --steps` shows for a v1 -> v2 deploy, step by step. Blue-green's
# `old_stopped` comes after `completed`: the drained blue set is stopped once the deploy reported success.
JOURNALLED_STEPS: dict[str, list[str]] = {
    "bigbang": ["started", "holding", "drained", "old_stopped", "starting", "healthy", "switched",
                "verifying", "verified", "completed"],
    "bluegreen": ["started", "starting", "healthy", "switched", "drained", "verifying", "verified",
                  "completed", "old_stopped"],
    "rolling": ["started", "starting", "healthy", "drained", "batch_done", "starting", "healthy",
                "drained", "batch_done", "switched", "verifying", "verified", "completed"],
    "canary": ["started", "starting", "healthy", "weight", "switched", "drained", "old_removed",
               "completed"],
    "ab": ["started", "starting", "healthy", "ab", "ab_judged", "weight", "switched", "drained",
           "old_removed", "completed"],
}

# A SIGKILL loses everything held in memory (routing included), so killing just before a step's write
# leaves another world than killing just after the step before it only when a container or the saved
# service state changed in between: these steps record such a change (containers started healthy, old
# ones stopped or removed, the promoted release saved). The battery kills before them too.
CHANGE_BEFORE = frozenset({"healthy", "old_stopped", "batch_done", "old_removed", "completed"})


def promoted(strategy: str, steps: list[str]) -> bool:
    """Whether a deploy cut after `steps` had completed its promotion, so that recovery finishes it
    forward: it switched, and passed the post-switch verification when its strategy has one."""
    verifies = "verified" in JOURNALLED_STEPS[strategy]
    return "switched" in steps and (not verifies or "verified" in steps)


def kill_service_config() -> ServiceConfig:
    return parse_config(tomllib.loads(KILL_CONFIG)).services["web"]


def fault_points(strategy: str) -> list[tuple[str, bool]]:
    """(step#occurrence, before) for every journalled step of `strategy`: after each one, and before
    each one in CHANGE_BEFORE."""
    points: list[tuple[str, bool]] = []
    seen: dict[str, int] = {}
    for name in JOURNALLED_STEPS[strategy]:
        seen[name] = seen.get(name, 0) + 1
        point = f"{name}#{seen[name]}"
        if name in CHANGE_BEFORE:
            points.append((point, True))
        points.append((point, False))
    return points
