"""Shadow traffic against the real engine: v1 serves on two containers, a new version that changes one JSON
field (turnout-testapp:pricier) runs beside it at weight 0 (an A/B deploy nobody matches), and every GET is
mirrored to it. The report names exactly that endpoint and field; the per-request timestamp, which also
differs between the two v1 containers, is learned as noise."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from test_ab_live import ab_rule_routes, wait_until

from helpers.daemon import Daemon
from helpers.live import CONFIG, owner_containers, status, wait_for_version
from helpers.upstreams import RawClient

pytestmark = pytest.mark.docker

MIRROR = """[services.web.mirror]
to = "canary"
percent = 100
max_per_second = 1000
"""


@pytest.fixture
def mirror_daemon(tmp_path, docker_client, test_run_labels):
    serve = Daemon(tmp_path, test_run_labels, CONFIG + MIRROR)
    serve.start()
    wait_for_version(serve, "v1")
    yield serve
    serve.stop()
    owner_containers(docker_client, serve, remove=True)


def report(daemon: Daemon) -> dict:
    result = daemon.cli("mirror", "report", "web", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def items_entry(data: dict) -> dict | None:
    return next((e for e in data["endpoints"] if e["endpoint"] == "GET /cgi-bin/items/{id}"), None)


def learned(daemon: Daemon) -> bool:
    entry = items_entry(report(daemon))
    return entry is not None and entry["compared"] >= 20 and "$.generated_at" in entry["noise"]


async def test_the_mirror_report_names_the_changed_field_and_learns_the_timestamp_as_noise(mirror_daemon):
    daemon = mirror_daemon
    code, out = await daemon.acli("deploy", "web", "--image", "turnout-testapp:pricier", "--strategy", "ab",
                                  "--match", "header:X-Nobody=1", "--duration", "10m", "--detach")
    assert code == 0, out
    await wait_until(lambda: ab_rule_routes(daemon, "pricier"))
    client = await RawClient.connect(daemon.port)
    answers = []
    deadline = time.monotonic() + 90
    try:
        while not await asyncio.to_thread(learned, daemon):
            assert time.monotonic() < deadline, report(daemon)
            for item in (7, 8, 9):
                answer = await client.request("GET", f"/cgi-bin/items/{item}")
                answers.append(answer)
    finally:
        await client.close()
    assert {a.status for a in answers} == {200}
    assert all(json.loads(a.body)["price"] == 10 for a in answers)  # clients: v1's answers, untouched
    data = report(daemon)
    assert [e["endpoint"] for e in data["endpoints"]] == ["GET /cgi-bin/items/{id}"]
    entry = items_entry(data)
    assert [f["field"] for f in entry["fields"]] == ["$.price"]
    assert (entry["fields"][0]["primary"], entry["fields"][0]["mirror"]) == ("10", "12")
    assert entry["noise"] == ["$.generated_at"]
    assert data["counts"]["failed"] == 0 and data["target_pool"] == "pricier"
    text = daemon.cli("mirror", "report", "web").stdout
    assert "GET /cgi-bin/items/{id}" in text and "$.price" in text and "noise" in text
    code, out = await daemon.acli("abort", "web")
    assert code == 0, out
    await wait_until(lambda: status(daemon)["deployment"] is None)
    assert status(daemon)["stable"]["version"] == "v1"
