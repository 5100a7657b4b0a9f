"""A fake DockerBackend for unit tests of strategies and the deployer: no engine, no sockets.

It keeps containers in a dict, gives each a unique loopback address, and can be told to fail
starting an image (as a missing image or a crash would)."""

from __future__ import annotations

import itertools
from dataclasses import replace

from controller import labels as lbl
from controller.engine.base import Container, ContainerSpec
from controller.errors import ContainerFailed, ContainerNotFound, ImageNotFound


class FakeBackend:
    def __init__(self) -> None:
        self.containers: dict[str, Container] = {}
        self.failing_images: set[str] = set()
        self.missing_images: set[str] = set()
        self.rebuilt: dict[str, int] = {}  # image -> times rebuilt under the same tag (a new image ID)
        self.labels: dict[str, dict[str, str]] = {}  # image -> its labels (e.g. turnout.schema)
        self.oneoffs: dict[str, int] = {}  # command[0] of a one-off container -> exit code (default 0)
        self.execs: list[tuple[str, tuple[str, ...], dict[str, str]]] = []
        self.blocking: set[str] = set()  # one-off commands that keep running until finish_oneoff
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
            state="running", exit_code=None,
            labels={lbl.SPEC_HASH: spec.spec_hash} if spec.spec_hash else {})
        self.containers[container.id] = container
        self.calls.append(("start", spec.version))
        if spec.pool.startswith("hook-"):  # a one-off: runs its command and exits at once
            self.calls.append(("hook", spec.pool))
            command = (spec.command or ("",))[0]
            self.oneoff_env = dict(spec.env)
            if command not in self.blocking:  # else it runs until the test ends it (`finish_oneoff`)
                container = self.containers[container.id] = replace(
                    container, state="exited", exit_code=self.oneoffs.get(command, 0))
        elif spec.image in self.failing_images:  # it starts, then exits at once, as a crashing app does
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

    async def image_id(self, image: str) -> str:
        if image in self.missing_images:
            raise ImageNotFound(image)
        return f"sha256:{image}#{self.rebuilt.get(image, 0)}"

    async def image_labels(self, image: str) -> dict[str, str]:
        if image in self.missing_images:
            raise ImageNotFound(image)
        return dict(self.labels.get(image, {}))

    async def exec(self, container_id: str, command: tuple[str, ...], env: dict[str, str]) -> tuple[int, str]:
        container = await self.inspect(container_id)
        self.execs.append((container.version, tuple(command), dict(env)))
        return self.oneoffs.get(command[0], 0), f"ran {' '.join(command)}"

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        container = self.containers.get(container_id)
        return f"{container.name} says hello" if container is not None else ""

    async def wait_healthy(self, backend: FakeBackend, container_id: str, *args: object,
                           **kwargs: object) -> None:
        """Stands in for readiness.wait_healthy: healthy unless the container exited."""
        container = await self.inspect(container_id)
        if not container.running:
            raise ContainerFailed(container_id, container.state, container.exit_code, "crashing on purpose")

    def finish_oneoff(self, container_id: str, exit_code: int = 0) -> None:
        self.containers[container_id] = replace(self.containers[container_id], state="exited",
                                                exit_code=exit_code)

    def running(self, version: str | None = None) -> list[Container]:
        return [c for c in self.containers.values()
                if c.running and (version is None or c.version == version)]
