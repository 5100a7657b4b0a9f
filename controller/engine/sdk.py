"""What both engines share about the Docker SDK: its errors turned into ours, and the client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests

from controller.errors import ContainerNotFound, DockerError


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
