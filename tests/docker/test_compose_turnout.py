"""compose/turnout.yml runs Turnout itself in a container, for real: the image is built without pulling
(scripts/build-turnout-image.sh), `docker-compose up` starts it with the Docker socket and the host
network, it deploys the demo stack, a deploy driven through `docker-compose exec` moves live traffic to
v2 without loss, and a restarted Turnout container recovers what it ran from its state volume."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import pytest

from controller.rehearsal.loadgen import LoadConfig, run_load
from controller.testing.plugin import free_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "turnout.yml"
HOST = {"Host": "localhost"}  # compose/demo routes web.localhost and localhost


@pytest.fixture(scope="module")
def turnout_image(docker_client) -> str:
    result = subprocess.run([str(ROOT / "scripts" / "build-turnout-image.sh")], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return "turnout:local"


class ComposeProject:
    """One `docker-compose -p NAME -f compose/turnout.yml` project: its own container and state volume."""

    def __init__(self, name: str, listen_port: int, labels: dict[str, str]) -> None:
        self.name = name
        self.run_label = ",".join(f"{k}={v}" for k, v in labels.items())
        self.url = f"http://127.0.0.1:{listen_port}"
        self.env = {**os.environ, "TURNOUT_LISTEN": f"127.0.0.1:{listen_port}",
                    "TURNOUT_CONTAINER_LABELS": ",".join(f"{k}={v}" for k, v in labels.items())}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker-compose", "-p", self.name, "-f", str(COMPOSE_FILE), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def turnout(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("exec", "-T", "turnout", "turnout", "--state-dir", "/var/lib/turnout", *args)

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "40").stdout


def body_of(url: str) -> str | None:
    import urllib.request

    request = urllib.request.Request(url, headers=HOST)
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return response.read().decode()
    except OSError:
        return None


def wait_serving(project: ComposeProject, version: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if body_of(project.url + "/") == f"{version}\n":
            return
        time.sleep(0.2)
    raise AssertionError(f"Turnout in compose never served {version}:\n{project.logs()}")


@pytest.fixture
def compose_project(turnout_image, docker_client, test_run_labels):
    run_id = test_run_labels["turnout.test-run"]
    project = ComposeProject(f"turnout-test-{run_id}", free_port(), test_run_labels)
    up = project.run("up", "-d")
    assert up.returncode == 0, up.stderr
    try:
        yield project
    finally:
        project.run("down", "-v", timeout=120)
        for container in docker_client.containers.list(all=True, filters={"label": project.run_label}):
            container.remove(force=True)  # the app containers Turnout started (Turnout's own is gone)


async def test_compose_runs_turnout_which_deploys_under_traffic_and_recovers(compose_project, docker_client):
    wait_serving(compose_project, "v1")
    labels = [compose_project.run_label, "turnout.service=web"]
    ours = docker_client.containers.list(filters={"label": labels})
    assert len(ours) == 2, [c.name for c in ours]  # the demo stack's 2 replicas, started by Turnout
    assert all(c.ports["8080/tcp"][0]["HostIp"] == "127.0.0.1" for c in ours)

    load = asyncio.ensure_future(run_load(LoadConfig(url=compose_project.url, rate=100, duration=6.0,
                                                     headers=HOST, new_connections=0.3)))
    await asyncio.sleep(1.0)
    deploy = await asyncio.to_thread(compose_project.turnout, "deploy", "web", "--image",
                                     "turnout-testapp:v2", "--strategy", "bluegreen")
    result = await load
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "finished: succeeded" in deploy.stdout, deploy.stdout
    assert result.sent > 300 and result.failed_by_proxy == 0 and result.truncated == 0, result.summary()
    assert result.app_errors == 0, result.summary()
    assert set(result.versions()) == {"v1", "v2"}

    restarted = compose_project.run("restart", timeout=120)  # SIGTERM, then a new process, same volume
    assert restarted.returncode == 0, restarted.stderr
    wait_serving(compose_project, "v2")
    status = compose_project.turnout("status", "web")
    assert status.returncode == 0, status.stderr
    assert "web: v2" in status.stdout and "previous: v1" in status.stdout, status.stdout
