"""The pool override (X-Turnout-Pool, turnout-pool cookie) on real sockets: off unless a service opts in,
never forwarded, and never counted in what the deploy analysis reads."""

from __future__ import annotations

import pytest

from helpers.upstreams import fetch, running_proxy, service, start_upstreams
from proxy.admin import describe_table
from proxy.router import Router

SECRET = "s3cret-for-the-preview-0123"


@pytest.fixture
async def ups():
    upstreams = await start_upstreams("a", "b")
    yield upstreams
    for u in upstreams:
        await u.close()


def blue_green(a, b, **fields: object) -> Router:
    """blue takes all traffic; green is at weight 0 (a blue-green preview, a kept-warm old set)."""
    router = Router()
    router.set_service(service(pools={"blue": (100, [a.address]), "green": (0, [b.address])}, **fields))
    return router


async def test_the_override_is_off_by_default_and_never_forwarded(ups):
    a, b = ups
    async with running_proxy(blue_green(a, b)) as proxy:
        by_header = await fetch(proxy.port, headers={"X-Turnout-Pool": "green"})
        by_cookie = await fetch(proxy.port, headers={"Cookie": "x=1; turnout-pool=green; y=2"})
        only_cookie = await fetch(proxy.port, headers={"Cookie": "turnout-pool=green"})
    assert [r.body for r in (by_header, by_cookie, only_cookie)] == [b"a", b"a", b"a"]
    assert not b.requests  # nobody reached the weight-0 pool
    heads = [r.head.lower() for r in a.requests]
    assert all(b"x-turnout-pool" not in h and b"turnout-pool=" not in h for h in heads), heads
    assert b"\r\ncookie: x=1; y=2\r\n" in heads[1]  # the other cookies go through, in order
    assert b"\r\ncookie:" not in heads[2]  # nothing else was in that line: it goes


async def test_header_secret_lets_only_the_secret_choose_the_pool(ups):
    a, b = ups
    router = blue_green(a, b, override="header-secret", override_secret=SECRET)
    async with running_proxy(router) as proxy:
        allowed = [await fetch(proxy.port, headers={"X-Turnout-Pool": f"green:{SECRET}"}),
                   await fetch(proxy.port, headers={"Cookie": f"turnout-pool=green:{SECRET}"})]
        refused = [await fetch(proxy.port, headers={"X-Turnout-Pool": value})
                   for value in ("green", "green:wrong-secret-0123456789", f"green:{SECRET}x", f":{SECRET}")]
    assert [r.body for r in allowed] == [b"b", b"b"]
    assert [r.body for r in refused] == [b"a"] * 4  # routed as if there were no override
    for upstream in (a, b):  # the secret never reaches an app
        assert SECRET.encode() not in upstream.raw
        assert all(b"x-turnout-pool" not in r.head.lower() for r in upstream.requests)
    shown = describe_table(router)["services"]["app"]["spec"]  # nor `turnout status --json`
    assert shown["override"] == "header-secret" and shown["override_secret"] == "(set)"


@pytest.mark.parametrize(("networks", "reaches"), [(["127.0.0.0/8"], b"b"), (["::1", "10.0.0.0/8"], b"a"),
                                                   (["127.0.0.1"], b"b")])
async def test_trusted_lets_only_clients_of_those_networks_choose(ups, networks, reaches):
    a, b = ups
    router = blue_green(a, b, override="trusted", override_networks=networks)
    async with running_proxy(router) as proxy:  # the test client connects from 127.0.0.1
        by_header = await fetch(proxy.port, headers={"X-Turnout-Pool": "green"})
        by_cookie = await fetch(proxy.port, headers={"Cookie": "turnout-pool=green"})
    assert (by_header.body, by_cookie.body) == (reaches, reaches)
    assert all(b"x-turnout-pool" not in r.head.lower() for r in (*a.requests, *b.requests))


async def test_override_routed_requests_and_501_stay_out_of_the_analysis_counters(ups):
    """Issue 18: 40 `FOO` requests (the app answers 501) sent with `X-Turnout-Pool: v2` rolled a canary
    back. Now the override's requests are counted apart, and 501/505 are not errors."""
    a, b = ups
    router = Router()
    router.set_service(service(pools={"v1": (50, [a.address]), "v2": (50, [b.address])},
                               override="header-secret", override_secret=SECRET))
    async with running_proxy(router) as proxy:
        for _ in range(40):
            forced = await fetch(proxy.port, "FOO", "/status/500", headers={"X-Turnout-Pool": f"v2:{SECRET}"})
            assert forced.status == 500 and forced.header("x-upstream") == "b"
        unknown = [await fetch(proxy.port, "FOO", "/status/501") for _ in range(20)]
        assert {r.status for r in unknown} == {501}
        failing = [await fetch(proxy.port, "GET", "/status/503") for _ in range(10)]
    counters = router.metrics.counters("app")
    assert sum(c.requests for c in counters.values()) == 30  # the 40 forced ones are not here
    assert sum(c.errors for c in counters.values()) == len(failing) == 10  # 503 counts, 501 does not
    assert router.metrics.pools[("app", "v2")].overridden.snapshot().classes == (0, 0, 0, 0, 40)
    text = router.metrics.render([])
    assert 'turnout_override_requests_total{service="app",pool="v2",code="5xx"} 40' in text
    requests_5xx = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("turnout_requests_total{") and 'code="5xx"' in line)
    assert requests_5xx == 30  # 501 is still a 5xx answer for Prometheus
