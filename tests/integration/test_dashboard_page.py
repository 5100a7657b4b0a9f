"""The dashboard page in headless Chromium with 50 services and live traffic, no Docker: the browser
logs in with the token once (HttpOnly cookie), renders every service, draws the real split, keeps up
with the feed, asks nothing of any origin but the dashboard's own, and reports no script or CSP error."""

from __future__ import annotations

import asyncio
import contextlib
import json

from controller.config.model import DashboardConfig, ServiceConfig
from controller.dashboard.app import DashboardServer
from controller.dashboard.feed import Feed
from controller.deployer import Deployer
from controller.engine.docker import DockerBackend
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.chromium import Browser
from helpers.upstreams import RawClient, running_proxy, service, start_upstreams
from proxy.router import Router

TOKEN = "page-" + "z" * 40
SERVICES = 50


async def traffic(port: int, hosts: list[str], stop: asyncio.Event) -> int:
    """Keep-alive requests round the given hosts until `stop` (bounded: at most 200,000)."""
    client = await RawClient.connect(port)
    sent = 0
    try:
        while not stop.is_set() and sent < 200_000:
            await client.request("GET", "/", host=hosts[sent % len(hosts)])
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0.005)  # a steady trickle, not a benchmark
    finally:
        await client.close()
    return sent


async def test_the_page_keeps_up_with_50_services_and_stays_on_loopback(tmp_path):
    upstreams = await start_upstreams("u1", "u2")
    router = Router()
    journal = Journal(tmp_path / "journal.db")
    deployer = Deployer(DockerBackend(owner="test-dashboard-page"), ProxyControl(router), journal)
    for i in range(SERVICES):
        name = f"svc{i:02d}"
        deployer.configs[name] = ServiceConfig(name, upstreams=(upstreams[0].address,), health=None,
                                               hosts=(f"{name}.test",))
        pools = {"v1": (75, [upstreams[0].address]), "v2": (25, [upstreams[1].address])}
        router.set_service(service(name, pools, hosts=[f"{name}.test"]))
    https = {"listen": "127.0.0.1:8443", "errors": [{"file": "old.crt", "error": "expired"}],
             "certificates": [{"name": "svc", "hosts": ["svc07.test", "*.svc.test"], "source": "acme",
                               "issuer": "CN=Pebble", "not_after": "2027-01-01T00:00:00+00:00",
                               "days_left": 9.5}]}
    # four samples a second: a harder pace than the daemon's
    feed = Feed(router, deployer, interval=0.25, certificates=lambda: https)
    feed.start()
    server = DashboardServer(DashboardConfig("127.0.0.1:0", TOKEN), feed, deployer)
    await server.start()
    stop = asyncio.Event()
    try:
        async with running_proxy(router) as proxy:
            load = asyncio.create_task(traffic(proxy.port, ["svc07.test", "svc08.test"], stop))
            async with Browser(tmp_path / "profile") as browser:
                page = await browser.open(f"{server.url}?token={TOKEN}#svc07")
                await page.wait_for(f"document.querySelectorAll('#services tbody tr').length === {SERVICES}")
                assert await page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
                assert await page.evaluate("location.search") == ""  # the token left the address bar
                # The stacked chart draws the real split: both versions answer, v1 about three times v2.
                share = json.loads(await page.wait_for(
                    "(() => { const chart = document.getElementById('chart-rps');"
                    " const s = JSON.parse(chart.dataset.share);"
                    " return s.v1 > 0 && s.v2 > 0 && +chart.dataset.points >= 4 ? JSON.stringify(s) : null;"
                    " })()"))
                assert 50 < share["v1"] < 95 and share["v1"] + share["v2"] == 100, share
                weight = await page.evaluate(
                    "document.querySelector('tr[data-service=svc07] .pool[data-pool=v1]').dataset.weight")
                assert weight == "75"
                # The HTTPS listener's certificates, their expiry and the files refused.
                days = await page.wait_for(
                    "document.querySelector('#certificates tr[data-certificate=svc]')?.dataset.daysLeft")
                assert days == "9.5"
                assert "old.crt: expired" in await page.evaluate(
                    "document.getElementById('certificate-errors').textContent")
                # It keeps up: what the feed published, the page has applied soon after, again and again.
                for _ in range(8):
                    target = feed.seq
                    await page.wait_for(f"+document.body.dataset.lastEvent.split('-')[1] >= {target}",
                                        timeout=10)
                render_ms = float(await page.evaluate("document.body.dataset.renderMs"))
                await page.screenshot(tmp_path / "dashboard-50-services.png")
                origin = server.url.rstrip("/")
                requests = page.requests()
                assert requests and all(url.startswith(origin + "/") for url in requests), requests
                assert page.problems() == []
            stop.set()
            assert await load > 0
    finally:
        stop.set()
        await feed.stop()
        await server.stop()
        journal.close()
        for upstream in upstreams:
            await upstream.close()
    print(f"render of one event with {SERVICES} services: {render_ms} ms")
    with contextlib.suppress(Exception):
        (tmp_path / "render-ms.txt").write_text(f"{render_ms}\n")
