"""The `ab` strategy against the real Docker engine, with two classes of clients through the proxy the
whole time: those whose requests match `--match` (they alone reach the new version) and the others."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from test_deploys_live import assert_no_loss

from helpers.live import status, traffic
from helpers.upstreams import fetch

pytestmark = pytest.mark.docker

MATCH = {"X-Canary": "always"}


async def test_an_ab_deploy_failing_matched_requests_rolls_back_and_unmatched_clients_see_no_error(daemon):
    """v2 (turnout-testapp:fail500) answers 500: only the matched clients reach it, the canary's analysis
    sees its error rate against v1's and rolls back; the other clients never see an error."""
    async with traffic(daemon) as unmatched, traffic(daemon, concurrency=2, headers=MATCH) as matched:
        code, out = await daemon.acli("deploy", "web", "--image", "turnout-testapp:fail500",
                                      "--strategy", "ab", "--match", "header:X-Canary=always",
                                      "--duration", "60s")
    assert code == 1, out
    assert "rolled_back" in out and "error rate" in out, out
    assert_no_loss(unmatched[0])  # not one failed, truncated or 5xx answer for the unmatched clients
    assert {r.version for r in unmatched[0].records if r.version} == {"v1"}
    hit = matched[0]
    assert hit.failed_by_proxy == 0 and hit.truncated == 0, hit.summary()
    assert hit.app_errors > 0, hit.summary()  # the matched clients did reach v2 (and its 500s)
    info = status(daemon)
    assert info["stable"]["version"] == "v1" and list(info["pools"]) == [info["stable"]["pool"]]
    assert daemon.cli("rules", "list", "web").stdout.startswith("web: 0 rule(s)")  # the A/B rule left


async def test_an_ab_deploy_routes_only_matched_clients_then_promotes(daemon):
    """During the A/B phase a matched request reaches v2 and an unmatched one v1, every time; `turnout
    promote` ends the phase and v2 takes everything, with no request lost on either side."""
    async with traffic(daemon) as unmatched, traffic(daemon, concurrency=2, headers=MATCH) as matched:
        code, out = await daemon.acli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "ab",
                                      "--match", "header:X-Canary=always", "--duration", "5m", "--detach")
        assert code == 0, out
        await wait_until(lambda: ab_rule_routes(daemon))
        plain = [(await fetch(daemon.port, "GET", "/version")).body for _ in range(10)]
        marked = [(await fetch(daemon.port, "GET", "/version", headers=MATCH)).body for _ in range(10)]
        code, out = await daemon.acli("promote", "web")
        assert code == 0, out
        await wait_until(lambda: status(daemon)["deployment"] is None)
    assert (set(plain), set(marked)) == ({b"v1\n"}, {b"v2\n"})
    assert_no_loss(unmatched[0])
    assert_no_loss(matched[0])
    assert {r.version for r in matched[0].records if r.version} == {"v1", "v2"}
    assert status(daemon)["stable"]["version"] == "v2"
    history = daemon.cli("history", "web", "--steps", "--json")
    steps = [s["name"] for s in json.loads(history.stdout)["deployments"][0]["steps"]]
    assert steps[steps.index("ab"):steps.index("ab") + 3] == ["ab", "ab_judged", "switched"]


def ab_rule_routes(daemon, pool: str = "v2") -> bool:
    listed = daemon.cli("rules", "list", "web", "--json")
    rules = json.loads(listed.stdout)["rules"] if listed.returncode == 0 else []
    return any(rule["name"] == "ab" and rule["pool"] == pool for rule in rules)


async def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        assert time.monotonic() < deadline, f"not within {timeout}s: {predicate}"
        await asyncio.sleep(0.2)
