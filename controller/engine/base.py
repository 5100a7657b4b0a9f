"""What the controller needs from an engine, whichever runs the containers.

A *slot* is one running copy of a service's version: a container on one Docker host
(`controller.engine.docker.DockerBackend`) or a one-replica Swarm service (`controller.engine.swarm.
SwarmBackend`). Strategies, the journal and recovery see only `ContainerSpec` (what to start), `Container`
(what the engine says about a slot; `id` is the slot's handle, `address` where the proxy reaches it) and
the `Engine` protocol below. `make_engine` picks the implementation named by `[engine] kind`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from controller.hardening import cap_add_problem, cap_drop_problem, security_opt_problem

if TYPE_CHECKING:
    from controller.config.model import EngineConfig

_SLUG_UNSAFE = re.compile(r"[^a-z0-9_.-]+")


def copy_labels(mapping: Mapping[str, str] | None) -> dict[str, str]:
    # Plain dict copies (not MappingProxyType): callers cannot change them from outside, and
    # dataclasses.asdict / json still work on the result (a mappingproxy cannot be deep-copied).
    return dict(mapping or {})


@dataclass(frozen=True, kw_only=True)
class ContainerSpec:
    """What to start: one container of `service` at `version`, listening on container `port`."""

    service: str
    version: str
    image: str
    port: int
    deployment_id: str
    pool: str
    env: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] | None = None
    volumes: Sequence[str] = ()  # binds "source:target[:mode]": one source may be mounted at two targets
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    mem_limit: str | int | None = None  # docker notation, e.g. "256m", or bytes
    cpus: float | None = None
    # Hardening (the service's config gives controller/hardening.py's defaults): None/() sets nothing.
    pids_limit: int | None = None
    cap_drop: Sequence[str] = ()
    cap_add: Sequence[str] = ()
    security_opt: Sequence[str] = ()
    init: bool = False  # Docker's --init
    # The container's own StopTimeout (seconds; None: Docker's 10 s), for a `docker stop` or engine
    # shutdown by others; Turnout's own stops give theirs (DockerBackend.stop). Swarm reads it as the
    # task's StopGracePeriod, which its own stops use too.
    stop_timeout: float | None = None
    spec_hash: str = ""  # labelled turnout.spec-hash (controller/apply/spec.py)

    def __post_init__(self) -> None:
        for name in ("service", "version", "image", "pool"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"ContainerSpec.{name} must be a non-empty string, got {value!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"ContainerSpec.port must be an int in 1..65535, got {self.port!r}")
        if self.cpus is not None and not self.cpus > 0:
            raise ValueError(f"ContainerSpec.cpus must be > 0, got {self.cpus!r}")
        if isinstance(self.command, str):
            raise ValueError("ContainerSpec.command must be a list of arguments, not a string")
        if self.pids_limit is not None and (isinstance(self.pids_limit, bool) or not isinstance(
                self.pids_limit, int) or self.pids_limit < 1):
            raise ValueError(f"ContainerSpec.pids_limit must be an int >= 1 or None, got {self.pids_limit!r}")
        # Checked again here (the config reader did first): nothing reaches the engine that grants more
        # than a plain `docker run` would.
        for name, problem_of in (("cap_drop", cap_drop_problem), ("cap_add", cap_add_problem),
                                 ("security_opt", security_opt_problem)):
            values = getattr(self, name)
            if isinstance(values, str) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"ContainerSpec.{name} must be a list of strings, got {values!r}")
            for value in values:
                if (problem := problem_of(value)) is not None:
                    raise ValueError(f"ContainerSpec.{name}: {problem}")
            object.__setattr__(self, name, tuple(values))
        if self.stop_timeout is not None and (isinstance(self.stop_timeout, bool) or not isinstance(
                self.stop_timeout, int | float) or not 0 <= self.stop_timeout < 2**31):
            raise ValueError(f"ContainerSpec.stop_timeout must be seconds >= 0 or None, "
                             f"got {self.stop_timeout!r}")
        if isinstance(self.volumes, str | Mapping):
            raise ValueError("ContainerSpec.volumes must be a list of 'source:target[:mode]' binds")
        # Copy what we were given, so the caller's later changes never reach a frozen spec.
        object.__setattr__(self, "env", copy_labels(self.env))
        object.__setattr__(self, "volumes", tuple(self.volumes))
        object.__setattr__(self, "extra_labels", copy_labels(self.extra_labels))
        if self.command is not None:
            object.__setattr__(self, "command", tuple(self.command))


@dataclass(frozen=True, kw_only=True)
class Container:
    """What the engine says about one of our containers at the moment it was read."""

    id: str
    name: str
    service: str
    version: str
    pool: str
    deployment_id: str
    image: str
    address: str | None  # "127.0.0.1:HOSTPORT", None when no port is published (e.g. already exited)
    state: str  # engine status: created, running, exited, dead, ...
    exit_code: int | None  # set once the container has stopped
    labels: dict[str, str] = field(compare=False)  # kept out of eq/hash so a Container stays hashable

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        return self.state == "running"


def slug(text: str, max_len: int = 32) -> str:
    """A container-name-safe form of `text` (lowercase, [a-z0-9_.-], never empty)."""
    cleaned = _SLUG_UNSAFE.sub("-", text.lower()).strip("-_.")[:max_len].strip("-_.")
    return cleaned or "x"


def container_name(service: str, version: str) -> str:
    """turnout-<service>-<version-slug>-<short random>, unique enough to start many beside each other."""
    return f"turnout-{slug(service)}-{slug(version)}-{secrets.token_hex(3)}"


class Engine(Protocol):
    """The calls the controller makes on an engine. Every one is async; errors are `controller.errors`
    types (ContainerNotFound, ImageNotFound, DockerError), never the SDK's."""

    owner: str

    async def start(self, spec: ContainerSpec) -> Container:
        """Start one slot for `spec`; it may not have an address yet (readiness polls `inspect`)."""
        ...

    async def inspect(self, container_id: str) -> Container: ...

    async def logs_tail(self, container_id: str, lines: int = 20) -> str:
        """The slot's last output lines and, where the engine has one, why it failed."""
        ...

    async def stop(self, container_id: str, timeout: float = 10) -> Container: ...

    async def restart(self, container_id: str) -> Container: ...

    async def remove(self, container_id: str) -> None: ...

    async def list(self, service: str | None = None, all: bool = True) -> list[Container]: ...

    async def image_exists(self, image: str) -> bool: ...

    async def exec(self, container_id: str, command: Sequence[str],
                   env: Mapping[str, str]) -> tuple[int, str]: ...

    async def image_id(self, image: str) -> str: ...

    async def image_labels(self, image: str) -> dict[str, str]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def make_engine(config: EngineConfig, owner: str, extra_labels: Mapping[str, str] | None = None) -> Engine:
    """The engine `[engine]` names, for the Turnout instance `owner`."""
    if config.kind == "swarm":
        from controller.engine.swarm import SwarmBackend
        return SwarmBackend(owner=owner, host=config.host, extra_labels=extra_labels)
    from controller.engine.docker import DockerBackend
    return DockerBackend(owner=owner, extra_labels=extra_labels, host=config.host)
