"""The dashboard app (controller/dashboard/app.py) on real loopback sockets, with a Router and a Deployer
whose Docker backend is never called: the token and its cookie, read-only and CSRF refusals, the
page's references, and the event stream resumed with Last-Event-ID."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from controller.config.model import DashboardConfig, ServiceConfig
from controller.dashboard.app import COOKIE, CSRF_HEADER, DashboardServer
from controller.dashboard.feed import Feed
from controller.deployer import ActiveDeployment, Deployer
from controller.engine.docker import DockerBackend
from controller.events import EventLog
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from controller.signals import Signals
from proxy.router import Router

TOKEN = "t0ken-" + "x" * 40


@contextlib.asynccontextmanager
async def dashboard(tmp_path: Path, config: DashboardConfig,
                    interval: float = 3600) -> AsyncIterator[tuple[DashboardServer, Feed, Deployer]]:
    router = Router()
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(DockerBackend(owner="test-dashboard"), ProxyControl(router), journal)
    static = ServiceConfig("api", upstreams=("127.0.0.1:9001",), health=None)
    deployer.configs["api"] = static
    deployer.proxy.install_static(static)
    feed = Feed(router, deployer, interval=interval)
    feed.start()
    server = DashboardServer(config, feed, deployer)
    await server.start()
    try:
        yield server, feed, deployer
    finally:
        await feed.stop()
        await server.stop()
        journal.close()


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # keep cookies for an IP address host


@pytest.mark.parametrize("path", ["/", "/events", "/api/state", "/assets/dashboard.js"])
async def test_without_the_token_everything_is_401(tmp_path, path):
    async with dashboard(tmp_path, DashboardConfig("127.0.0.1:0", TOKEN)) as (server, _, _), \
            aiohttp.ClientSession() as session:
        async with session.get(server.url.rstrip("/") + path) as response:
            assert response.status == 401, await response.text()
            assert "token" in (await response.json())["error"]
        async with session.get(server.url.rstrip("/") + path,
                               headers={"Authorization": "Bearer " + TOKEN[:-1] + "y"}) as response:
            assert response.status == 401


async def test_the_token_once_gives_an_httponly_samesite_cookie(tmp_path):
    async with dashboard(tmp_path, DashboardConfig("127.0.0.1:0", TOKEN)) as (server, _, _), \
            aiohttp.ClientSession(cookie_jar=jar()) as session:
        async with session.get(server.url + "?token=wrong") as response:
            assert response.status == 401
        async with session.get(server.url + "?token=" + TOKEN, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/"
            cookie = response.headers["Set-Cookie"]
            assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
            assert TOKEN not in cookie  # the cookie is derived from the token, not the token
        async with session.get(server.url) as response:  # the cookie alone now
            assert response.status == 200 and "<title>Turnout</title>" in await response.text()
        async with session.get(server.url + "api/state") as response:
            assert response.status == 200 and "api" in (await response.json())["services"]
        async with aiohttp.ClientSession() as script:  # scripts: the bearer token
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with script.get(server.url + "api/state", headers=bearer) as response:
                assert response.status == 200


async def test_without_a_token_it_answers_only_a_loopback_host(tmp_path):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read a token-less dashboard."""
    async with dashboard(tmp_path, DashboardConfig("127.0.0.1:0")) as (server, _, _), \
            aiohttp.ClientSession() as session:
        async with session.get(server.url) as response:
            assert response.status == 200
        async with session.get(server.url, headers={"Host": f"evil.example:{server.port}"}) as response:
            assert response.status == 403 and "loopback" in (await response.json())["error"]


async def test_the_page_references_nothing_beyond_its_own_origin(tmp_path):
    async with dashboard(tmp_path, DashboardConfig("127.0.0.1:0")) as (server, _, _), \
            aiohttp.ClientSession() as session:
        async with session.get(server.url) as response:
            page = await response.text()
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
            assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
        assert "://" not in page and "//" not in page.replace("<!doctype", "")
        sources = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert sources and all(s.startswith("/assets/") or s == "data:," for s in sources), sources
        for source in sources:
            if source.startswith("/assets/"):
                async with session.get(server.url.rstrip("/") + source) as asset:
                    assert asset.status == 200, source
                    if "plotly" not in source:  # plotly.js is the library as shipped in the wheel
                        assert "://" not in await asset.text(), source


async def test_actions_are_refused_when_read_only(tmp_path):
    async with dashboard(tmp_path, DashboardConfig("127.0.0.1:0", TOKEN)) as (server, _, deployer), \
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        active = fake_deploy(deployer)
        async with session.get(server.url) as response:
            page = await response.text()
            assert 'data-actions="false"' in page and 'name="turnout-csrf" content=""' in page
        for command in ("promote", "abort", "pause", "resume", "rollback"):
            async with session.post(f"{server.url}api/services/web/{command}") as response:
                assert response.status == 403 and "read-only" in (await response.json())["error"]
        assert not active.signals.paused and not active.signals.aborted.is_set()


async def test_an_action_without_the_csrf_token_is_refused(tmp_path):
    config = DashboardConfig("127.0.0.1:0", TOKEN, allow_actions=True)
    async with dashboard(tmp_path, config) as (server, _, deployer), \
            aiohttp.ClientSession(cookie_jar=jar()) as session:
        active = fake_deploy(deployer)
        async with session.get(server.url + "?token=" + TOKEN) as response:  # logged in, as a browser
            page = await response.text()
        csrf = re.search(r'name="turnout-csrf" content="([0-9a-f]{64})"', page).group(1)
        url = f"{server.url}api/services/web/pause"
        for headers in ({}, {CSRF_HEADER: "0" * 64}, {CSRF_HEADER: csrf, "Origin": "http://evil.example"}):
            async with session.post(url, headers=headers) as response:
                assert response.status == 403, headers
        assert not active.signals.paused
        same_origin = {CSRF_HEADER: csrf, "Origin": server.url.rstrip("/")}
        async with session.post(url, headers=same_origin) as response:
            assert response.status == 200 and (await response.json())["command"] == "pause"
        assert active.signals.paused
        promote = f"{server.url}api/services/api/promote"
        async with session.post(promote, headers={CSRF_HEADER: csrf}) as response:
            assert response.status == 409 and "no deployment" in (await response.json())["error"]


def fake_deploy(deployer: Deployer) -> ActiveDeployment:
    """A deploy in progress, as far as the dashboard's actions can tell (its signals are real)."""
    active = ActiveDeployment("d-000042", "web", "canary", "v2", "app:v2", EventLog(), Signals())
    deployer.active["web"] = active
    return active


async def read_events(response: aiohttp.ClientResponse, n: int) -> list[dict[str, str]]:
    """n server-sent events (id, event, data) from a streaming response."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in current:
                events.append(current)
                if len(events) == n:
                    return events
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            current[key] = value
    raise AssertionError(f"the stream ended after {len(events)} events")


async def test_the_event_stream_resumes_with_last_event_id(tmp_path):
    config = DashboardConfig("127.0.0.1:0", TOKEN)
    async with dashboard(tmp_path, config, interval=0.05) as (server, feed, _), \
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.get(server.url + "events") as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            first = await read_events(response, 3)
        assert first[0]["event"] == "snapshot" and {e["event"] for e in first[1:]} <= {"table", "tick"}
        assert first[0]["retry"] == "1000"
        last = first[-1]["id"]
        run, seq = last.split("-")
        while feed.seq < int(seq) + 3:  # more happened while this reader was away
            await asyncio.sleep(0.05)
        async with session.get(server.url + "events", headers={"Last-Event-ID": last}) as response:
            resumed = await read_events(response, 3)
        assert [e["id"] for e in resumed] == [f"{run}-{int(seq) + i}" for i in (1, 2, 3)]
        async with session.get(server.url + "events", headers={"Last-Event-ID": "0123abcd-5"}) as response:
            [fresh] = await read_events(response, 1)
        assert fresh["event"] == "snapshot"  # an id from another daemon run
