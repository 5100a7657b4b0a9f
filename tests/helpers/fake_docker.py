"""A fake DockerBackend for unit tests of strategies and the deployer: no engine, no sockets.

It keeps containers in a dict, gives each a unique loopback address, and can be told to fail
starting an image (as a missing image or a crash would)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from controller import labels as lbl
from controller.docker_backend import Container, ContainerSpec
from controller.errors import ContainerFailed, ContainerNotFound, ImageNotFound


class FakeBackend:
    def __init__(self) -> None:
        self.containers: dict[str, Container] = {}
        self.failing_images: set[str] = set()
        self.missing_images: set[str] = set()
        self.rebuilt: dict[str, int] = {}  # image -> times rebuilt under the same tag (a new image ID)
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
            state="running", exit_code=None,
            labels={lbl.SPEC_HASH: spec.spec_hash} if spec.spec_hash else {})
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
        self.containers[container_id] = replace(container, state="exited", exit_code=0)
        return self.containers[container_id]

    async def restart(self, container_id: str) -> Container:
        container = await self.inspect(container_id)
        self.calls.append(("restart", container.version))
        self.containers[container_id] = replace(container, state="running", exit_code=None)
        return self.containers[container_id]

    async def remove(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            self.calls.append(("remove", container.version))

    async def list(self, service: str | None = None, all: bool = True) -> list[Container]:
        return [c for c in self.containers.values() if service is None or c.service == service]

    async def image_exists(self, image: str) -> bool:
        return image not in self.missing_images

    async def image_id(self, image: str) -> str:
        if image in self.missing_images:
            raise ImageNotFound(image)
        return f"sha256:{image}#{self.rebuilt.get(image, 0)}"

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
