"""Shadow traffic on real sockets (proxy/mirror.py): copies reach the other pool marked, the client's
answers are untouched, a dead or silent target changes nothing for clients, POST is not copied unless
listed, and the report names the differing field with the stable pool's noise left out."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from helpers import loopback
from helpers.upstreams import RawClient, fetch, running_proxy, service
from proxy.mirror import FAILURES_TO_PAUSE, MAX_QUEUE, MAX_WORKERS
from proxy.router import Router


@pytest.fixture
def upstream_names() -> tuple[str, ...]:
    return ("a1", "a2", "b")


def mirrored(stable: list[str], canary: list[str], **mirror: object) -> Router:
    """v1 (stable) takes every request; v2 (the canary) is at weight 0 and gets copies only."""
    router = Router()
    router.set_service(service(pools={"v1": (100, stable), "v2": (0, canary)},
                               labels={"stable": "v1", "canary": "v2"},
                               mirror={"to": "canary", "percent": 100, **mirror}))
    return router


async def requests_on_one_connection(port: int, n: int, method: str = "GET", path: str = "/json/7",
                                     **kwargs: object) -> list:
    client = await RawClient.connect(port)
    try:
        return [await client.request(method, path, **kwargs) for _ in range(n)]  # type: ignore[arg-type]
    finally:
        await client.close()


async def test_copies_reach_the_other_pool_marked_and_the_report_names_the_field(ups):
    a1, a2, b = ups
    router = mirrored([a1.address, a2.address], [b.address])
    async with running_proxy(router) as proxy:
        answers = await requests_on_one_connection(proxy.port, 20)
        await router.mirrors["app"].wait_idle()
    assert [r.status for r in answers] == [200] * 20
    assert {r.header("x-upstream") for r in answers} <= {"a1", "a2"}  # the clients' answers: the stable's
    assert all(b'"version": "a"' in r.body for r in answers)
    assert len(b.requests) == 20  # every copy reached the canary, marked, with the client's head
    assert all(r.headers["x-turnout-mirror"] == "1" and r.target == "/json/7" for r in b.requests)
    stable_copies = [r for r in a1.requests + a2.requests if "x-turnout-mirror" in r.headers]
    assert len(stable_copies) == 20  # the second stable upstream answered each too: that is the noise
    assert all("x-turnout-mirror" not in r.headers for r in a1.requests + a2.requests
               if r not in stable_copies)  # what served the clients never saw the mark
    report = router.mirrors["app"].describe()
    assert report["counts"]["sent"] == report["counts"]["compared"] == 20
    [items] = report["endpoints"]
    assert items["endpoint"] == "GET /json/{id}"
    assert items["compared"] == items["differing"] == 20
    assert [f["field"] for f in items["fields"]] == ["$.version"]
    assert items["fields"][0]["primary"] == '"a"' and items["fields"][0]["mirror"] == '"b"'
    assert items["noise"] == ["$.token"]  # random per answer: learned from the two stable upstreams
    assert report["diff_rate"] == 1.0


async def test_post_is_never_copied_unless_listed(ups):
    a1, _, b = ups
    router = mirrored([a1.address], [b.address])
    async with running_proxy(router) as proxy:
        posted = await fetch(proxy.port, "POST", "/echo", body=b"order=1")
        heads = await fetch(proxy.port, "HEAD", "/json/1")
        await router.mirrors["app"].wait_idle()
        assert posted.body == b"order=1" and heads.status == 200
        assert [(r.method, r.target) for r in b.requests] == [("HEAD", "/json/1")]
        router.set_service(service(pools={"v1": (100, [a1.address]), "v2": (0, [b.address])},
                                   labels={"stable": "v1", "canary": "v2"},
                                   mirror={"to": "canary", "percent": 100, "methods": ["POST"]}))
        posted = await fetch(proxy.port, "POST", "/echo", body=b"order=2")
        await router.mirrors["app"].wait_idle()
    assert posted.body == b"order=2"
    assert [(r.method, r.body) for r in b.requests[1:]] == [("POST", b"order=2")]  # with its body
    assert router.mirrors["app"].describe()["endpoints"][-1]["endpoint"] == "POST /echo"


@contextlib.asynccontextmanager
async def silent_server():
    """Accepts connections and reads them, never answering."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    server = await loopback.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        await server.wait_closed()  # every connection it accepted, also those whose handler never ran


@pytest.mark.parametrize("target", ["dead", "silent"])
async def test_a_dead_or_silent_target_changes_nothing_for_clients(ups, target):
    from helpers.upstreams import dead_address

    a1, _, _ = ups
    async with contextlib.AsyncExitStack() as stack:
        address = dead_address() if target == "dead" else await stack.enter_async_context(silent_server())
        router = mirrored([a1.address], [address], timeout=0.2, max_per_second=10_000)
        proxy = await stack.enter_async_context(running_proxy(router))
        n = MAX_QUEUE + MAX_WORKERS + 100  # more than the queue and the workers hold
        clients = await asyncio.gather(*(requests_on_one_connection(proxy.port, n // 10, path="/")
                                         for _ in range(10)))
        answers = [r for batch in clients for r in batch]
        await router.mirrors["app"].wait_idle()
    assert len(answers) == n // 10 * 10 and {r.status for r in answers} == {200}
    assert all(r.body == b"a1" and r.header("x-turnout-error") is None for r in answers)
    counts = router.mirrors["app"].describe()["counts"]
    assert counts["sent"] == counts["compared"] == 0
    dropped = counts["dropped_queue_full"] + counts["dropped_target_down"]
    assert counts["failed"] + dropped == counts["sampled"] == len(answers)
    if target == "dead":  # refused at once, again and again: the target is paused, copies are dropped
        assert counts["failed"] >= FAILURES_TO_PAUSE and counts["dropped_target_down"] > 0
    else:  # copies waited out their timeout; the rest were dropped: on a full queue while the first
        # copies waited, or once FAILURES_TO_PAUSE timeouts in a row paused the target (which comes first
        # depends on how fast the requests arrive: a slow machine sends fewer within one timeout)
        assert counts["failed"] >= 1 and dropped > 0
    assert router.metrics.counters("app")["v1"].errors == 0


async def test_copies_beyond_the_workers_and_the_queue_are_dropped_and_counted(ups):
    """While every worker waits on a silent target, MAX_QUEUE copies wait for them and each copy beyond
    is dropped at once and counted; clients see nothing of it. The copies' timeout (30 s) outlasts the
    requests, so none fails meanwhile and the target is never paused: the split is exact."""
    a1, _, _ = ups
    async with contextlib.AsyncExitStack() as stack:
        address = await stack.enter_async_context(silent_server())
        router = mirrored([a1.address], [address], timeout=30.0, max_per_second=10_000)
        proxy = await stack.enter_async_context(running_proxy(router))
        per_client = (MAX_QUEUE + MAX_WORKERS + 100) // 10
        clients = await asyncio.gather(*(requests_on_one_connection(proxy.port, per_client, path="/")
                                         for _ in range(10)))
        counts = router.mirrors["app"].describe()["counts"]
    await router.mirrors["app"].wait_idle()  # the target closed its connections: the held copies end
    answers = [r for batch in clients for r in batch]
    assert len(answers) == per_client * 10 and {r.status for r in answers} == {200}
    assert counts["sampled"] == len(answers)
    assert (counts["failed"], counts["dropped_target_down"], counts["sent"]) == (0, 0, 0)
    assert counts["dropped_queue_full"] == len(answers) - MAX_QUEUE - MAX_WORKERS


async def test_a_paused_target_gets_copies_again_once_its_pool_changes(ups):
    from helpers.upstreams import dead_address

    a1, _, b = ups
    router = mirrored([a1.address], [dead_address()])
    async with running_proxy(router) as proxy:
        await requests_on_one_connection(proxy.port, 3 * FAILURES_TO_PAUSE, path="/")
        await router.mirrors["app"].wait_idle()
        assert router.mirrors["app"].describe()["counts"]["dropped_target_down"] > 0
        router.set_service(service(pools={"v1": (100, [a1.address]), "v2": (0, [b.address])},
                                   labels={"stable": "v1", "canary": "v2"},
                                   mirror={"to": "canary", "percent": 100}))  # a new canary
        await requests_on_one_connection(proxy.port, 3, path="/")
        await router.mirrors["app"].wait_idle()
    assert len(b.requests) == 3


async def test_over_max_per_second_copies_are_dropped_and_counted(ups):
    a1, _, b = ups
    router = mirrored([a1.address], [b.address], max_per_second=5)
    async with running_proxy(router) as proxy:
        await requests_on_one_connection(proxy.port, 30, path="/")
        await router.mirrors["app"].wait_idle()
    counts = router.mirrors["app"].describe()["counts"]
    assert counts["sampled"] == 30
    assert 5 <= counts["sent"] < 30 and counts["sent"] + counts["dropped_rate"] == 30
    assert len(b.requests) == counts["sent"]


async def test_without_a_target_pool_nothing_is_copied_and_the_fast_lane_stays(ups):
    a1, _, b = ups
    router = Router()
    router.set_service(service(pools={"v1": (100, [a1.address])}, labels={"stable": "v1"},
                               mirror={"to": "canary", "percent": 100}))
    svc = router.table.services["app"]
    assert svc.mirror is None and svc.only is not None  # no canary now: routed as if without a mirror
    async with running_proxy(router) as proxy:
        await requests_on_one_connection(proxy.port, 5, path="/")
    assert router.mirrors["app"].describe()["counts"]["sampled"] == 0


async def test_the_report_and_counters_through_the_admin_api(ups, tmp_path):
    from test_admin import serve_unix

    a1, a2, b = ups
    router = mirrored([a1.address, a2.address], [b.address])
    async with running_proxy(router) as proxy, serve_unix(router, tmp_path / "admin.sock") as admin:
        await requests_on_one_connection(proxy.port, 3)
        await router.mirrors["app"].wait_idle()
        status, report = await admin.request("GET", "/v1/services/app/mirror")
        _, metrics = await admin.request("GET", "/metrics")
    assert status == 200 and report["active"] and report["target_pool"] == "v2"
    assert report["endpoints"][0]["fields"][0]["field"] == "$.version"
    assert 'turnout_mirror_requests_total{service="app",outcome="compared"} 3' in metrics
