"""wait_healthy: against real containers (marked `docker`) and against loopback servers with a fake
backend, for the probe rules (2xx/3xx, consecutive successes, what a timeout reports)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from controller.engine.base import Container, ContainerSpec
from controller.engine.docker import DockerBackend
from controller.errors import ContainerFailed, ContainerNotFound, ReadinessTimeout, TurnoutError
from controller.readiness import STATE_CHECK_EVERY, wait_healthy

# -- against the real engine ----------------------------------------------------------------------


@pytest.fixture
async def backend(docker_client, test_run_labels):
    backend = DockerBackend(
        f"test-{uuid.uuid4().hex[:8]}", client=docker_client, extra_labels=test_run_labels
    )
    yield backend
    for container in await backend.list():
        await backend.remove(container.id)


def spec(tag: str) -> ContainerSpec:
    return ContainerSpec(
        service="app", version=tag, image=f"turnout-testapp:{tag}", port=8080, deployment_id="d", pool="p"
    )


@pytest.mark.docker
async def test_healthy_container_passes(backend):
    container = await backend.start(spec("v1"))
    result = await wait_healthy(backend, container.id, container.address, timeout=15, healthy_threshold=3)
    assert result.probes >= 3
    assert result.address == container.address
    assert 0 < result.elapsed < 15


@pytest.mark.docker
async def test_crashing_container_fails_fast_with_exit_code_and_logs(backend):
    container = await backend.start(spec("crash"))
    started = time.monotonic()

    with pytest.raises(ContainerFailed) as caught:
        await wait_healthy(backend, container.id, container.address, timeout=30)

    assert time.monotonic() - started < 10  # seen exiting, not waited out
    assert caught.value.exit_code == 3
    assert caught.value.state == "exited"
    assert "crashing on purpose" in caught.value.log_tail
    assert "crashing on purpose" in str(caught.value) and "exit code 3" in str(caught.value)


@pytest.mark.docker
async def test_unhealthy_container_times_out_saying_what_it_saw(backend):
    container = await backend.start(spec("unhealthy"))
    started = time.monotonic()

    with pytest.raises(ReadinessTimeout) as caught:
        await wait_healthy(backend, container.id, container.address, timeout=3)

    assert 3 <= time.monotonic() - started < 10
    error = caught.value
    assert isinstance(error, TimeoutError) and isinstance(error, TurnoutError)
    assert error.last_probe == "HTTP 404"
    assert "HTTP 404" in str(error) and "/healthz" in str(error) and "Hint:" in str(error)
    assert error.state == "running"
    assert "listening on :8080" in error.log_tail
    assert error.probes > 1


@pytest.mark.docker
async def test_probe_path_is_configurable(backend):
    container = await backend.start(spec("fail500"))
    await wait_healthy(backend, container.id, container.address, path="/healthz", timeout=15)
    with pytest.raises(ReadinessTimeout, match="HTTP 500"):
        await wait_healthy(backend, container.id, container.address, path="/", timeout=1)


@pytest.mark.docker
async def test_container_stopped_while_waiting_fails_without_waiting_out(backend):
    container = await backend.start(spec("unhealthy"))
    waiting = asyncio.create_task(wait_healthy(backend, container.id, container.address, timeout=60))
    await backend.stop(container.id, timeout=0)  # SIGTERM, SIGKILL at once if still running
    with pytest.raises(ContainerFailed) as caught:
        await asyncio.wait_for(waiting, timeout=10)
    # the app exits 0 on SIGTERM, 137 if the kill came first: either way the error reports the real one
    stopped = await backend.inspect(container.id)
    assert stopped.state == "exited" and caught.value.exit_code == stopped.exit_code


# -- probe rules on loopback, with a fake backend (no engine) --------------------------------------


def make_container(state: str = "running", exit_code: int | None = None) -> Container:
    return Container(
        id="f" * 64,
        name="fake",
        service="app",
        version="v1",
        pool="p",
        deployment_id="d",
        image="fake:v1",
        address=None,
        state=state,
        exit_code=exit_code,
        labels={},
    )


class FakeBackend:
    """Reports the states it is given, one per inspect (the last one repeats)."""

    def __init__(self, states: Iterable[str] = ("running",), logs: str = "fake log line") -> None:
        self.states = list(states)
        self.logs = logs
        self.inspections = 0

    async def inspect(self, container_id: str) -> Container:
        state = self.states[min(self.inspections, len(self.states) - 1)]
        self.inspections += 1
        if state == "gone":
            raise ContainerNotFound(container_id)
        return make_container(state, 1 if state == "exited" else None)

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        return self.logs


@asynccontextmanager
async def serve(handler: Callable) -> AsyncIterator[str]:
    """A loopback HTTP server on an ephemeral port answering every path with `handler`."""
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


def answering(*statuses: int) -> Callable:
    """A handler answering the given statuses in turn (the last one repeats)."""
    seen = []

    async def handler(request: web.Request) -> web.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(request.path)
        if 300 <= status < 400:
            return web.Response(status=status, headers={"Location": "/elsewhere"})
        return web.Response(status=status)

    return handler


async def test_redirect_counts_as_healthy_and_is_not_followed():
    # If the redirect were followed, the second answer (500) would be what the probe saw.
    async with serve(answering(302, 500)) as address:
        result = await wait_healthy(FakeBackend(), "c1", address, timeout=2, interval=0.01)
    assert result.probes == 1


async def test_needs_consecutive_successes():
    async with serve(answering(200, 500, 200, 200)) as address:
        result = await wait_healthy(
            FakeBackend(), "c1", address, timeout=5, interval=0.01, healthy_threshold=2
        )
    assert result.probes == 4  # the 500 reset the streak


async def test_probes_the_given_path():
    paths = []

    async def handler(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.Response(status=204)

    async with serve(handler) as address:
        await wait_healthy(FakeBackend(), "c1", address, path="ready/now", timeout=2)
    assert paths == ["/ready/now"]


async def test_connection_refused_is_reported_on_timeout():
    with socket.socket() as sock:  # a port nobody listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ReadinessTimeout) as caught:
        await wait_healthy(
            FakeBackend(logs="boot failed: no config"), "c1", f"127.0.0.1:{port}", timeout=0.3, interval=0.02
        )
    assert caught.value.last_probe.startswith("connection error")
    assert "boot failed: no config" in str(caught.value)


async def test_slow_answers_are_cut_at_the_probe_timeout():
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async with serve(handler) as address:
        with pytest.raises(ReadinessTimeout) as caught:
            await wait_healthy(FakeBackend(), "c1", address, timeout=0.5, probe_timeout=0.1, interval=0.01)
        release.set()
    assert caught.value.last_probe == "no answer within 0.1s"
    assert caught.value.probes >= 2


async def test_state_is_checked_every_few_probes_and_exit_wins():
    backend = FakeBackend(states=["running", "exited"])
    async with serve(answering(503)) as address:
        with pytest.raises(ContainerFailed) as caught:
            await wait_healthy(backend, "c1", address, timeout=10, interval=0.01)
    assert caught.value.exit_code == 1
    assert caught.value.log_tail == "fake log line"
    assert backend.inspections == 2  # first round, then after STATE_CHECK_EVERY rounds
    assert STATE_CHECK_EVERY > 1


async def test_vanished_container_fails():
    with pytest.raises(ContainerFailed, match="removed"):
        await wait_healthy(FakeBackend(states=["gone"]), "c1", "127.0.0.1:9", timeout=5)


async def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="healthy_threshold"):
        await wait_healthy(FakeBackend(), "c1", "127.0.0.1:9", healthy_threshold=0)
