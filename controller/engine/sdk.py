"""What both engines share about the Docker SDK: its errors turned into ours, the client, and the backends'
common part (`SdkBackend`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import docker
import docker.errors
import requests

from controller import labels as lbl
from controller.errors import ContainerNotFound, DockerError

from .base import ContainerSpec, copy_labels

T = TypeVar("T")


def client_for(host: str | None) -> Any:
    """A `docker.DockerClient` for `host` (e.g. "unix:///run/x.sock"), or from the environment for None."""
    if host is None:
        return docker.from_env()
    return docker.DockerClient(base_url=host)


@contextmanager
def translated(action: str, container_id: str | None = None) -> Iterator[None]:
    """Turn SDK and transport errors into ours, so callers never need to import docker."""
    try:
        yield
    except docker.errors.NotFound as exc:
        if container_id is not None:
            raise ContainerNotFound(container_id) from exc
        raise DockerError(f"{action}: {exc.explanation or exc}") from exc
    except docker.errors.APIError as exc:
        raise DockerError(f"{action}: {exc.explanation or exc}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerError(f"{action}: Docker engine unreachable or failing ({exc})") from exc


class SdkBackend:
    """What `DockerBackend` and `SwarmBackend` share: the Turnout instance (`owner`) whose slots they
    manage and the labels on every slot, the SDK client (made on first use, in a worker thread, since
    making it may talk to the engine; a client passed in belongs to the caller), every blocking SDK call
    run in a worker thread, and the refusal to change a slot of another owner.

    `engine` names the engine in errors ("connecting to the Docker engine"); `host` is its API address,
    None: from the environment (DOCKER_HOST, the socket). `extra_labels` go on every slot started (tests
    use them to clean up by label)."""

    engine = "the Docker engine"

    def __init__(self, owner: str, client: Any | None, extra_labels: Mapping[str, str] | None,
                 host: str | None) -> None:
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"owner must be a non-empty string, got {owner!r}")
        self.owner = owner
        self.extra_labels = copy_labels(extra_labels)
        # Fail now, not at the first start, if the extras clash with our own keys.
        lbl.labels_for(owner, "check", "check", "", "check", 1, self.extra_labels)
        self._client = client
        self._host = host
        self._owns_client = client is None
        self._client_lock = threading.Lock()

    async def ping(self) -> bool:
        """Whether the engine answers; never raises."""
        try:
            return await self._run(self._ping_sync)
        except DockerError:
            return False

    async def close(self) -> None:
        """Close the SDK client if this backend made it."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def _docker(self) -> Any:
        with self._client_lock:
            if self._client is None:
                with translated(f"connecting to {self.engine}"):
                    self._client = client_for(self._host)
            return self._client

    def _ping_sync(self) -> bool:
        with translated(f"pinging {self.engine}"):
            return bool(self._docker().ping())

    def _labels(self, spec: ContainerSpec) -> dict[str, str]:
        """The labels of the slot `spec` starts: ours, the backend's extras, the spec's."""
        return lbl.labels_for(self.owner, spec.service, spec.version, spec.deployment_id, spec.pool,
                              spec.port, {**self.extra_labels, **spec.extra_labels}, spec.spec_hash)

    def _check_ours(self, labels: Mapping[str, str] | None, action: str, what: str) -> None:
        """Refuse to `action` the slot `what` ("container 0123abcd4567") unless this owner's labels are
        on it."""
        labels = labels or {}
        if not lbl.is_ours(labels, self.owner):
            theirs = labels.get(lbl.OWNER) if labels.get(lbl.MANAGED) == lbl.MANAGED_VALUE else None
            whose = f"owned by {theirs!r}" if theirs else "not managed by Turnout"
            raise DockerError(f"refusing to {action} {what}: it is {whose}, "
                              f"not by this Turnout instance (owner {self.owner!r})")
