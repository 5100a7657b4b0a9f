"""The hot path on real sockets: proxying, keep-alive, swaps, drain, hold, sticky, retries, upgrades."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from helpers.upstreams import (
    RawClient,
    TestUpstream,
    dead_address,
    fetch,
    running_proxy,
    service,
    stalled_address,
    wait_for,
)
from proxy.router import Router
from proxy.upstream import Health


@pytest.fixture
def upstream_names() -> tuple[str, ...]:
    """`ups` (tests/integration/conftest.py) starts three here."""
    return ("a", "b", "c")


@pytest.fixture
async def clients():
    opened: list[RawClient] = []

    async def connect(port: int) -> RawClient:
        client = await RawClient.connect(port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()


def one_pool(up: TestUpstream, **fields: object) -> Router:
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}, **fields))
    return router


# ------------------------------------------------------------------------------------------ basics
async def test_get_and_post_are_proxied(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        r = await client.request("GET", "/")
        assert (r.status, r.body, r.header("x-upstream")) == (200, b"a", "a")
        assert r.header("via") == "1.1 turnout"
        r = await client.request("POST", "/echo", body=b"hello body")
        assert (r.status, r.body) == (200, b"hello body")
        r = await client.request("GET", "/chunked")
        assert r.body == b"hello chunked world" and r.header("transfer-encoding") == "chunked"
    first = a.requests[0].head
    assert first.startswith(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in first and b"X-Request-Id: " in first
    stats = proxy.router.metrics.pools[("app", "blue")]
    assert stats.by_class[2] == 3 and stats.inflight == 0


async def test_keep_alive_reuses_upstream_connections(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        for _ in range(20):
            assert (await client.request("GET", "/")).status == 200
        other = await clients(proxy.port)
        assert (await other.request("GET", "/")).status == 200
    assert a.connections == 1
    assert len(a.requests) == 21


async def test_pipelined_requests_are_answered_in_order(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        await client.send(b"GET /slow?s=0.1 HTTP/1.1\r\nHost: app.test\r\n\r\n"
                          b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nfirst"
                          b"GET /status/404 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        answers = [await client.read_response() for _ in range(3)]
    assert [r.status for r in answers] == [200, 200, 404]
    assert [r.body for r in answers] == [b"a", b"first", b"status body"]


async def test_upstream_closing_its_keep_alive_connection_is_survived(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        assert (await client.request("GET", "/close")).status == 200
        await wait_for(lambda: a.open_connections == 0)
        assert (await client.request("GET", "/")).body == b"a"
        assert (await client.request("GET", "/until-close")).body == b"all of it"
        assert (await client.request("GET", "/")).body == b"a"
    assert a.connections == 3


async def test_head_204_and_304_keep_the_connection_usable(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        r = await client.request("HEAD", "/big?n=100000")
        assert r.status == 200 and r.header("content-length") == "100000"
        assert (await client.request("GET", "/")).body == b"a"
        assert (await client.request("HEAD", "/chunked")).status == 200
        assert (await client.request("GET", "/")).body == b"a"
        assert (await client.request("GET", "/status/204")).status == 204
        assert (await client.request("GET", "/status/304")).status == 304
        r = await client.request("GET", "/echo", body=b"still in sync")
        assert r.body == b"still in sync"
    assert a.connections <= 2  # the HEAD answer's connection is reused when its framing is certain


async def test_hop_by_hop_headers_are_stripped_and_forwarded_for_replaced(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        r = await client.request("GET", "/headers", headers={
            "Connection": "keep-alive, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
            "TE": "trailers", "Proxy-Authorization": "Basic eA==", "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Host": "evil.test", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6",
            "X-Keep": "yes"})
        head = r.body.lower()
        for gone in (b"x-private", b"keep-alive", b"\r\nte:", b"proxy-authorization", b"6.6.6.6",
                     b"evil.test", b"https", b"\r\nforwarded:"):
            assert gone not in head, gone
        assert b"x-keep: yes" in head and b"x-forwarded-for: 127.0.0.1\r\n" in head
        assert b"x-forwarded-host: app.test" in head and b"via: 1.1 turnout" in head
        r = await client.request("GET", "/hop")
        assert r.header("x-kept") == "k"
        for gone in ("x-secret", "keep-alive", "proxy-authenticate", "connection"):
            assert r.header(gone) is None, gone


async def test_trusted_proxy_keeps_the_forwarded_chain(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a), trusted_proxies=("127.0.0.1",)) as proxy:
        client = await clients(proxy.port)
        r = await client.request("GET", "/headers", headers={"X-Forwarded-For": "6.6.6.6",
                                                             "X-Forwarded-Proto": "https"})
    assert b"X-Forwarded-For: 6.6.6.6, 127.0.0.1\r\n" in r.body
    assert b"X-Forwarded-Proto: https\r\n" in r.body


async def test_http10_client_gets_no_keep_alive_and_no_chunked(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        await client.send(b"GET /chunked HTTP/1.0\r\nHost: app.test\r\n\r\n")
        r = await client.read_response()
        assert r.body == b"hello chunked world" and r.header("transfer-encoding") is None
        assert await client.at_eof()
        keep = await clients(proxy.port)
        await keep.send(b"GET / HTTP/1.0\r\nHost: app.test\r\nConnection: keep-alive\r\n\r\n")
        r = await keep.read_response()
        assert r.body == b"a" and r.header("connection") == "keep-alive"
        await keep.send(b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n")
        assert (await keep.read_response()).body == b"a"
        assert await keep.at_eof()
    assert a.requests[0].head.startswith(b"GET /chunked HTTP/1.1\r\n")


# ------------------------------------------------------------------------------------------ routing
async def test_unknown_host_is_404_and_counted(ups, clients):
    a, b, _ = ups
    router = Router()
    router.set_service(service("one", pools={"p": (1, [a.address])}, hosts=["one.test"]))
    router.set_service(service("two", pools={"p": (1, [b.address])}, hosts=["two.test"]))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        r = await client.request("GET", "/", host="nowhere.test")
        assert r.status == 404 and r.header("x-turnout-error") == "no-route"
        assert (await client.request("GET", "/", host="TWO.test:8080")).body == b"b"
    assert router.metrics.unrouted[4] == 1


async def test_weight_flips_under_concurrent_traffic_lose_nothing(ups, clients):
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (100, [a.address]), "green": (0, [b.address])}))
    seen: dict[bytes, int] = {}
    failures: list[object] = []
    async with running_proxy(router) as proxy:
        done = asyncio.Event()

        async def flipper() -> None:
            blue = True
            while not done.is_set():
                blue = not blue
                router.set_weights("app", {"blue": 100 if blue else 0, "green": 0 if blue else 100})
                await asyncio.sleep(0.003)

        async def worker() -> None:
            client = await clients(proxy.port)
            for _ in range(100):
                try:
                    r = await client.request("GET", "/")
                except Exception as exc:  # collected, asserted below
                    failures.append(exc)
                    return
                if r.status != 200:
                    failures.append(r.status)
                seen[r.body] = seen.get(r.body, 0) + 1

        flip = asyncio.create_task(flipper())
        await asyncio.gather(*(worker() for _ in range(20)))
        done.set()
        await flip
    assert failures == []
    assert sum(seen.values()) == 2000
    assert seen.get(b"a", 0) > 0 and seen.get(b"b", 0) > 0


async def test_inflight_request_survives_a_swap_that_removes_its_upstream(ups, clients):
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        slow = asyncio.create_task(client.request("GET", "/slow?s=0.4"))
        await wait_for(lambda: router.upstreams[a.address].outstanding == 1)
        removed = router.set_service(service(pools={"green": (1, [b.address])}), drain_timeout=5)
        assert [u.address for u in removed] == [a.address]
        assert (await fetch(proxy.port)).body == b"b"
        results = await router.wait_drained(removed)
        r = await slow
    assert (r.status, r.body) == (200, b"a")
    assert (results[0].completed, results[0].aborted) == (1, 0)
    assert a.open_connections == 0  # released while draining: closed, not pooled


async def test_drain_deadline_answers_504_and_counts(ups, clients):
    """A request that may not go twice (a POST with a body) ends at the deadline in 504."""
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        slow = asyncio.create_task(client.request("POST", "/slow?s=3", body=b"order=1"))
        await wait_for(lambda: router.upstreams[a.address].outstanding == 1)
        removed = router.set_service(service(pools={"green": (1, [b.address])}), drain_timeout=0.1)
        results = await router.wait_drained(removed)
        r = await slow
        assert await client.at_eof()
    assert r.status == 504 and r.header("x-turnout-error") == "drain-deadline"
    assert results[0].aborted == 1 and router.metrics.drain_aborted == 1
    stats = router.metrics.pools[("app", "blue")]
    assert stats.proxy_errors == 1 and stats.by_class[5] == 1 and stats.inflight == 0


@pytest.mark.parametrize("next_pool", ["blue", "green"])
async def test_drain_deadline_sends_a_waiting_get_to_a_serving_upstream(ups, clients, next_pool):
    """A GET still waiting for its answer when its upstream's drain deadline passes goes once to a serving
    upstream (the pool of its version while it serves, as in a rolling step; else where new requests
    go) instead of failing: the client gets an answer, the drain counts it as replayed, not aborted."""
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        waiting = asyncio.create_task(client.request("GET", "/slow?s=1"))
        await wait_for(lambda: router.upstreams[a.address].outstanding == 1)
        removed = router.set_service(service(pools={next_pool: (1, [b.address])}), drain_timeout=0.1)
        results = await router.wait_drained(removed)
        assert (results[0].completed, results[0].aborted, results[0].replayed) == (0, 0, 1)
        r = await waiting
        assert (await client.request("GET", "/")).status == 200  # the client connection goes on
    assert (r.status, r.header("x-upstream")) == (200, "b"), r
    assert (router.metrics.drain_aborted, router.metrics.drain_replayed) == (0, 1)
    assert "turnout_drain_replayed_total 1" in router.metrics.render([])
    stats = router.metrics.pools[("app", next_pool)]
    assert stats.proxy_errors == 0 and stats.by_class[5] == 0 and stats.by_class[2] == 2
    assert all(s.inflight == 0 for s in router.metrics.pools.values())


async def test_drain_deadline_replays_within_retries_only(ups, clients):
    """retries = 0 turns the replay off: the waiting GET ends in 504 like any other."""
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with running_proxy(router, retries=0) as proxy:
        client = await clients(proxy.port)
        waiting = asyncio.create_task(client.request("GET", "/slow?s=3"))
        await wait_for(lambda: router.upstreams[a.address].outstanding == 1)
        removed = router.set_service(service(pools={"green": (1, [b.address])}), drain_timeout=0.1)
        results = await router.wait_drained(removed)
        r = await waiting
    assert r.status == 504 and r.header("x-turnout-error") == "drain-deadline"
    assert (results[0].aborted, results[0].replayed) == (1, 0)


async def test_a_retry_after_a_slow_connect_goes_by_the_routing_of_now(ups, clients):
    """A connect that waits out `connect_timeout` is retried by the table in place when it fails, not
    by the one the request was routed with: here that one's only upstream was swapped out meanwhile,
    and the retry reaches the new pool's."""
    _, b, _ = ups
    router = Router()
    with stalled_address() as stalled:
        router.set_service(service(pools={"blue": (1, [stalled])}))
        async with running_proxy(router, connect_timeout=0.5) as proxy:
            client = await clients(proxy.port)
            waiting = asyncio.create_task(client.request("GET", "/"))
            await wait_for(lambda: router.upstreams[stalled].outstanding == 1)
            router.set_service(service(pools={"green": (1, [b.address])}), drain_timeout=5)
            r = await waiting
    assert (r.status, r.header("x-upstream")) == (200, "b"), r


async def test_drain_cuts_a_streaming_answer_and_closes_the_client(ups, clients):
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        await client.send(b"GET /big?n=50000000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")  # then stop reading: the answer stalls
        assert head.startswith(b"HTTP/1.1 200")
        removed = router.set_service(service(pools={"green": (1, [b.address])}), drain_timeout=0.1)
        results = await router.wait_drained(removed)
        assert results[0].aborted == 1
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(client.reader.read(1 << 20), 5):
                pass  # reaches EOF well before 50 MB
    assert a.open_connections == 0 or await _eventually_closed(a)


async def _eventually_closed(up: TestUpstream) -> bool:
    await wait_for(lambda: up.open_connections == 0)
    return True


async def test_hold_until_a_pool_appears(ups, clients):
    a = ups[0]
    router = Router()
    router.set_service(service(pools={"blue": (0, [a.address])}, hold_timeout=5))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        held = asyncio.create_task(client.request("GET", "/"))
        await asyncio.sleep(0.05)  # give it time to be (wrongly) answered
        assert not held.done()
        router.set_weights("app", {"blue": 1})
        r = await held
    assert (r.status, r.body) == (200, b"a")


async def test_paused_service_holds_and_resumes(ups, clients):
    a = ups[0]
    router = one_pool(a, hold_timeout=5)
    router.set_state("app", "paused")
    async with running_proxy(router) as proxy:
        held = asyncio.create_task(fetch(proxy.port))
        await asyncio.sleep(0.05)
        assert not held.done() and a.requests == []
        router.set_state("app", "active")
        assert (await held).body == b"a"


async def test_hold_timeout_answers_503_with_retry_after(ups, clients):
    a = ups[0]
    router = Router()
    router.set_service(service(pools={"blue": (0, [a.address])}, hold_timeout=0.2))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        r = await client.request("GET", "/")
        waited = loop.time() - started
        assert r.status == 503 and r.header("x-turnout-error") == "hold-timeout"
        assert r.header("retry-after") == "1"
        assert 0.15 < waited < 2
        router.set_weights("app", {"blue": 1})
        assert (await client.request("GET", "/")).body == b"a"  # same connection still usable
    assert router.metrics.unrouted[5] == 1
    assert router.metrics.hold_timeouts == {"app": 1} and router.metrics.failed("app") == 1  # its service's


async def test_stopped_service_answers_maintenance(ups, clients):
    a = ups[0]
    router = one_pool(a)
    router.set_state("app", "stopped")
    async with running_proxy(router) as proxy:
        r = await fetch(proxy.port)
    assert r.status == 503 and r.header("x-turnout-error") == "maintenance"
    assert b"maintenance" in r.body and r.header("retry-after")
    assert a.requests == []


async def test_sticky_cookie_keeps_a_client_on_its_pool(ups, clients):
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (100, [a.address]), "green": (0, [b.address])}, sticky=True))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        first = await client.request("GET", "/")
        assert first.body == b"a"
        cookie = first.header("set-cookie")
        assert cookie is not None and cookie.startswith("turnout-app=blue;")
        router.set_weights("app", {"blue": 50, "green": 50})
        sticky = [await client.request("GET", "/", headers={"Cookie": "x=1; turnout-app=blue"})
                  for _ in range(30)]
        assert {r.body for r in sticky} == {b"a"}
        assert all(r.header("set-cookie") is None for r in sticky)
        fresh = {(await client.request("GET", "/")).body for _ in range(40)}
    assert fresh == {b"a", b"b"}


async def test_override_header_and_cookie_force_a_weight_zero_pool(ups, clients):
    a, b, _ = ups
    router = Router()  # the override is off by default: this service lets clients on loopback use it
    router.set_service(service(pools={"blue": (100, [a.address]), "green": (0, [b.address])},
                               override="trusted", override_networks=["127.0.0.1"]))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        assert (await client.request("GET", "/", headers={"X-Turnout-Pool": "green"})).body == b"b"
        assert (await client.request("GET", "/", headers={"Cookie": "turnout-pool=green"})).body == b"b"
        assert {(await client.request("GET", "/")).body for _ in range(10)} == {b"a"}


# ------------------------------------------------------------------------------------------ failures
async def test_connect_failure_is_retried_for_get_but_not_post(ups, clients):
    a = ups[0]
    dead = dead_address()
    router = Router()
    router.set_service(service(pools={"blue": (1, [dead, a.address])}))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        posts = []
        for _ in range(2):  # round robin: one of two POSTs lands on the dead upstream
            posts.append(await client.request("POST", "/echo", body=b"once"))
            if posts[-1].status == 502:
                break
            client = await clients(proxy.port)
        assert posts[-1].status == 502 and posts[-1].header("x-turnout-error") == "upstream-connect"
        client = await clients(proxy.port)
        gets = [await client.request("GET", "/") for _ in range(4)]
    assert [r.status for r in gets] == [200] * 4
    assert sum(1 for r in a.requests if r.method == "POST") == len(posts) - 1


async def test_a_connect_failure_is_retried_on_another_host_first(ups, clients):
    """A host that refused one connection likely refuses all (its engine or machine is gone, as a lost
    Swarm node's): the retry goes to an upstream on another host, not to the failed one's neighbour."""
    a = ups[0]
    dead = [f"127.0.0.2:{dead_address().rpartition(':')[2]}" for _ in range(2)]  # one host, both down
    router = Router()
    router.set_service(service(pools={"blue": (1, [*dead, a.address])}))
    async with running_proxy(router) as proxy:
        statuses = [(await (await clients(proxy.port)).request("GET", "/")).status for _ in range(6)]
    assert statuses == [200] * 6  # before: a retry on the other dead port of 127.0.0.2 answered 502


async def test_three_connect_failures_eject_the_upstream(ups, clients):
    a = ups[0]
    dead = dead_address()
    router = Router()
    router.set_service(service(pools={"blue": (1, [dead, a.address])}))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        for _ in range(8):
            assert (await client.request("GET", "/")).status == 200
    assert router.upstreams[dead].health is Health.UNHEALTHY
    assert router.upstreams[dead].passive_failures == 3
    assert router.table.services["app"].pools[0].eligible == (router.upstreams[a.address],)


async def test_single_upstream_pool_retries_on_another_pool(ups, clients):
    a = ups[0]
    router = Router()
    router.set_service(service(pools={"blue": (100, [dead_address()]), "green": (1, [a.address])}))
    async with running_proxy(router) as proxy:
        r = await fetch(proxy.port)
    assert (r.status, r.body) == (200, b"a")


async def test_failure_mid_response_is_not_retried_and_closes_the_client(ups, clients):
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address, b.address])}))
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        with pytest.raises(asyncio.IncompleteReadError):
            await client.request("GET", "/truncate")
        died = await clients(proxy.port)
        r = await died.request("GET", "/die")
    assert r.status == 502 and r.header("x-turnout-error") == "upstream-closed"
    assert len(a.requests) + len(b.requests) == 2  # one each, neither retried


@pytest.mark.parametrize("path", ["/conflict", "/dupcl"])
async def test_conflicting_upstream_framing_is_502_and_not_reused(ups, clients, path):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        r = await client.request("GET", path)
        assert r.status == 502 and r.header("x-turnout-error") == "upstream-framing"
        client = await clients(proxy.port)
        assert (await client.request("GET", "/")).body == b"a"
    assert a.connections == 2


async def test_upstream_timeout_is_504(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a), upstream_timeout=0.2) as proxy:
        r = await fetch(proxy.port, "GET", "/slow?s=3")
    assert r.status == 504 and r.header("x-turnout-error") == "upstream-timeout"
    assert proxy.router.metrics.pools[("app", "blue")].proxy_errors == 1


# ------------------------------------------------------------------------------------------ upgrades
async def test_websocket_is_tunnelled(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        await client.send(b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n"
                          b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n")
        r = await client.read_response()
        assert r.status == 101 and r.header("upgrade") == "websocket"
        for message in (b"\x81\x05hello", bytes(range(256)) * 10):
            await client.send(message)
            got = b""
            while len(got) < len(message):
                got += await asyncio.wait_for(client.reader.read(65536), 5)
            assert got == message
        assert a.requests[0].headers["upgrade"] == "websocket"
        assert router_inflight(proxy, a) == 1
        await client.close()
        await wait_for(lambda: router_inflight(proxy, a) == 0)
    assert proxy.router.metrics.pools[("app", "blue")].by_class[1] == 1


def router_inflight(proxy, up: TestUpstream) -> int:
    return proxy.router.upstreams[up.address].outstanding


async def test_h2c_upgrade_is_rejected_and_never_forwarded(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                          b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        r = await client.read_response()
        assert r.status == 400 and r.header("x-turnout-error") == "bad-request"
        assert await client.at_eof()
    assert a.bytes_received == 0


# ------------------------------------------------------------------------------------------ limits
async def test_limits_and_client_deadlines(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a), max_body_bytes=100, max_header_bytes=2048,
                             header_timeout=0.2, body_idle_timeout=0.2) as proxy:
        r = await fetch(proxy.port, "POST", "/echo", body=b"x" * 101)
        assert r.status == 413 and r.header("x-turnout-error") == "body-too-large"
        client = await clients(proxy.port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"64\r\n" + b"x" * 100 + b"\r\n1\r\nx\r\n0\r\n\r\n")
        assert (await client.read_response()).status == 413
        r = await fetch(proxy.port, "GET", "/", headers={"X-Big": "y" * 3000})
        assert r.status == 431
        slow = await clients(proxy.port)
        await slow.send(b"GET / HTTP/1.1\r\nHost: app")
        r = await slow.read_response()
        assert r.status == 408 and await slow.at_eof()
        stalled = await clients(proxy.port)
        await stalled.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\n\r\nabc")
        r = await stalled.read_response()
        assert r.status == 408 and await stalled.at_eof()
        ok = await fetch(proxy.port, "POST", "/echo", body=b"x" * 100)
        assert ok.body == b"x" * 100
    assert b"X-Big" not in a.raw


async def test_idle_keep_alive_connection_is_closed(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a), idle_timeout=0.2) as proxy:
        client = await clients(proxy.port)
        assert (await client.request("GET", "/")).status == 200
        assert await client.at_eof(timeout=3)


# ------------------------------------------------------------------------------------------ lifecycle
async def test_graceful_stop_finishes_inflight_and_closes_idle(ups, clients):
    a = ups[0]
    router = one_pool(a)
    async with running_proxy(router) as proxy:
        idle = await clients(proxy.port)
        assert (await idle.request("GET", "/")).status == 200
        busy = await clients(proxy.port)
        slow = asyncio.create_task(busy.request("GET", "/slow?s=0.3"))
        await wait_for(lambda: router.upstreams[a.address].outstanding == 1)
        aborted = await proxy.stop(5)
        r = await slow
        assert aborted == 0 and r.status == 200 and r.header("connection") == "close"
        assert await idle.at_eof()
    async with running_proxy(one_pool(a)) as proxy:
        client = await clients(proxy.port)
        slow = asyncio.create_task(client.request("GET", "/slow?s=3"))
        await wait_for(lambda: proxy.router.upstreams[a.address].outstanding == 1)
        assert await proxy.stop(0.1) == 1
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await slow


async def test_connection_limit(ups, clients):
    a = ups[0]
    async with running_proxy(one_pool(a), max_connections=2) as proxy:
        first, second = await clients(proxy.port), await clients(proxy.port)
        assert (await first.request("GET", "/")).status == 200
        third = await clients(proxy.port)
        r = await third.read_response()
        assert r.status == 503 and r.header("x-turnout-error") == "too-many-connections"
        assert (await second.request("GET", "/")).status == 200
        assert proxy.router.metrics.connections == 2


async def test_random_split_follows_weights(ups, clients):
    a, b, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (90, [a.address]), "green": (10, [b.address])}))
    random.seed(7)
    async with running_proxy(router) as proxy:
        client = await clients(proxy.port)
        bodies = [(await client.request("GET", "/")).body for _ in range(300)]
    assert 200 < bodies.count(b"a") < 295 and bodies.count(b"b") > 5
