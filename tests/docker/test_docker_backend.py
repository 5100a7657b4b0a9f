"""DockerBackend against the real engine (marked `docker`), plus ContainerSpec checks that need none.

Every container is started through a backend with a unique owner and the session's test-run labels,
and removed by the test's own fixture; the session cleanup in conftest catches anything left over.
Raw `docker_client` calls run in a thread, so nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid

import aiohttp
import pytest

from controller import labels as lbl
from controller.engine.base import ContainerSpec, container_name, slug
from controller.engine.docker import LOG_CONFIG, DockerBackend
from controller.errors import ContainerNotFound, DockerError, ImageNotFound, TurnoutError
from controller.readiness import wait_healthy

V1 = "turnout-testapp:v1"


def make_spec(**overrides) -> ContainerSpec:
    fields = dict(service="web", version="v1", image=V1, port=8080, deployment_id="dep-1", pool="blue")
    return ContainerSpec(**{**fields, **overrides})


def new_owner() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def cleanup(backend: DockerBackend) -> None:
    for container in await backend.list():
        await backend.remove(container.id)


@pytest.fixture
async def backend(docker_client, test_run_labels):
    backend = DockerBackend(new_owner(), client=docker_client, extra_labels=test_run_labels)
    yield backend
    await cleanup(backend)


@pytest.fixture
async def other_backend(docker_client, test_run_labels):
    """A second Turnout instance on the same engine."""
    backend = DockerBackend(new_owner(), client=docker_client, extra_labels=test_run_labels)
    yield backend
    await cleanup(backend)


async def http_get(address: str, path: str = "/") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{address}{path}", timeout=aiohttp.ClientTimeout(total=5)) as response,
    ):
        return response.status, (await response.text()).strip()


# -- ContainerSpec and naming (no engine needed) ------------------------------------------------------


class TestContainerSpec:
    @pytest.mark.parametrize("port", [0, 70000, "8080", True])
    def test_rejects_bad_port(self, port):
        with pytest.raises(ValueError, match="port"):
            make_spec(port=port)

    @pytest.mark.parametrize("field", ["service", "version", "image", "pool"])
    def test_rejects_empty_names(self, field):
        with pytest.raises(ValueError, match=field):
            make_spec(**{field: " "})

    def test_rejects_command_as_string(self):
        with pytest.raises(ValueError, match="command"):
            make_spec(command="sh -c true")

    def test_rejects_non_positive_cpus(self):
        with pytest.raises(ValueError, match="cpus"):
            make_spec(cpus=0)

    def test_is_frozen_and_copies_what_it_is_given(self):
        env = {"A": "1"}
        spec = make_spec(env=env, command=["sh", "-c", "true"])
        env["A"] = "2"
        assert spec.env["A"] == "1"
        assert spec.command == ("sh", "-c", "true")
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.image = "other"  # type: ignore[misc]

    def test_converts_to_plain_data(self):
        spec = make_spec(env={"A": "1"}, volumes=["data:/data"])
        assert json.loads(json.dumps(dataclasses.asdict(spec)))["env"] == {"A": "1"}


def test_container_name_is_docker_safe_and_unique():
    first, second = container_name("My Web", "v1.2+build/7"), container_name("My Web", "v1.2+build/7")
    assert re.fullmatch(r"turnout-my-web-v1\.2-build-7-[0-9a-f]{6}", first)
    assert first != second
    assert slug("///") == "x"


def test_backend_refuses_extra_labels_that_override_ours():
    with pytest.raises(ValueError, match=lbl.OWNER):
        DockerBackend("me", client=object(), extra_labels={lbl.OWNER: "someone-else"})


# -- against the real engine ----------------------------------------------------------------------


@pytest.mark.docker
async def test_start_publishes_on_loopback_and_serves_its_version(backend, docker_client):
    container = await backend.start(make_spec())

    assert container.state == "running"
    assert container.address is not None and container.address.startswith("127.0.0.1:")
    assert re.fullmatch(r"turnout-web-v1-[0-9a-f]{6}", container.name)
    assert (container.service, container.version, container.pool, container.deployment_id) == (
        "web",
        "v1",
        "blue",
        "dep-1",
    )
    assert container.image == V1
    bindings = (await asyncio.to_thread(docker_client.api.inspect_container, container.id))["HostConfig"][
        "PortBindings"
    ]
    assert bindings == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}  # ephemeral, loopback only

    await wait_healthy(backend, container.id, container.address, timeout=15)
    assert await http_get(container.address, "/") == (200, "v1")


@pytest.mark.docker
async def test_labels_log_options_and_limits_are_set(backend, docker_client, test_run_labels):
    container = await backend.start(make_spec(mem_limit="64m", cpus=0.5, extra_labels={"team": "qa"}))
    attrs = await asyncio.to_thread(docker_client.api.inspect_container, container.id)

    assert attrs["HostConfig"]["LogConfig"] == {"Type": "json-file", "Config": LOG_CONFIG["config"]}
    assert attrs["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
    labels = attrs["Config"]["Labels"]
    assert lbl.is_ours(labels, backend.owner)
    assert labels[lbl.PORT] == "8080"
    assert labels["team"] == "qa"
    assert test_run_labels.items() <= labels.items()
    assert container.labels == labels
    assert hash(container) == hash(dataclasses.replace(container, labels={}))  # usable in sets


@pytest.mark.docker
async def test_the_stop_timeout_is_the_containers_own(backend, docker_client):
    """A `docker stop` by others (or the engine's shutdown) waits the service's stop_timeout, not 10 s."""
    given = await backend.start(make_spec(stop_timeout=2.5))
    default = await backend.start(make_spec())
    attrs = await asyncio.to_thread(docker_client.api.inspect_container, given.id)
    assert attrs["Config"]["StopTimeout"] == 3  # whole seconds, rounded up as DockerBackend.stop does
    assert "StopTimeout" not in (await asyncio.to_thread(docker_client.api.inspect_container, default.id))[
        "Config"]


@pytest.mark.docker
async def test_env_reaches_the_container(backend):
    container = await backend.start(make_spec(env={"APP_VERSION": "custom-7"}))
    await wait_healthy(backend, container.id, container.address, timeout=15)
    assert await http_get(container.address, "/version") == (200, "custom-7")


@pytest.mark.docker
async def test_list_sees_only_our_owner_and_others_are_refused(
    backend, other_backend, docker_client, test_run_labels
):
    ours = await backend.start(make_spec())
    theirs = await other_backend.start(make_spec())
    # Carries the test-run label (so the session cleanup removes it) but not our managed labels.
    unmanaged = await asyncio.to_thread(docker_client.containers.create, V1, labels=dict(test_run_labels))
    try:
        assert [c.id for c in await backend.list()] == [ours.id]
        assert [c.id for c in await other_backend.list()] == [theirs.id]

        with pytest.raises(DockerError, match=r"refusing to stop .* owned by"):
            await backend.stop(theirs.id, timeout=0)
        with pytest.raises(DockerError, match=r"refusing to remove .* owned by"):
            await backend.remove(theirs.id)
        with pytest.raises(DockerError, match=r"refusing to remove .* not managed by Turnout"):
            await backend.remove(unmanaged.id)

        assert (await other_backend.inspect(theirs.id)).state == "running"  # untouched
        assert (await backend.inspect(unmanaged.id)).state == "created"
    finally:
        await asyncio.to_thread(unmanaged.remove, force=True)


@pytest.mark.docker
async def test_list_filters_by_service_and_running(backend):
    web = await backend.start(make_spec(service="web"))
    api = await backend.start(make_spec(service="api"))

    assert [c.id for c in await backend.list(service="web")] == [web.id]
    assert [c.id for c in await backend.list(service="api")] == [api.id]
    assert await backend.list(service="nope") == []

    await backend.stop(api.id, timeout=0)
    assert [c.id for c in await backend.list(all=False)] == [web.id]
    assert {c.id for c in await backend.list(all=True)} == {web.id, api.id}


@pytest.mark.docker
async def test_missing_image_raises_quickly_without_pulling(backend, docker_client):
    image = f"turnout-testapp:missing-{uuid.uuid4().hex[:8]}"
    since = int(time.time()) - 1
    started = time.monotonic()

    with pytest.raises(ImageNotFound) as caught:
        await backend.start(make_spec(image=image))

    assert time.monotonic() - started < 5
    assert caught.value.image == image
    assert image in str(caught.value) and "never pulls" in str(caught.value)
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, TurnoutError)
    assert not await backend.image_exists(image)
    assert await backend.list() == []  # nothing half-created
    # The engine's own record: no pull was attempted in the meantime.
    events = await asyncio.to_thread(
        lambda: list(
            docker_client.events(
                since=since, until=int(time.time()) + 1, filters={"type": "image"}, decode=True
            )
        )
    )
    assert [e for e in events if e.get("Action") == "pull"] == []


@pytest.mark.docker
async def test_failed_start_leaves_nothing_behind(backend):
    with pytest.raises(DockerError, match="starting container"):
        await backend.start(make_spec(command=["/no/such/binary"]))
    assert await backend.list() == []


@pytest.mark.docker
async def test_stop_then_remove(backend):
    container = await backend.start(make_spec())

    stopped = await backend.stop(container.id, timeout=1)
    assert stopped.state == "exited"
    assert stopped.exit_code is not None
    assert (await backend.inspect(container.id)).state == "exited"

    await backend.remove(container.id)
    with pytest.raises(ContainerNotFound):
        await backend.inspect(container.id)
    assert await backend.list() == []
    await backend.remove(container.id)  # already gone: a no-op
    with pytest.raises(ContainerNotFound):
        await backend.stop(container.id)


@pytest.mark.docker
async def test_restart_brings_a_stopped_container_back(backend, other_backend):
    container = await backend.start(make_spec())
    await backend.stop(container.id, timeout=0)

    restarted = await backend.restart(container.id)

    assert restarted.id == container.id
    assert restarted.state == "running"
    assert restarted.address is not None  # re-read: the ephemeral host port may have changed
    await wait_healthy(backend, restarted.id, restarted.address, timeout=15)
    assert await http_get(restarted.address, "/") == (200, "v1")
    with pytest.raises(DockerError, match="refusing to restart"):
        await other_backend.restart(container.id)


@pytest.mark.docker
async def test_remove_takes_a_running_container_down(backend):
    container = await backend.start(make_spec())
    await backend.remove(container.id)
    assert await backend.list() == []


@pytest.mark.docker
async def test_logs_tail(backend):
    container = await backend.start(make_spec())
    await wait_healthy(backend, container.id, container.address, timeout=15)

    tail = await backend.logs_tail(container.id, lines=20)
    assert "testapp v1 (ok) listening on :8080" in tail
    assert len((await backend.logs_tail(container.id, lines=1)).splitlines()) == 1


@pytest.mark.docker
async def test_image_exists_and_ping(backend):
    assert await backend.ping() is True
    assert await backend.image_exists(V1) is True
    assert await backend.image_exists(f"turnout-testapp:missing-{uuid.uuid4().hex[:8]}") is False
