"""The Docker engine: one host's containers are the slots (`controller.engine.base`).

`DockerBackend` starts, inspects, stops, removes and lists *our* containers (see `controller.labels`).
Every SDK call is blocking, so each public method runs it in a worker thread (`asyncio.to_thread`).
SDK exceptions never leave this module: they become `controller.errors` types.

Nothing is ever pulled: containers are created with `containers.create` (which, unlike `run`, does not
pull), so a missing image fails at once with `ImageNotFound`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import docker
import docker.errors
import structlog
from docker.models.containers import _create_container_args
from docker.types import LogConfig

from controller import labels as lbl
from controller.errors import ContainerNotFound, DockerError, ImageNotFound

from .base import Container, ContainerSpec, container_name
from .sdk import SdkBackend, translated

log = structlog.get_logger(__name__)

# Containers are reachable only from this host; the proxy forwards to them on loopback.
PUBLISH_HOST_IP = "127.0.0.1"
# Size-capped json-file logs, so a chatty app cannot fill the disk.
LOG_CONFIG = {"type": "json-file", "config": {"max-size": "10m", "max-file": "3"}}

# The only options ever passed to `containers.create`. Anything not listed here is not settable through
# a ContainerSpec on purpose (no privileged, no host network, no pulls, no restart policy: Turnout
# itself decides when a container is replaced). If you ever add `healthcheck`: its intervals are
# nanoseconds in docker-py.
CREATE_OPTIONS = frozenset(
    {
        "image",  # ContainerSpec.image, must already be on the host
        "name",  # turnout-<service>-<version-slug>-<random>
        "labels",  # controller.labels namespace + backend and spec extras
        "ports",  # {"<port>/tcp": ("127.0.0.1", None)}: ephemeral host port on loopback only
        "log_config",  # LOG_CONFIG
        "environment",  # ContainerSpec.env
        "command",  # ContainerSpec.command (None keeps the image's CMD)
        "volumes",  # ContainerSpec.volumes as "source:target[:mode]" binds
        "mem_limit",  # ContainerSpec.mem_limit
        "nano_cpus",  # ContainerSpec.cpus * 1e9
        "pids_limit",  # ContainerSpec.pids_limit
        "cap_drop",  # ContainerSpec.cap_drop (any capability, or ALL)
        "cap_add",  # ContainerSpec.cap_add: only capabilities of Docker's default set
        "security_opt",  # ContainerSpec.security_opt: no-new-privileges, an AppArmor profile
        "init",  # ContainerSpec.init: Docker's --init (a tiny init as PID 1 that forwards signals)
        "stop_timeout",  # ContainerSpec.stop_timeout, whole seconds: what a `docker stop` by others waits
        "restart_policy",  # always {"Name": "no"}
        "detach",
    }
)

def _create(client: Any, kwargs: dict[str, Any]) -> Any:
    """`client.containers.create(**kwargs)`, plus `stop_timeout`, which the engine's create takes but
    docker-py's `containers.create` does not: the same steps it takes, with that one argument added."""
    kwargs = dict(kwargs)
    stop_timeout = kwargs.pop("stop_timeout", None)
    args = _create_container_args({**kwargs, "version": client.api._version})
    if stop_timeout is not None:
        args["stop_timeout"] = stop_timeout
    return client.containers.get(client.api.create_container(**args)["Id"])


def _published_address(attrs: Mapping[str, Any], port: str | None) -> str | None:
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = ports.get(f"{port}/tcp") if port else None
    for binding in bindings or ():
        if binding.get("HostIp") == PUBLISH_HOST_IP and binding.get("HostPort"):
            return f"{PUBLISH_HOST_IP}:{binding['HostPort']}"
    return None


def _to_container(attrs: Mapping[str, Any]) -> Container:
    config = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    labels = dict(config.get("Labels") or {})
    status = state.get("Status") or "unknown"
    stopped = status in {"exited", "dead"}
    return Container(
        id=attrs["Id"],
        name=(attrs.get("Name") or "").lstrip("/"),
        service=labels.get(lbl.SERVICE, ""),
        version=labels.get(lbl.VERSION, ""),
        pool=labels.get(lbl.POOL, ""),
        deployment_id=labels.get(lbl.DEPLOYMENT, ""),
        image=config.get("Image") or "",
        address=_published_address(attrs, labels.get(lbl.PORT)),
        state=status,
        exit_code=state.get("ExitCode") if stopped else None,
        labels=labels,
    )


class DockerBackend(SdkBackend):
    """Starts and manages the containers belonging to one Turnout `owner` on one Docker engine.

    `client` is a `docker.DockerClient`; when omitted one is made on first use for `host`, or from the
    environment when `host` is None. `extra_labels` go on every container this backend starts.
    """

    def __init__(
        self,
        owner: str,
        client: Any | None = None,
        extra_labels: Mapping[str, str] | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(owner, client, extra_labels, host)
        self._log = log.bind(owner=owner)

    # -- public API (async; every SDK call runs in a thread) ------------------------------------------

    async def start(self, spec: ContainerSpec) -> Container:
        """Create and start a container for `spec`; return it as read after start (with its address)."""
        return await self._run(self._start_sync, spec)

    async def inspect(self, container_id: str) -> Container:
        """Read the container's current state from the engine (any container; read-only)."""
        return await self._run(self._inspect_sync, container_id)

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """The last `lines` lines of stdout and stderr, decoded (invalid bytes replaced)."""
        return await self._run(self._logs_tail_sync, container_id, lines)

    # `timeout` is the engine's SIGTERM grace period, not a limit on this call.
    async def stop(self, container_id: str, timeout: float = 10) -> Container:
        """Stop one of our containers (SIGTERM, then SIGKILL after `timeout` s); refuse others'."""
        return await self._run(self._stop_sync, container_id, timeout)

    async def restart(self, container_id: str) -> Container:
        """Start one of our stopped containers again (a running one is left as is); refuse others'.
        The published host port is ephemeral, so the returned address may differ from before."""
        return await self._run(self._restart_sync, container_id)

    async def remove(self, container_id: str) -> None:
        """Remove one of our containers, stopping it hard if it still runs; refuse others'.
        Removing a container that is already gone is a no-op."""
        await self._run(self._remove_sync, container_id)

    async def list(self, service: str | None = None, all: bool = True) -> list[Container]:
        """Our containers (managed and owned by us), optionally of one service; stopped ones too if `all`."""
        return await self._run(self._list_sync, service, all)

    async def image_exists(self, image: str) -> bool:
        """Whether `image` is present locally (never pulls)."""
        return await self._run(self._image_exists_sync, image)

    async def exec(self, container_id: str, command: Sequence[str],
                   env: Mapping[str, str]) -> tuple[int, str]:
        """Run `command` inside one of our running containers; (exit code, its output)."""
        return await self._run(self._exec_sync, container_id, tuple(command), dict(env))

    async def image_id(self, image: str) -> str:
        """The ID of the local image `image` names ("sha256:..."): what a tag points at now, so a tag
        rebuilt since shows as a new ID. ImageNotFound when absent (never pulls)."""
        return await self._run(self._image_id_sync, image)

    async def image_labels(self, image: str) -> dict[str, str]:
        """The labels of the local image `image` (e.g. turnout.schema). ImageNotFound when absent."""
        return await self._run(self._image_labels_sync, image)

    # -- blocking implementations -----------------------------------------------------------------

    def _create_kwargs(self, spec: ContainerSpec, name: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "image": spec.image,
            "name": name,
            "labels": self._labels(spec),
            "ports": {f"{spec.port}/tcp": (PUBLISH_HOST_IP, None)},
            "log_config": LogConfig(**LOG_CONFIG),
            "environment": dict(spec.env),
            "command": list(spec.command) if spec.command is not None else None,
            "restart_policy": {"Name": "no"},
            "detach": True,
        }
        if spec.volumes:
            kwargs["volumes"] = list(spec.volumes)
        if spec.mem_limit is not None:
            kwargs["mem_limit"] = spec.mem_limit
        if spec.cpus is not None:
            kwargs["nano_cpus"] = int(spec.cpus * 1_000_000_000)
        if spec.pids_limit is not None:
            kwargs["pids_limit"] = spec.pids_limit
        for name in ("cap_drop", "cap_add", "security_opt"):
            if getattr(spec, name):
                kwargs[name] = list(getattr(spec, name))
        if spec.init:
            kwargs["init"] = True
        if spec.stop_timeout is not None:  # whole seconds; rounded up as DockerBackend.stop does
            kwargs["stop_timeout"] = math.ceil(spec.stop_timeout)
        unexpected = kwargs.keys() - CREATE_OPTIONS
        if unexpected:  # a programming error here, never user input
            raise RuntimeError(f"create option(s) outside the allowlist: {sorted(unexpected)}")
        return kwargs

    def _start_sync(self, spec: ContainerSpec) -> Container:
        client = self._docker()
        name = container_name(spec.service, spec.version)
        try:
            with translated(f"creating container {name} from {spec.image}"):
                created = _create(client, self._create_kwargs(spec, name))
        except DockerError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound):
                raise ImageNotFound(spec.image) from exc.__cause__
            raise
        try:
            with translated(f"starting container {name}", created.id):
                created.start()
                created.reload()  # the published host port is known only after start
        except DockerError:
            self._discard(created)  # do not leave a created-but-unstartable container behind
            raise
        container = _to_container(created.attrs)
        self._log.info(
            "container.started",
            service=spec.service,
            version=spec.version,
            pool=spec.pool,
            deployment_id=spec.deployment_id,
            container_id=container.short_id,
            container_name=container.name,
            address=container.address,
            state=container.state,
        )
        return container

    def _discard(self, created: Any) -> None:
        try:
            created.remove(force=True, v=True)
        except docker.errors.DockerException as exc:
            self._log.warning("container.discard_failed", container_id=created.id[:12], error=str(exc))

    def _get(self, container_id: str) -> Any:
        with translated(f"inspecting container {container_id[:12]}", container_id):
            return self._docker().containers.get(container_id)  # `get` is a fresh inspect

    def _get_ours(self, container_id: str, action: str) -> Any:
        found = self._get(container_id)
        self._check_ours(found.labels, action, f"container {container_id[:12]}")
        return found

    def _inspect_sync(self, container_id: str) -> Container:
        return _to_container(self._get(container_id).attrs)

    def _logs_tail_sync(self, container_id: str, lines: int) -> str:
        found = self._get(container_id)
        with translated(f"reading logs of container {container_id[:12]}", container_id):
            raw = found.logs(stdout=True, stderr=True, tail=max(0, int(lines)))
        return raw.decode("utf-8", errors="replace").rstrip("\n")

    def _stop_sync(self, container_id: str, timeout: float) -> Container:
        found = self._get_ours(container_id, "stop")
        with translated(f"stopping container {container_id[:12]}", container_id):
            # The engine takes whole seconds; round up so a short timeout never becomes 0 (instant kill).
            found.stop(timeout=max(0, math.ceil(timeout)))
            found.reload()
        container = _to_container(found.attrs)
        self._log.info(
            "container.stopped",
            service=container.service,
            version=container.version,
            container_id=container.short_id,
            exit_code=container.exit_code,
        )
        return container

    def _restart_sync(self, container_id: str) -> Container:
        found = self._get_ours(container_id, "restart")
        if found.status != "running":
            with translated(f"restarting container {container_id[:12]}", container_id):
                found.start()
                found.reload()  # a new host port may have been assigned
        container = _to_container(found.attrs)
        self._log.info(
            "container.restarted",
            service=container.service,
            version=container.version,
            container_id=container.short_id,
            address=container.address,
            state=container.state,
        )
        return container

    def _remove_sync(self, container_id: str) -> None:
        try:
            found = self._get_ours(container_id, "remove")
            with translated(f"removing container {container_id[:12]}", container_id):
                found.remove(force=True, v=True)  # v: anonymous volumes go with it
        except ContainerNotFound:
            self._log.debug("container.already_removed", container_id=container_id[:12])
            return
        except DockerError as exc:
            if isinstance(exc.__cause__, docker.errors.APIError) and "already in progress" in str(exc):
                return  # a concurrent remove wins; the container goes either way
            raise
        self._log.info(
            "container.removed",
            service=found.labels.get(lbl.SERVICE),
            version=found.labels.get(lbl.VERSION),
            container_id=container_id[:12],
        )

    def _list_sync(self, service: str | None, all_: bool) -> list[Container]:
        with translated("listing containers"):
            # ignore_removed: a container may vanish between the list call and its inspect.
            found = self._docker().containers.list(
                all=all_, filters=lbl.list_filters(self.owner, service), ignore_removed=True
            )
        containers = [_to_container(c.attrs) for c in found if lbl.is_ours(c.labels, self.owner)]
        return sorted(containers, key=lambda c: (c.service, c.version, c.name))

    def _image_exists_sync(self, image: str) -> bool:
        try:
            with translated(f"looking up image {image}"):
                self._docker().images.get(image)
        except DockerError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound | docker.errors.NotFound):
                return False
            raise
        return True

    def _exec_sync(self, container_id: str, command: tuple[str, ...], env: dict[str, str]) -> tuple[int, str]:
        found = self._get_ours(container_id, "exec in")
        with translated(f"running a command in container {container_id[:12]}", container_id):
            result = found.exec_run(list(command), environment=env)
        return int(result.exit_code or 0), (result.output or b"").decode("utf-8", errors="replace")

    def _image_id_sync(self, image: str) -> str:
        try:
            with translated(f"looking up image {image}"):
                return str(self._docker().images.get(image).id)
        except DockerError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound | docker.errors.NotFound):
                raise ImageNotFound(image) from exc.__cause__
            raise

    def _image_labels_sync(self, image: str) -> dict[str, str]:
        try:
            with translated(f"looking up image {image}"):
                return dict(self._docker().images.get(image).labels or {})
        except DockerError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound | docker.errors.NotFound):
                raise ImageNotFound(image) from exc.__cause__
            raise
