"""The dashboard during a real canary (turnout-testapp v1 -> v2, a real `turnout serve`), watched in
headless Chromium: the step list advances and the stacked chart reaches v2 = 100%, read from the page's
DOM as it runs. A screenshot is kept in the test's tmp dir. Also: 401 without the token, actions refused
while read-only, and no request leaves 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import json
import re

import aiohttp
import pytest

from controller.rehearsal.loadgen import LoadConfig, run_load
from helpers.chromium import Browser
from helpers.daemon import Daemon
from helpers.live import CONFIG, owner_containers, wait_for_version

pytestmark = pytest.mark.docker

TOKEN = "live-" + "d" * 40
PAGE_STATE = """JSON.stringify((() => {
  const deploy = document.getElementById('deploy');
  const data = (id) => (document.getElementById(id) || {dataset: {}}).dataset;
  return {
    deployment: deploy.dataset.deployment || null, status: deploy.dataset.status || null,
    steps: [...document.querySelectorAll('#steps li')].map((li) => li.dataset.step),
    plan: [...document.querySelectorAll('#plan span')].map((s) => `${s.dataset.weight}:${s.className}`),
    share: JSON.parse(data('chart-rps').share || '{}'),
    countdown: data('countdown').seconds || null, verdict: data('verdict').verdict || null,
  };
})())"""


@pytest.fixture
def served(tmp_path, docker_client, test_run_labels):
    config = CONFIG + f'\n[dashboard]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\n'
    serve = Daemon(tmp_path, test_run_labels, config)
    serve.start()
    wait_for_version(serve, "v1")
    yield serve
    serve.stop()
    owner_containers(docker_client, serve, remove=True)


@pytest.mark.timeout(90)
async def test_the_page_follows_a_canary_to_v2_at_100_percent(served, tmp_path):
    result = served.cli("dashboard", "--with-token")
    assert result.returncode == 0, result.stderr
    login = result.stdout.strip()
    url = login.split("?")[0]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and login == f"{url}?token={TOKEN}"
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.status == 401
        async with session.post(f"{url}api/services/web/pause",
                                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 403 and "read-only" in (await response.json())["error"]

    stop = asyncio.Event()
    load = asyncio.create_task(run_load(LoadConfig(url=served.url, duration=60, concurrency=4, timeout=10,
                                                   max_requests=100_000), stop=stop))
    samples: list[dict] = []
    try:
        async with Browser(tmp_path / "profile") as browser:
            page = await browser.open(login)
            await page.wait_for("document.body.dataset.connection === 'open'"
                                " && document.body.dataset.ticks > 1")
            deploy = asyncio.create_task(served.acli("deploy", "web", "--image", "turnout-testapp:v2",
                                                     "--strategy", "canary"))
            while True:  # read the page as it runs, until it shows the end of the canary
                sample = json.loads(await page.evaluate(PAGE_STATE))
                samples.append(sample)
                if sample["status"] == "succeeded" and sample["share"].get("v2") == 100:
                    break
                assert not (deploy.done() and len(samples) > 2000), samples[-3:]  # bounded: 100 s at most
                await asyncio.sleep(0.05)
            code, out = await deploy
            assert code == 0, out
            await page.screenshot(tmp_path / "dashboard-canary.png")
            requests, problems = page.requests(), page.problems()
    finally:
        stop.set()
        await load
    # The step list advanced while the page was open: each list begins with the one seen before.
    canary = samples[-1]["deployment"]  # (before it began, the page showed the v1 deploy)
    lists = [sample["steps"] for sample in samples if sample["deployment"] == canary]
    distinct = [steps for i, steps in enumerate(lists) if i == 0 or steps != lists[i - 1]]
    assert all(later[:len(earlier)] == earlier for earlier, later in itertools.pairwise(distinct))
    assert len(distinct) >= 4, distinct
    last = distinct[-1]
    assert last.count("weight") == 2
    assert last.index("weight") < last.index("switched") < last.index("completed")
    assert any(s["plan"] == ["20:current", "50:", "100:"] for s in samples), samples[:3]
    assert any(s["plan"] == ["20:done", "50:current", "100:"] for s in samples)
    assert samples[-1]["plan"] == ["20:done", "50:done", "100:done"]
    # The chart showed the split move, then v2 alone; the countdown and the analysis showed too.
    assert any(0 < s["share"].get("v2", 0) < 100 for s in samples)
    assert samples[-1]["share"] == {"v1": 0, "v2": 100} or samples[-1]["share"].get("v2") == 100
    assert any(s["countdown"] not in (None, "none") for s in samples)
    assert {s["verdict"] for s in samples} & {"waiting", "passing"}
    assert requests and all(u.startswith(url) for u in requests), requests
    assert problems == []
    lines = [line for line in served.log_path.read_text().splitlines() if line.startswith("{")]
    logged = [entry for entry in map(json.loads, lines) if entry["event"] == "dashboard.request"]
    assert {e["path"] for e in logged} >= {"/", "/assets/dashboard.js"}  # the server saw the page's own
    assert all(e["peer"] == "127.0.0.1" for e in logged), logged
