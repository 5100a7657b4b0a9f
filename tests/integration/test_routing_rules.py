"""Routing rules on real sockets: which pool each class of client lands on, the precedence between the pool
override, the rules, the sticky cookie and the weights, and rules changed live through the admin API."""

from __future__ import annotations

import pytest
from test_admin import serve_unix

from helpers.upstreams import RawClient, fetch, running_proxy, service
from proxy.router import Router
from proxy.rules import BUCKETS, bucket
from proxy.upstream import Health

SECRET = "s3cret-for-the-rules-test-0123"
INSIDERS = {"name": "insiders", "match": {"header": {"X-Canary": "always"}}, "to": "canary"}
BETA = {"name": "beta-10pct", "match": {"hash": {"cookie": "account_id", "percent": 10}}, "to": "canary"}


@pytest.fixture
def upstream_names() -> tuple[str, ...]:
    return ("a", "b")


def accounts(inside: bool, n: int) -> list[str]:
    """Account ids whose bucket for BETA is (or is not) in its first 10%."""
    found = []
    i = 0
    while len(found) < n:
        account = f"acct-{i}"
        if (bucket("beta-10pct", account) < BUCKETS // 10) == inside:
            found.append(account)
        i += 1
    return found


def stable_and_canary(a, b, **fields: object) -> Router:
    """v1 takes all weighted traffic; v2 (the canary) is at weight 0: only rules or the override reach it."""
    router = Router()
    router.set_service(service(pools={"v1": (100, [a.address]), "v2": (0, [b.address])},
                               labels={"stable": "v1", "canary": "v2"}, **fields))
    return router


async def test_three_client_classes_land_on_their_pools(ups):
    a, b = ups
    router = stable_and_canary(a, b, rules=[INSIDERS, BETA])
    async with running_proxy(router) as proxy:
        client = await RawClient.connect(proxy.port)  # one keep-alive connection: heads are remembered
        try:
            insiders = [await client.request(headers={"X-Canary": "always"}) for _ in range(5)]
            beta = [await client.request(headers={"Cookie": f"account_id={acct}"})
                    for acct in accounts(True, 5)]
            others = [await client.request(headers={"Cookie": f"account_id={acct}"})
                      for acct in accounts(False, 5)]
            neither = [await client.request() for _ in range(5)]
            again = [await client.request(headers={"Cookie": f"account_id={acct}"})
                     for acct in accounts(True, 5)]
        finally:
            await client.close()
    assert [r.body for r in insiders + beta + again] == [b"b"] * 15
    assert [r.body for r in others + neither] == [b"a"] * 10
    assert router.metrics.rules[("app", "insiders")].matches == 5
    assert router.metrics.rules[("app", "beta-10pct")].matches == 10
    counters = router.metrics.counters("app")  # rule-routed requests count for their pool (the analysis)
    assert (counters["v1"].requests, counters["v2"].requests) == (10, 15)


async def test_override_beats_rules_beats_sticky_cookie_beats_weights(ups):
    a, b = ups
    to_stable = {"name": "to-stable", "match": {"query": {"stable": "1"}}, "to": "stable"}
    router = stable_and_canary(a, b, rules=[INSIDERS, to_stable], sticky=True, override="header-secret",
                               override_secret=SECRET)
    async with running_proxy(router) as proxy:
        overridden = await fetch(proxy.port,
                                 headers={"X-Canary": "always", "X-Turnout-Pool": f"v1:{SECRET}"})
        ruled = await fetch(proxy.port, headers={"X-Canary": "always", "Cookie": "turnout-app=v1"})
        ruled_stable = await fetch(proxy.port, "GET", "/?stable=1",
                                   headers={"X-Turnout-Pool": f"v2:bad-{SECRET}"})
        sticky = await fetch(proxy.port, headers={"Cookie": "turnout-app=v1"})
        weighted = await fetch(proxy.port)
    assert overridden.body == b"a"  # the override wins over a matching rule
    assert ruled.body == b"b" and ruled.header("set-cookie") is None  # the rule wins over the cookie
    assert ruled_stable.body == b"a"  # a refused override is ignored; the rule decides
    assert sticky.body == b"a" and sticky.header("set-cookie") is None
    assert weighted.body == b"a" and weighted.header("set-cookie").startswith("turnout-app=v1")
    assert router.metrics.rules[("app", "insiders")].matches == 1
    assert router.metrics.pools[("app", "v1")].overridden.snapshot().requests == 1


async def test_a_rule_whose_pool_is_not_routable_falls_through(ups):
    a, b = ups
    router = stable_and_canary(a, b, rules=[INSIDERS])
    async with running_proxy(router) as proxy:
        before = await fetch(proxy.port, headers={"X-Canary": "always"})
        router.set_health(router.upstreams[b.address], Health.UNHEALTHY)
        after = await fetch(proxy.port, headers={"X-Canary": "always"})
    assert (before.body, after.body) == (b"b", b"a")
    assert router.metrics.rules[("app", "insiders")].matches == 1


async def test_rules_change_live_through_the_admin_api(ups, tmp_path):
    a, b = ups
    router = stable_and_canary(a, b)
    async with running_proxy(router) as proxy, serve_unix(router, tmp_path / "admin.sock") as admin:
        client = await RawClient.connect(proxy.port)
        try:
            before = await client.request(headers={"X-Canary": "always"})
            status, body = await admin.request("PUT", "/v1/services/app/rules", {"rules": [INSIDERS]})
            assert status == 200 and body["rules"][0]["pool"] == "v2"
            during = await client.request(headers={"X-Canary": "always"})  # same head, same connection
            status, listed = await admin.request("GET", "/v1/services/app/rules")
            assert status == 200 and listed["rules"] == [{**INSIDERS, "pool": "v2", "matches": 1}]
            status, _ = await admin.request("DELETE", "/v1/services/app/rules")
            assert status == 200
            after = await client.request(headers={"X-Canary": "always"})
        finally:
            await client.close()
        bad = {"rules": [{**INSIDERS, "match": {"header": {"X-Canary": "regex:("}}}]}
        status, error = await admin.request("PUT", "/v1/services/app/rules", bad)
        assert status == 400 and error["field"] == "rules[0].match.header.X-Canary"
        unknown = {"rules": [{**INSIDERS, "match": {"ip": {}}}]}
        status, error = await admin.request("PUT", "/v1/services/app/rules", unknown)
        assert status == 400 and error["field"] == "rules[0].match.ip"
        assert "unknown match key" in error["error"]
        status, _ = await admin.request("PUT", "/v1/services/nope/rules", {"rules": []})
        assert status == 404
        _, text = await admin.request("GET", "/metrics")
    assert (before.body, during.body, after.body) == (b"a", b"b", b"a")
    assert router.specs["app"].rules == ()  # the refused changes changed nothing
    assert 'turnout_rule_matches_total{service="app",rule="insiders"} 1' in text
