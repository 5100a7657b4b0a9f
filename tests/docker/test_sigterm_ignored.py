"""An app that ignores SIGTERM as PID 1 (turnout-testapp:noterm), on the real engine: `docker stop`
waits out the service's stop_timeout and kills it. Big-bang holds requests for the whole gap, so none
fails although the gap outlasts the proxy's usual hold, and the deploy says why the gap was long.
`init = true` (Docker's --init) lets an app without a SIGTERM handler stop at once."""

from __future__ import annotations

import json
import uuid

import pytest
from test_deploys_live import assert_no_loss

from controller.engine.base import ContainerSpec
from controller.engine.docker import DockerBackend
from helpers.daemon import Daemon
from helpers.live import owner_containers, traffic, wait_for_version

pytestmark = pytest.mark.docker

# The proxy's own hold (1 s) is shorter than the gap (a 2 s stop grace, then start and health): a gap
# held only that long would answer 503 hold-timeout. Big-bang's gap holds for its own bound instead.
CONFIG = """
[proxy]
hold_timeout = "1s"
[services.web]
image = "turnout-testapp:noterm"
port = 8080
replicas = 2
strategy = "bigbang"
stop_timeout = "2s"
drain_timeout = "5s"
[services.web.health]
path = "/healthz"
interval = "200ms"
timeout = "1s"
healthy = 1
unhealthy = 2
start_timeout = "4s"
"""


@pytest.fixture
def noterm(tmp_path, docker_client, test_run_labels):
    """`turnout serve` serving turnout-testapp:noterm (Turnout's version "noterm"; the app answers
    "v-noterm") on 2 replicas."""
    serve = Daemon(tmp_path, test_run_labels, CONFIG)
    serve.start()
    try:  # stopped even when it never serves: a daemon left running would repair what cleanup removes
        wait_for_version(serve, "noterm")
        yield serve
    finally:
        serve.stop()
        owner_containers(docker_client, serve, remove=True)


async def test_bigbang_from_an_app_ignoring_sigterm_loses_no_request(noterm, docker_client):
    old = {c.id for c in owner_containers(docker_client, noterm)}
    async with traffic(noterm) as results:
        code, out = await noterm.acli("deploy", "web", "--image", "turnout-testapp:v2")
    assert code == 0, out
    assert_no_loss(results[0])
    assert {r.version for r in results[0].records if r.version} == {"v-noterm", "v2"}
    # the old containers were killed after their grace, and the deploy says so
    killed = [c for c in owner_containers(docker_client, noterm) if c.id in old]
    assert len(killed) == 2 and {c.attrs["State"]["ExitCode"] for c in killed} == {137}, out
    assert "killed_after_grace" in out
    assert "2 container(s) of noterm ignored SIGTERM and were killed after the 2s stop_timeout" in out
    assert "big-bang's gap lasted" in out and "waiting for noterm to exit" in out
    assert "the proxy failed 0 request(s) during it" in out
    [latest, *_] = json.loads(noterm.cli("history", "web", "--json").stdout)["deployments"]
    result = latest["options"]["result"]
    assert result["proxy_failed"] == 0
    assert any("killed after the 2s stop_timeout" in note for note in result["notes"])
    history = noterm.cli("history", "web").stdout
    assert "0 failed" in history and "note: 2 container(s) of noterm ignored SIGTERM" in history


@pytest.mark.parametrize(("init", "exit_code"), [(False, 137), (True, 143)])
async def test_init_lets_an_app_without_a_sigterm_handler_stop(docker_client, test_run_labels, init,
                                                               exit_code):
    # httpd as PID 1 installs no SIGTERM handler, so the kernel ignores the signal: killed after the grace
    # (137). Under Docker's init it is PID 2, where SIGTERM's default action ends it (143).
    owner = f"test-{uuid.uuid4().hex[:8]}"
    backend = DockerBackend(owner, client=docker_client, extra_labels=test_run_labels)
    try:
        container = await backend.start(ContainerSpec(
            service="web", version="v1", image="turnout-testapp:v1", port=8080, deployment_id="d-1",
            pool="v1", command=["httpd", "-f", "-p", "8080", "-h", "/app"], init=init))
        stopped = await backend.stop(container.id, timeout=2)
        assert (stopped.state, stopped.exit_code) == ("exited", exit_code)
    finally:
        for container in await backend.list():
            await backend.remove(container.id)
