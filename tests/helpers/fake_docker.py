"""A fake DockerBackend for unit tests of strategies and the deployer: no engine, no sockets.

It keeps containers in a dict, gives each a unique loopback address, and can be told to fail
starting an image (as a missing image or a crash would)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from controller.docker_backend import Container, ContainerSpec
from controller.errors import ContainerFailed, ContainerNotFound, ImageNotFound


class FakeBackend:
    def __init__(self) -> None:
        self.containers: dict[str, Container] = {}
        self.failing_images: set[str] = set()
        self.missing_images: set[str] = set()
        self.sigterm_ignoring_images: set[str] = set()  # `docker stop` kills them after the grace: exit 137
        self.stop_timeouts: list[float] = []  # the grace each stop was given, in order
        self.calls: list[tuple[str, str]] = []  # (verb, container version) in order
        self._ids = itertools.count(1)
        self._ports = itertools.count(20000)

    async def start(self, spec: ContainerSpec) -> Container:
        if spec.image in self.missing_images:
            raise ImageNotFound(spec.image)
        n = next(self._ids)
        container = Container(
            id=f"{n:064x}", name=f"fake-{n}", service=spec.service, version=spec.version, pool=spec.pool,
            deployment_id=spec.deployment_id, image=spec.image, address=f"127.0.0.1:{next(self._ports)}",
            state="running", exit_code=None, labels={})
        self.containers[container.id] = container
        self.calls.append(("start", spec.version))
        if spec.image in self.failing_images:  # it starts, then exits at once, as a crashing app does
            container = self.containers[container.id] = replace(container, state="exited", exit_code=3)
        return container

    async def inspect(self, container_id: str) -> Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise ContainerNotFound(container_id) from None

    async def stop(self, container_id: str, timeout: float = 10) -> Container:
        container = await self.inspect(container_id)
        self.calls.append(("stop", container.version))
        self.stop_timeouts.append(timeout)
        killed = container.running and container.image in self.sigterm_ignoring_images
        exit_code = 137 if killed else 0 if container.running else container.exit_code
        self.containers[container_id] = replace(container, state="exited", exit_code=exit_code)
        return self.containers[container_id]

    async def restart(self, container_id: str) -> Container:
        container = await self.inspect(container_id)
        self.calls.append(("restart", container.version))
        if not container.running:  # the engine publishes a new ephemeral host port on every start
            container = replace(container, state="running", exit_code=None,
                                address=f"127.0.0.1:{next(self._ports)}")
        self.containers[container_id] = container
        return container

    async def remove(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            self.calls.append(("remove", container.version))

    async def list(self, service: str | None = None, all: bool = True) -> list[Container]:
        return [c for c in self.containers.values() if service is None or c.service == service]

    async def image_exists(self, image: str) -> bool:
        return image not in self.missing_images

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        return ""

    async def wait_healthy(self, backend: FakeBackend, container_id: str, *args: object,
                           **kwargs: object) -> None:
        """Stands in for readiness.wait_healthy: healthy unless the container exited."""
        container = await self.inspect(container_id)
        if not container.running:
            raise ContainerFailed(container_id, container.state, container.exit_code, "crashing on purpose")

    def running(self, version: str | None = None) -> list[Container]:
        return [c for c in self.containers.values()
                if c.running and (version is None or c.version == version)]
