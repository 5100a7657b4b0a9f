"""The admin API (proxy/admin.py) served by aiohttp over a real unix socket and over loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from helpers.upstreams import fetch, running_proxy, service, wait_for
from proxy.admin import CLIENT_HEADER, create_admin_app
from proxy.router import Router
from proxy.upstream import Health

CHANGE = {CLIENT_HEADER: "test"}


class Admin:
    """A client for one served admin app; `request` returns (status, parsed JSON or text)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def request(self, method: str, path: str, json_body: object = None, data: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      change_header: bool = True) -> tuple[int, object]:
        sent = dict(CHANGE if change_header else {}) | (headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
        async with self.session.request(method, self.base + path, data=data, headers=sent) as response:
            text = await response.text()
            if response.content_type == "application/json":
                return response.status, json.loads(text)
            return response.status, text


@contextlib.asynccontextmanager
async def serve_unix(router: Router, path: Path) -> AsyncIterator[Admin]:
    runner = web.AppRunner(create_admin_app(router), access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
            yield Admin(session, "http://admin")
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serve_tcp(router: Router, token: str) -> AsyncIterator[Admin]:
    runner = web.AppRunner(create_admin_app(router, token=token), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            yield Admin(session, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def spec_body(pools: list[dict], **fields: object) -> dict:
    return {"name": "app", "hosts": ["app.test"], "pools": pools, **fields}


A, B = "127.0.0.1:9001", "127.0.0.1:9002"


@pytest.fixture
def router() -> Router:
    router = Router()
    router.set_service(service(pools={"blue": (100, [A]), "green": (0, [B])}))
    return router


@pytest.fixture
async def admin(router: Router, tmp_path: Path) -> AsyncIterator[Admin]:
    async with serve_unix(router, tmp_path / "admin.sock") as client:
        yield client


# ------------------------------------------------------------------------------------------- reading
async def test_get_table_describes_services_pools_and_health(admin, router):
    status, body = await admin.request("GET", "/v1/table", change_header=False)
    assert status == 200
    assert body["generation"] == router.generation == 1
    app = body["services"]["app"]
    assert app["routable"] is True and app["spec"]["hosts"] == ["app.test"]
    assert [(p["name"], p["weight"], p["eligible"]) for p in app["pools"]] == [
        ("blue", 100, [A]), ("green", 0, [B])]
    assert app["pools"][0]["upstreams"] == [{"address": A, "health": "healthy", "in_flight": 0}]
    router.set_health(router.upstreams[B], Health.UNHEALTHY)
    _, body = await admin.request("GET", "/v1/table")
    green = body["services"]["app"]["pools"][1]
    assert green["eligible"] == [] and green["upstreams"][0]["health"] == "unhealthy"


# ------------------------------------------------------------------------------------------ changing
async def test_put_service_installs_a_new_table(admin, router):
    before = router.generation
    status, body = await admin.request("PUT", "/v1/services/app", spec_body(
        [{"name": "blue", "weight": 0, "upstreams": [A]},
         {"name": "green", "weight": 100, "upstreams": [B]}]))
    assert status == 200, body
    assert body == {"generation": before + 1, "removed": []}
    assert router.generation == before + 1
    weights = {p.name: p.weight for p in router.table.services["app"].pools}
    assert weights == {"blue": 0, "green": 100}


async def test_put_service_reports_removed_upstreams(admin, router):
    status, body = await admin.request("PUT", "/v1/services/app", spec_body(
        [{"name": "green", "weight": 1, "upstreams": [B]}]))
    assert status == 200
    assert body["removed"] == [A]
    assert set(router.upstreams) == {B}


async def test_put_takes_the_name_from_the_url_when_the_body_has_none(admin, router):
    body = spec_body([{"name": "v1", "weight": 1, "upstreams": ["127.0.0.1:9100"]}], hosts=["other.test"])
    del body["name"]
    status, _ = await admin.request("PUT", "/v1/services/other", body)
    assert status == 200
    assert set(router.table.services) == {"app", "other"}


@pytest.mark.parametrize(("body", "field"), [
    (spec_body([{"name": "blue", "weight": -1, "upstreams": [A]}]), "pools[0].weight"),
    (spec_body([{"name": "blue", "weight": True, "upstreams": [A]}]), "pools[0].weight"),
    (spec_body([{"name": "blue", "weight": 1, "upstreams": ["nohostport"]}]), "pools[0].upstreams[0]"),
    (spec_body([{"name": "blue", "weight": 1, "upstreams": [A, "127.0.0.1:0"]}]), "pools[0].upstreams[1]"),
    (spec_body([{"name": "blue", "weight": 1, "upstreams": [A], "colour": "x"}]), "pools[0].colour"),
    (spec_body([{"name": "blue", "weight": 1, "upstreams": [A]}], replicas=3), "replicas"),
    (spec_body([], name="other"), "name"),
    (spec_body("not a list"), "pools"),
    (spec_body([], state="sleeping"), "state"),
    (spec_body([], health={"healthy": 0}), "health.healthy"),
    ([1, 2], "service"),
])
async def test_invalid_put_is_400_naming_the_field_and_changes_nothing(admin, router, body, field):
    before = (router.generation, router.table, dict(router.specs))
    status, answer = await admin.request("PUT", "/v1/services/app", body)
    assert status == 400, answer
    assert answer["field"] == field
    assert answer["error"]
    assert (router.generation, router.table, dict(router.specs)) == before


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe"])
async def test_a_body_that_is_not_json_is_400(admin, router, raw):
    before = router.generation
    status, answer = await admin.request("PUT", "/v1/services/app", data=raw)
    assert status == 400
    assert answer["field"] == "body"
    assert router.generation == before


async def test_host_conflict_with_another_service_is_400(admin, router):
    before = router.generation
    status, answer = await admin.request("PUT", "/v1/services/dup", spec_body(
        [{"name": "x", "weight": 1, "upstreams": [A]}], name="dup"))
    assert (status, answer["field"]) == (400, "hosts")
    assert router.generation == before and "dup" not in router.specs


async def test_bad_drain_timeout_is_400_before_any_change(admin, router):
    before = router.generation
    status, answer = await admin.request("DELETE", "/v1/services/app?drain_timeout=soon")
    assert (status, answer["field"]) == (400, "drain_timeout")
    status, answer = await admin.request("DELETE", "/v1/services/app?drain_timeout=-1")
    assert (status, answer["field"]) == (400, "drain_timeout")
    assert router.generation == before and "app" in router.specs


async def test_patch_weights(admin, router):
    before = router.generation
    status, body = await admin.request("PATCH", "/v1/services/app/weights", {"weights": {"green": 25}})
    assert status == 200 and body["generation"] == before + 1
    assert {p.name: p.weight for p in router.table.services["app"].pools} == {"blue": 100, "green": 25}


@pytest.mark.parametrize(("body", "field"), [
    ({"weights": {"purple": 5}}, "weights.purple"),
    ({"weights": {"green": -5}}, "weights.green"),
    ({"weights": {"green": "5"}}, "weights.green"),
    ({"weights": {"blue": 1, "green": 1.5}}, "weights.green"),
    ({"weights": [1, 2]}, "weights"),
    ({}, "weights"),
    ([], "weights"),
])
async def test_invalid_patch_weights_is_400_and_changes_nothing(admin, router, body, field):
    before = (router.generation, router.table)
    status, answer = await admin.request("PATCH", "/v1/services/app/weights", body)
    assert (status, answer["field"]) == (400, field)
    assert (router.generation, router.table) == before


async def test_unknown_service_is_404(admin, router):
    for method, path, body in [("PATCH", "/v1/services/nope/weights", {"weights": {}}),
                               ("POST", "/v1/services/nope/pause", None),
                               ("DELETE", "/v1/services/nope", None),
                               ("GET", "/v1/services/nope/counters", None)]:
        status, answer = await admin.request(method, path, body)
        assert status == 404, (method, path)
        assert "nope" in answer["error"]
    assert router.generation == 1


@pytest.mark.parametrize(("action", "state", "routable"),
                         [("pause", "paused", False), ("stop", "stopped", False), ("resume", "active", True)])
async def test_pause_resume_stop_change_the_state(admin, router, action, state, routable):
    if action == "resume":
        router.set_state("app", "paused")
    status, body = await admin.request("POST", f"/v1/services/app/{action}")
    assert status == 200 and body["state"] == state
    assert router.specs["app"].state == state
    assert router.table.services["app"].state == state
    assert router.table.services["app"].routable is routable


async def test_pause_holds_and_resume_releases_traffic(ups, tmp_path):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with serve_unix(router, tmp_path / "admin.sock") as admin, running_proxy(router) as proxy:
        assert (await admin.request("POST", "/v1/services/app/pause"))[0] == 200
        held = asyncio.create_task(fetch(proxy.port))
        await wait_for(lambda: proxy.connections and all(c.busy for c in proxy.connections))
        await asyncio.sleep(0.05)
        assert not held.done() and a.requests == []
        assert (await admin.request("POST", "/v1/services/app/resume"))[0] == 200
        r = await asyncio.wait_for(held, 5)
        assert (r.status, r.body) == (200, b"a")


async def test_delete_removes_the_service(admin, router):
    status, body = await admin.request("DELETE", "/v1/services/app")
    assert status == 200
    assert sorted(body["removed"]) == [A, B]
    assert router.table.services == {} and router.specs == {}
    assert (await admin.request("GET", "/v1/table"))[1]["services"] == {}


# ------------------------------------------------------------------------------------------- drains
async def test_delete_wait_drain_answers_after_in_flight_requests_completed(ups, tmp_path):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with serve_unix(router, tmp_path / "admin.sock") as admin, running_proxy(router) as proxy:
        slow = asyncio.create_task(fetch(proxy.port, path="/slow?s=0.4"))
        await wait_for(lambda: router.upstreams[a.address].inflight)
        status, body = await admin.request("DELETE", "/v1/services/app?wait=drain&drain_timeout=5")
        # The admin answer came only after the slow request finished upstream.
        assert slow.done() or router.draining == {}
        response = await asyncio.wait_for(slow, 5)
    assert status == 200, body
    assert (response.status, response.body) == (200, b"a")
    [drained] = body["drained"]
    assert (drained["address"], drained["completed"], drained["aborted"]) == (a.address, 1, 0)
    assert 0.2 < drained["seconds"] < 5


async def test_wait_drain_counts_what_was_aborted_at_the_deadline(ups, tmp_path):
    a, b = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with serve_unix(router, tmp_path / "admin.sock") as admin, running_proxy(router) as proxy:
        # a POST with a body: never sent twice, so the deadline cuts it (a GET would go to b)
        slow = asyncio.create_task(fetch(proxy.port, "POST", "/slow?s=10", body=b"order=1"))
        await wait_for(lambda: router.upstreams[a.address].inflight)
        status, body = await admin.request("PUT", "/v1/services/app?wait=drain&drain_timeout=0.1", spec_body(
            [{"name": "green", "weight": 1, "upstreams": [b.address]}]))
        response = await asyncio.wait_for(slow, 5)
        status_drains, drains = await admin.request("GET", "/v1/drains")
    assert status == 200, body
    assert body["removed"] == [a.address]
    assert [(d["completed"], d["aborted"], d["replayed"]) for d in body["drained"]] == [(0, 1, 0)]
    assert response.status == 504 and response.header("x-turnout-error") == "drain-deadline"
    assert (status_drains, drains) == (200, {})
    assert router.metrics.drain_aborted == 1


async def test_without_wait_the_answer_does_not_wait_for_the_drain(ups, tmp_path):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with serve_unix(router, tmp_path / "admin.sock") as admin, running_proxy(router) as proxy:
        slow = asyncio.create_task(fetch(proxy.port, path="/slow?s=0.5"))
        await wait_for(lambda: router.upstreams[a.address].inflight)
        status, body = await admin.request("DELETE", "/v1/services/app")
        assert status == 200 and "drained" not in body
        assert not slow.done()
        _, drains = await admin.request("GET", "/v1/drains")
        assert drains == {a.address: {"in_flight": 1}}
        assert (await asyncio.wait_for(slow, 5)).status == 200


# ------------------------------------------------------------------------------------------- metrics
def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}} in:\n{text}")


async def test_metrics_is_prometheus_text_per_pool_after_traffic(ups, tmp_path):
    a, b = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address]), "green": (0, [b.address])}))
    async with serve_unix(router, tmp_path / "admin.sock") as admin, running_proxy(router) as proxy:
        for _ in range(3):
            assert (await fetch(proxy.port)).status == 200
        router.set_weights("app", {"blue": 0, "green": 1})
        failing = await fetch(proxy.port, path="/status/503")
        assert failing.status == 503 and failing.header("x-upstream") == "b"
        async with admin.session.get(admin.base + "/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            text = await response.text()
    # Every non-comment line is `name{labels} value` or `name value`.
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line == "" or line.startswith("# ") or sample.match(line), line
    assert _sample(text, "turnout_requests_total", service="app", pool="blue", code="2xx") == 3
    assert _sample(text, "turnout_requests_total", service="app", pool="green", code="5xx") == 1
    assert _sample(text, "turnout_requests_total", service="app", pool="green", code="2xx") == 0
    assert _sample(text, "turnout_proxy_errors_total", service="app", pool="green") == 0
    assert _sample(text, "turnout_request_duration_seconds_count", service="app", pool="blue") == 3
    labels = {"service": "app", "pool": "blue"}
    assert _sample(text, "turnout_request_duration_seconds_bucket", **labels, le="+Inf") == 3
    assert _sample(text, "turnout_requests_in_flight", service="app", pool="blue") == 0
    assert _sample(text, "turnout_upstream_healthy", service="app", pool="green", upstream=b.address) == 1
    assert "# TYPE turnout_request_duration_seconds histogram" in text


async def test_counters_are_json_even_for_latencies_past_the_last_bucket(admin, router):
    stats = router.metrics.pool("app", "blue")
    stats.observe(200, 0.001)
    stats.observe(200, 60.0)  # beyond the last bound (10 s): quantile is +inf
    async with admin.session.get(admin.base + "/v1/services/app/counters") as response:
        assert response.status == 200
        raw = await response.text()
    data = json.loads(raw, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert data["blue"]["requests"] == 2 and data["blue"]["by_class"]["2xx"] == 2
    assert data["blue"]["p50"] == 0.001
    assert data["blue"]["p99"] == "+Inf"


# ------------------------------------------------------------------------------------------ security
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/table"), ("GET", "/metrics"),
                                              ("POST", "/v1/services/app/pause"),
                                              ("DELETE", "/v1/services/app")])
async def test_requests_with_an_origin_header_are_refused(admin, router, method, path):
    status, body = await admin.request(method, path, headers={"Origin": "http://evil.example"})
    assert status == 403 and "Origin" in body["error"]
    assert router.generation == 1 and router.specs["app"].state == "active"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/services/app/pause", None),
    ("POST", "/v1/services/app/stop", None),
    ("PUT", "/v1/services/app", spec_body([{"name": "blue", "weight": 1, "upstreams": [A]}])),
    ("PATCH", "/v1/services/app/weights", {"weights": {"green": 1}}),
    ("DELETE", "/v1/services/app", None),
])
async def test_changes_without_the_client_header_are_refused(admin, router, method, path, body):
    status, answer = await admin.request(method, path, body, change_header=False)
    assert status == 403 and CLIENT_HEADER in answer["error"]
    assert router.generation == 1 and router.specs["app"].state == "active"
    # The same request with the header goes through: the refusal was the header's doing.
    status, _ = await admin.request(method, path, body)
    assert status == 200
    assert router.generation == 2


async def test_tcp_admin_requires_the_bearer_token(router):
    async with serve_tcp(router, token="s3cret-token") as admin:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                        {"Authorization": "Bearer s3cret-toke"}, {"Authorization": "Basic s3cret-token"},
                        {"Authorization": "Bearer s3cret-tokenX"}):
            status, body = await admin.request("GET", "/v1/table", headers=headers)
            assert status == 401, headers
            assert "token" in body["error"] and "services" not in body
            status, _ = await admin.request("POST", "/v1/services/app/pause", headers=headers)
            assert status == 401
        assert router.generation == 1
        ok = {"Authorization": "Bearer s3cret-token"}
        status, body = await admin.request("GET", "/v1/table", headers=ok)
        assert status == 200 and "app" in body["services"]
        status, _ = await admin.request("POST", "/v1/services/app/pause", headers=ok)
        assert status == 200 and router.specs["app"].state == "paused"
        # A right token does not lift the browser guard.
        status, _ = await admin.request("GET", "/v1/table", headers=ok | {"Origin": "http://x"})
        assert status == 403


async def test_tcp_admin_401_names_the_scheme(router):
    async with serve_tcp(router, token="t") as admin:
        async with admin.session.get(admin.base + "/v1/table") as response:
            assert response.status == 401
            assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


async def _raw_status(base: str, head: bytes) -> int:
    """One raw HTTP/1.1 request (bytes as given, not necessarily UTF-8): the answer's status."""
    host, _, port = base.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


async def test_tcp_admin_compares_raw_header_bytes(router):
    """A non-UTF-8 Authorization header is a wrong token (401), not an internal error; so are two headers
    even when one of them is right."""
    token = "t0ken-" + "x" * 32
    request = b"GET /v1/table HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n"
    async with serve_tcp(router, token=token) as admin:
        right = f"Authorization: Bearer {token}\r\n\r\n".encode()
        assert await _raw_status(admin.base, request + right) == 200
        for auth in (b"Authorization: Bearer \xff\xfe" + token.encode() + b"\r\n",
                     b"Authorization: Bearer " + token.encode() + b"\xe9\r\n",
                     b"Authorization: \xc3\x28\r\n",
                     f"Authorization: Bearer {token}\r\nAuthorization: Bearer wrong\r\n".encode()):
            assert await _raw_status(admin.base, request + auth + b"\r\n") == 401, auth
