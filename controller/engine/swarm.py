"""The Swarm engine: each slot is a one-replica Swarm service labelled `turnout.*`.

Driven through a manager's API with the SDK's `client.services` (create, `Service.scale`, remove; never
the low-level update that replaces a whole spec). A slot's port is published in host mode, so each task
gets an ephemeral port on its node and the proxy reaches it at `<node address>:<port>`. Swarm emits no
task events, so the current task is found by polling (`inspect`, which readiness calls). A slot that
failed says why from its task's `Status.Err` ("No such image: ...", "task: non-zero exit (3)").

Turnout decides when a slot is replaced, so tasks never restart on their own (restart condition
"none"), as containers on one host run with restart policy "no". Swarm has no exec through a manager:
`exec` hooks are refused with a clear error. Images are looked up on the manager (they must be on every
node: Turnout never pulls; each node gets them from the team's registry).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

import docker.errors
import structlog
from docker.types import EndpointSpec, Mount, Resources, RestartPolicy, ServiceMode
from docker.utils import parse_bytes

from controller import labels as lbl
from controller.errors import ContainerNotFound, DockerError, ImageNotFound

from .base import Container, ContainerSpec, slug
from .docker import LOG_CONFIG
from .sdk import SdkBackend, translated

log = structlog.get_logger(__name__)

# Task states (swarmkit's) as the container states the rest of Turnout knows.
_RUNNING = frozenset({"running"})
_EXITED = frozenset({"complete", "shutdown", "failed"})  # the container ran and stopped: an exit code
_DEAD = frozenset({"rejected", "orphaned", "remove"})  # never ran, or lost with its node
# How often stop() and restart() look at the tasks while waiting; how long beyond the grace a stop
# may take; how long a scaled-up slot may take to get its new task from the orchestrator.
POLL_INTERVAL = 0.1
STOP_SLACK = 30.0
NEW_TASK_WAIT = 30.0
NODE_STATE_TTL = 1.0  # how long the nodes' states read once serve every slot's inspect
_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


def service_name(service: str, version: str) -> str:
    """turnout-<service>-<version>-<short random>: a Swarm service name ([a-z0-9-], at most 63)."""
    parts = (_NAME_UNSAFE.sub("-", slug(text, 24)).strip("-") or "x" for text in (service, version))
    return f"turnout-{'-'.join(parts)}-{secrets.token_hex(3)}"


def _created_at(task: Mapping[str, Any]) -> tuple[str, int]:
    # RFC 3339 with nanoseconds whose trailing zeros Go trims: compare the seconds, then the fraction.
    stamp = str(task.get("CreatedAt") or "")
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, int((fraction + "000000000")[:9] or 0)


def current_task(tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The slot's newest task (a scaled-up slot gets a new one; old ones stay in history)."""
    return max(tasks, key=_created_at, default=None)


def _task_port(task: Mapping[str, Any], target: int | None) -> int | None:
    for port in ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or ():
        if port.get("PublishMode") == "host" and port.get("TargetPort") == target \
                and port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


def _replicas(attrs: Mapping[str, Any]) -> int | None:
    return (((attrs.get("Spec") or {}).get("Mode") or {}).get("Replicated") or {}).get("Replicas")


def to_container(attrs: Mapping[str, Any], task: Mapping[str, Any] | None,
                 node_address: str | None, node_lost: bool = False) -> Container:
    """A slot as a Container: the service's identity and labels, its current task's state and address.
    `node_lost`: the task's node is not ready (its engine stopped, the machine gone); its task may still
    read "running", as the node can no longer report otherwise, and the slot is dead."""
    spec = attrs.get("Spec") or {}
    labels = dict(spec.get("Labels") or {})
    port = labels.get(lbl.PORT)
    status = (task or {}).get("Status") or {}
    task_state = status.get("State") or "new"
    if node_lost and task_state not in _EXITED:
        state = "dead"
    elif task_state in _RUNNING:
        state = "running"
    elif task_state in _EXITED:
        state = "exited"
    elif task_state in _DEAD:
        state = "dead"
    elif task is None and _replicas(attrs) == 0:  # stopped, and its last task gone from the history
        state = "exited"
    else:  # new, pending, assigned, accepted, preparing, ready, starting: on its way
        state = "created"
    host_port = _task_port(task or {}, int(port)) if port and port.isdigit() else None
    exit_code = (status.get("ContainerStatus") or {}).get("ExitCode") if state in ("exited", "dead") else None
    return Container(
        id=attrs["ID"],
        name=spec.get("Name") or "",
        service=labels.get(lbl.SERVICE, ""),
        version=labels.get(lbl.VERSION, ""),
        pool=labels.get(lbl.POOL, ""),
        deployment_id=labels.get(lbl.DEPLOYMENT, ""),
        image=((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image") or "",
        address=f"{node_address}:{host_port}" if node_address and host_port and state == "running" else None,
        state=state,
        exit_code=exit_code,
        labels=labels,
    )


class SwarmBackend(SdkBackend):
    """Starts and manages the slots (one-replica services) of one Turnout `owner` on a Swarm.

    `host` is a manager's API address ("unix:///run/turnout-lab/n1.sock", "tcp://10.0.0.5:2376"); None
    takes it from the environment. `client` (a `docker.DockerClient`) is for tests; a client passed in
    belongs to the caller.
    """

    engine = "the Swarm manager"

    def __init__(self, owner: str, host: str | None = None, client: Any | None = None,
                 extra_labels: Mapping[str, str] | None = None) -> None:
        super().__init__(owner, client, extra_labels, host)
        self._node_addresses: dict[str, str] = {}  # node ID -> its address (a node keeps its address)
        self._lost_nodes: tuple[float, frozenset[str]] = (-NODE_STATE_TTL, frozenset())  # (read at, IDs)
        self._warned: set[str] = set()
        self._log = log.bind(owner=owner, engine="swarm")

    # -- public API (async; every SDK call runs in a thread) ------------------------------------------

    async def start(self, spec: ContainerSpec) -> Container:
        """Create the slot's service; it returns before the task runs (readiness polls `inspect`)."""
        return await self._run(self._start_sync, spec)

    async def inspect(self, container_id: str) -> Container:
        return await self._run(self._inspect_sync, container_id)

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """The slot's last output lines, then its task's error when it has one."""
        return await self._run(self._logs_tail_sync, container_id, lines)

    async def stop(self, container_id: str, timeout: float = 10) -> Container:
        """Scale the slot to 0 and wait for its task to end. The SIGTERM grace is the one the slot was
        started with (`ContainerSpec.stop_timeout`): Swarm reads it from the task's spec, not here."""
        return await self._run(self._stop_sync, container_id, timeout)

    async def restart(self, container_id: str) -> Container:
        """Scale a stopped slot back to 1: a new task, likely on a new port (or node)."""
        return await self._run(self._restart_sync, container_id)

    async def remove(self, container_id: str) -> None:
        await self._run(self._remove_sync, container_id)

    async def list(self, service: str | None = None, all: bool = True) -> list[Container]:
        return await self._run(self._list_sync, service, all)

    async def image_exists(self, image: str) -> bool:
        """Whether `image` is on the manager (never pulls)."""
        try:
            await self.image_id(image)
        except ImageNotFound:
            return False
        return True

    async def exec(self, container_id: str, command: Sequence[str],
                   env: Mapping[str, str]) -> tuple[int, str]:
        raise DockerError("exec hooks are not supported with [engine] kind = \"swarm\" (a manager cannot "
                          "exec in a task on another node): use a oneoff or http hook")

    async def image_id(self, image: str) -> str:
        return await self._run(self._image_sync, image, "id")

    async def image_labels(self, image: str) -> dict[str, str]:
        return await self._run(self._image_sync, image, "labels")

    # -- blocking implementations -----------------------------------------------------------------

    def _create_kwargs(self, spec: ContainerSpec, name: str) -> dict[str, Any]:
        labels = self._labels(spec)
        kwargs: dict[str, Any] = {
            "image": spec.image,
            "name": name,
            "labels": labels,
            "container_labels": labels,
            "env": [f"{k}={v}" for k, v in spec.env.items()],
            "mode": ServiceMode("replicated", replicas=1),
            # Host mode: an ephemeral port on the task's node, no routing mesh in between.
            "endpoint_spec": EndpointSpec(ports=[{"Protocol": "tcp", "TargetPort": spec.port,
                                                  "PublishMode": "host"}]),
            "restart_policy": RestartPolicy(condition="none"),
            "log_driver": LOG_CONFIG["type"],
            "log_driver_options": dict(LOG_CONFIG["config"]),
        }
        if spec.command is not None:
            kwargs["args"] = list(spec.command)  # like `docker run IMAGE ARGS`: the image's entrypoint stays
        if spec.volumes:
            kwargs["mounts"] = [Mount.parse_mount_string(v) for v in spec.volumes]
        if spec.stop_timeout is not None:
            kwargs["stop_grace_period"] = int(spec.stop_timeout * 1_000_000_000)
        if spec.init:
            kwargs["init"] = True
        if spec.cap_drop:
            kwargs["cap_drop"] = list(spec.cap_drop)
        if spec.cap_add:
            kwargs["cap_add"] = list(spec.cap_add)
        resources = Resources(
            mem_limit=parse_bytes(spec.mem_limit) if isinstance(spec.mem_limit, str) else spec.mem_limit,
            cpu_limit=int(spec.cpus * 1_000_000_000) if spec.cpus is not None else None)
        if spec.pids_limit is not None:  # API 1.41's Resources.Limits.Pids (docker-py has no argument)
            resources.setdefault("Limits", {})["Pids"] = spec.pids_limit
        if resources:
            kwargs["resources"] = resources
        if spec.security_opt:  # said once, not dropped silently
            self._warn_once("security_opt", "swarm.option_not_applied", option="security_opt",
                            values=list(spec.security_opt),
                            why="Swarm services take no security options (no-new-privileges) in API 1.41")
        return kwargs

    def _warn_once(self, key: str, event: str, **fields: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._log.warning(event, **fields)

    def _start_sync(self, spec: ContainerSpec) -> Container:
        client = self._docker()
        name = service_name(spec.service, spec.version)
        # The image is checked here, as `containers.create` does on one host: a task would only be rejected.
        self._image_sync(spec.image, "id")
        with translated(f"creating service {name} from {spec.image}"):
            created = client.services.create(**self._create_kwargs(spec, name))
        container = to_container(created.attrs, None, None)
        self._log.info("slot.started", service=spec.service, version=spec.version, pool=spec.pool,
                       deployment_id=spec.deployment_id, slot_id=container.short_id, slot_name=name)
        return container

    def _get(self, service_id: str) -> Any:
        with translated(f"inspecting service {service_id[:12]}", service_id):
            return self._docker().services.get(service_id)

    def _get_ours(self, service_id: str, action: str) -> Any:
        found = self._get(service_id)
        self._check_ours((found.attrs.get("Spec") or {}).get("Labels"), action, f"service {service_id[:12]}")
        return found

    def _tasks(self, found: Any) -> list[Mapping[str, Any]]:
        with translated(f"listing the tasks of service {found.id[:12]}", found.id):
            return list(found.tasks())

    def _task(self, found: Any) -> Mapping[str, Any] | None:
        return current_task(self._tasks(found))

    def _node_address(self, node_id: str | None) -> str | None:
        if not node_id:
            return None
        if node_id not in self._node_addresses:
            with translated(f"inspecting node {node_id[:12]}"):
                status = self._docker().nodes.get(node_id).attrs.get("Status") or {}
            if not status.get("Addr"):
                return None
            self._node_addresses[node_id] = status["Addr"]
        return self._node_addresses[node_id]

    def _nodes_lost(self) -> frozenset[str]:
        """The IDs of the nodes that are not ready (read at most once a NODE_STATE_TTL)."""
        read_at, lost = self._lost_nodes
        if time.monotonic() - read_at >= NODE_STATE_TTL:
            with translated("listing the Swarm's nodes"):
                nodes = self._docker().nodes.list()
            lost = frozenset(node.id for node in nodes
                             if ((node.attrs.get("Status") or {}).get("State")) != "ready")
            for node_id in lost - self._lost_nodes[1]:
                self._log.warning("swarm.node_lost", node_id=node_id[:12])
            self._lost_nodes = (time.monotonic(), lost)
        return lost

    def _container(self, found: Any) -> Container:
        task = self._task(found)
        node_id = task.get("NodeID") if task else None
        address = self._node_address(node_id) if task else None
        return to_container(found.attrs, task, address, bool(node_id) and node_id in self._nodes_lost())

    def _task_lost(self, found: Any) -> bool:
        task = self._task(found)
        return bool(task and task.get("NodeID") in self._nodes_lost()
                    and ((task.get("Status") or {}).get("State")) not in _EXITED)

    def _inspect_sync(self, service_id: str) -> Container:
        return self._container(self._get(service_id))

    def _logs_tail_sync(self, service_id: str, lines: int) -> str:
        found = self._get(service_id)
        with translated(f"reading logs of service {service_id[:12]}", service_id):
            raw = b"".join(found.logs(stdout=True, stderr=True, tail=max(0, int(lines))))
        text = raw.decode("utf-8", errors="replace").rstrip("\n")
        status = (self._task(found) or {}).get("Status") or {}
        if status.get("Err"):
            text = "\n".join(filter(None, (text, f"task {status.get('State')}: {status['Err']}")))
        return text

    def _scale(self, found: Any, replicas: int, action: str) -> None:
        with translated(f"{action} service {found.id[:12]}", found.id):
            try:
                found.scale(replicas)
            except docker.errors.APIError as exc:
                if "out of sequence" not in str(exc):
                    raise
                found.reload()  # someone updated it since we read it (its version moved): once more
                found.scale(replicas)

    def _stop_sync(self, service_id: str, timeout: float) -> Container:
        found = self._get_ours(service_id, "stop")
        self._scale(found, 0, "stopping")
        # Read with 0 replicas from now on: Swarm deletes a scaled-down task soon after it ends, and a
        # slot with neither replicas nor tasks is stopped (its exit code then unknown, unless seen first).
        with translated(f"inspecting service {service_id[:12]}", service_id):
            found.reload()
        deadline = time.monotonic() + max(0.0, timeout) + STOP_SLACK
        while True:
            container = self._container(found)
            if container.state in ("exited", "dead"):
                break
            if time.monotonic() > deadline:
                raise DockerError(f"stopping service {service_id[:12]}: its task still runs "
                                  f"{timeout + STOP_SLACK:g}s after scaling to 0")
            time.sleep(POLL_INTERVAL)
        self._log.info("slot.stopped", service=container.service, version=container.version,
                       slot_id=container.short_id, exit_code=container.exit_code)
        return container

    def _restart_sync(self, service_id: str) -> Container:
        found = self._get_ours(service_id, "restart")
        if _replicas(found.attrs) == 1 and self._task_lost(found):
            # Its node is gone and Swarm does not replace the task (restart condition "none"): scaling
            # to 0 and back to 1 makes a new task, which the scheduler places on a ready node.
            self._log.warning("slot.replacing_lost_task", slot_id=service_id[:12])
            self._scale(found, 0, "restarting")
            with translated(f"inspecting service {service_id[:12]}", service_id):
                found.reload()
        if _replicas(found.attrs) != 1:
            # Until the orchestrator adds the new task, the newest is the stopped one: wait for the new.
            before = {task["ID"] for task in self._tasks(found)}
            self._scale(found, 1, "restarting")
            deadline = time.monotonic() + NEW_TASK_WAIT
            while not [task for task in self._tasks(found) if task["ID"] not in before]:
                if time.monotonic() > deadline:
                    raise DockerError(f"restarting service {service_id[:12]}: no new task "
                                      f"{NEW_TASK_WAIT:g}s after scaling to 1")
                time.sleep(POLL_INTERVAL)
            found.reload()
        container = self._container(found)
        self._log.info("slot.restarted", service=container.service, version=container.version,
                       slot_id=container.short_id, state=container.state)
        return container

    def _remove_sync(self, service_id: str) -> None:
        try:
            found = self._get_ours(service_id, "remove")
            with translated(f"removing service {service_id[:12]}", service_id):
                found.remove()
        except ContainerNotFound:
            self._log.debug("slot.already_removed", slot_id=service_id[:12])
            return
        labels = found.attrs["Spec"].get("Labels") or {}
        self._log.info("slot.removed", service=labels.get(lbl.SERVICE), version=labels.get(lbl.VERSION),
                       slot_id=service_id[:12])

    def _list_sync(self, service: str | None, all_: bool) -> list[Container]:
        with translated("listing services"):
            found = self._docker().services.list(filters=lbl.list_filters(self.owner, service))
        containers = []
        for one in found:
            if not lbl.is_ours((one.attrs.get("Spec") or {}).get("Labels"), self.owner):
                continue
            try:
                container = self._container(one)
            except ContainerNotFound:
                continue  # removed between the list and its tasks
            if all_ or container.running:
                containers.append(container)
        return sorted(containers, key=lambda c: (c.service, c.version, c.name))

    def _image_sync(self, image: str, what: str) -> Any:
        try:
            with translated(f"looking up image {image} on the Swarm manager"):
                found = self._docker().images.get(image)
        except DockerError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound | docker.errors.NotFound):
                raise ImageNotFound(image) from exc.__cause__
            raise
        return str(found.id) if what == "id" else dict(found.labels or {})
