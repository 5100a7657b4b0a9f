"""Each strategy against the real Docker engine, with traffic through the proxy the whole time.

`turnout serve` runs as a real process; the CLI drives it; a load generator (keep-alive and
new-connection clients) measures what clients saw. Zero failed requests is the claim under test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.rehearsal.loadgen import LoadResult
from controller.testing.plugin import CLI
from helpers.daemon import Daemon
from helpers.live import CONFIG, admin_get, owner_containers, status, traffic, wait_for_version

pytestmark = pytest.mark.docker


def assert_no_loss(result: LoadResult) -> None:
    summary = "\n".join(result.failure_lines())
    assert result.sent > 50, summary
    assert result.failed_by_proxy == 0, summary
    assert result.truncated == 0, summary
    assert result.app_errors == 0, summary


@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling", "canary"])
async def test_strategy_switches_under_traffic_with_no_failed_request(daemon, strategy):
    async with traffic(daemon) as results:
        code, out = await daemon.acli("deploy", "web", "--image", "turnout-testapp:v2",
                                      "--strategy", strategy)
    assert code == 0, out
    assert_switched_without_loss(daemon, results, release="v2")


@pytest.fixture
def keepalive_daemon(tmp_path, docker_client, test_run_labels):
    """`turnout serve` on turnout-testapp:keepalive-v1: an app server that keeps connections alive and
    closes them once idle 40 ms, as gunicorn's, Node's and most app servers' keep-alive timeouts do."""
    config = CONFIG.replace('image = "turnout-testapp:v1"', 'image = "turnout-testapp:keepalive-v1"')
    assert config != CONFIG
    serve = Daemon(tmp_path, test_run_labels, config)
    serve.start()
    wait_for_version(serve, "keepalive-v1")  # a release's version is its image tag
    yield serve
    serve.stop()
    owner_containers(docker_client, serve, remove=True)


@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling", "canary"])
async def test_strategy_switches_a_keep_alive_app_under_traffic_with_no_failed_request(keepalive_daemon,
                                                                                        strategy):
    """The proxy's pooled connections to the app close under it (40 ms idle): about 60 requests/s keep
    the gaps around that time, where a request meets a connection the app is closing."""
    async with traffic(keepalive_daemon, concurrency=None, rate=60.0) as results:
        code, out = await keepalive_daemon.acli("deploy", "web", "--image", "turnout-testapp:keepalive-v2",
                                                "--strategy", strategy)
    assert code == 0, out
    assert_switched_without_loss(keepalive_daemon, results, release="keepalive-v2")


def assert_switched_without_loss(daemon: Daemon, results: list[LoadResult], release: str) -> None:
    assert_no_loss(results[0])
    versions = {r.version for r in results[0].records if r.version}
    assert "v2" in versions  # what the app answers
    info = status(daemon)
    assert info["stable"]["version"] == release
    pool = info["stable"]["pool"]
    assert list(info["pools"]) == [pool] and info["pools"][pool]["weight"] == 100


class ServingV1:
    """One `turnout serve` (the `daemon` fixture's config) for all the failed-deploy cases: a failed
    deploy leaves v1 serving alone on its two containers, which is where each case starts, so they
    need not start a daemon and its first deploy each. `get` checks that start, and replaces a daemon a
    case left otherwise (a failing case must not fail the next)."""

    def __init__(self, workdir: Path, labels: dict[str, str], docker_client) -> None:
        self.workdir, self.labels, self.docker_client = workdir, labels, docker_client
        self.daemon: Daemon | None = None
        self.started = 0

    def get(self) -> Daemon:
        if self.daemon is not None and not self._serving_v1_alone(self.daemon):
            self.close()
        if self.daemon is None:
            self.started += 1  # a workdir each: a fresh journal and owner label
            workdir = self.workdir / f"d{self.started}"
            workdir.mkdir()
            self.daemon = Daemon(workdir, self.labels, CONFIG)
            self.daemon.start()
            wait_for_version(self.daemon, "v1")
        return self.daemon

    def _serving_v1_alone(self, daemon: Daemon) -> bool:
        if daemon.process is None or daemon.process.poll() is not None:
            return False
        info = status(daemon)
        stable = info["stable"] or {}
        containers = owner_containers(self.docker_client, daemon)
        running = {c.id for c in containers if c.status == "running"}
        return (info["deployment"] is None and stable.get("version") == "v1" and list(info["pools"]) == ["v1"]
                and len(stable["containers"]) == 2
                and {c.id for c in containers} == running == set(stable["containers"]))

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            owner_containers(self.docker_client, self.daemon, remove=True)
            self.daemon = None


@pytest.fixture(scope="module")
def serving_v1(tmp_path_factory, docker_client, test_run_labels):
    shared = ServingV1(tmp_path_factory.mktemp("v1", numbered=True), test_run_labels, docker_client)
    yield shared
    shared.close()


@pytest.mark.parametrize(("image", "seen"), [
    ("turnout-testapp:crash", "exit code 3"),
    ("turnout-testapp:unhealthy", "404"),
    ("turnout-testapp:does-not-exist", "never pulls"),
])
@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling", "canary"])
async def test_failed_deploy_leaves_old_version_serving(serving_v1, docker_client, strategy, image, seen):
    daemon = serving_v1.get()
    earlier = {d["id"] for d in admin_get(daemon, "/v1/history/web", limit="100")["deployments"]}
    async with traffic(daemon) as results:
        code, out = await daemon.acli("deploy", "web", "--image", image, "--strategy", strategy)
    assert code == 1, out
    assert seen in out
    assert_no_loss(results[0])
    assert {r.version for r in results[0].records if r.version} == {"v1"}
    info = status(daemon)
    assert info["stable"]["version"] == "v1" and list(info["pools"]) == ["v1"]
    left = owner_containers(docker_client, daemon)
    assert {c.labels["turnout.version"] for c in left if c.status == "running"} == {"v1"}
    assert all(c.labels["turnout.version"] == "v1" for c in left)
    history = admin_get(daemon, "/v1/history/web", limit="1")["deployments"]  # `turnout history --json`
    assert history[0]["id"] not in earlier  # this case's deploy, not one the shared daemon ran before
    assert history[0]["status"] == "failed" and seen in history[0]["message"]


def test_deploy_into_a_closed_pipe_ends_quietly_and_the_deploy_goes_on(daemon):
    """`turnout deploy ... | head -1`: once the reader left, the CLI ends without a traceback, and the
    deploy carries on in the daemon."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails
    try:
        done = subprocess.run([*CLI, "--state-dir", str(daemon.state_dir), "deploy", "web", "--image",
                               "turnout-testapp:v2", "--strategy", "bluegreen"], stdout=write,
                              stderr=subprocess.PIPE, text=True, env=daemon.env, cwd=daemon.workdir,
                              timeout=120)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 141, done.stderr
    wait_for_version(daemon, "v2")
    history = json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"]
    assert history[0]["to_version"] == "v2" and history[0]["status"] == "succeeded", history[0]


async def test_bluegreen_rollback_reuses_the_kept_set(daemon, docker_client):
    deployed = daemon.cli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "bluegreen")
    assert deployed.returncode == 0, deployed.stdout
    ids_before = {c.id for c in owner_containers(docker_client, daemon)}
    async with traffic(daemon) as results:
        code, out = await daemon.acli("rollback", "web")
    assert code == 0, out
    assert_no_loss(results[0])
    assert status(daemon)["stable"]["version"] == "v1"
    assert {c.id for c in owner_containers(docker_client, daemon)} == ids_before  # nothing new started


async def test_canary_rolls_back_by_itself_on_a_5xx_burst(daemon):
    async with traffic(daemon) as results:
        code, out = await daemon.acli("deploy", "web", "--image", "turnout-testapp:fail500",
                                      "--strategy", "canary", "--step-pause", "5s")
    assert code == 1, out
    assert "error rate" in out
    assert results[0].failed_by_proxy == 0
    assert status(daemon)["stable"]["version"] == "v1"
    history = json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"]
    assert history[0]["status"] == "rolled_back"


async def test_sigkill_mid_canary_then_restart_is_consistent(daemon, docker_client):
    started = daemon.cli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "canary",
                         "--steps", "10,100", "--step-pause", "manual", "--detach")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 30
    while status(daemon)["pools"].get("v2", {}).get("weight") != 10:
        assert time.monotonic() < deadline, daemon.log()
        await asyncio.sleep(0.1)
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    daemon.start()
    wait_for_version(daemon, "v1")
    info = status(daemon)
    assert list(info["pools"]) == ["v1"]
    running = [c for c in owner_containers(docker_client, daemon) if c.status == "running"]
    assert {c.labels["turnout.version"] for c in running} == {"v1"} and len(running) == 2
    history = json.loads(daemon.cli("history", "web", "--json").stdout)["deployments"]
    assert history[0]["status"] == "rolled_back" and "restart" in history[0]["message"]
    async with traffic(daemon) as results:
        pass
    assert_no_loss(results[0])
