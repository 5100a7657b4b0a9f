"""Turnout's exceptions. Each subclasses `TurnoutError` and, where one fits, the stdlib meaning
(`LookupError`, `TimeoutError`), so callers can catch by either. Errors carry what was seen."""

from __future__ import annotations


class TurnoutError(Exception):
    """Base of every error Turnout raises on purpose."""


class DockerError(TurnoutError):
    """The Docker engine refused or failed a request, or we refused to touch a container."""


class ImageNotFound(DockerError, LookupError):
    """The image is not on this host. Turnout never pulls, so this is final."""

    def __init__(self, image: str) -> None:
        self.image = image
        super().__init__(
            f"image {image!r} is not present on this Docker host; Turnout never pulls images, "
            "so build or load it first (e.g. scripts/build-images.sh or `docker load`)"
        )


class ContainerNotFound(DockerError, LookupError):
    """No container with this id (it was removed, or never existed)."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        super().__init__(f"container {container_id[:12]} not found")


def _indent(text: str) -> str:
    return "\n".join(f"  | {line}" for line in text.splitlines()) or "  | (no output)"


class ContainerFailed(DockerError):
    """The container stopped (or vanished) while we waited for it to become ready."""

    def __init__(self, container_id: str, state: str, exit_code: int | None, log_tail: str) -> None:
        self.container_id = container_id
        self.state = state
        self.exit_code = exit_code
        self.log_tail = log_tail
        super().__init__(
            f"container {container_id[:12]} is {state} (exit code {exit_code}) before becoming ready; "
            f"last log lines:\n{_indent(log_tail)}"
        )


class ReadinessTimeout(TurnoutError, TimeoutError):
    """The container kept running but never passed its readiness check before the deadline."""

    def __init__(
        self,
        container_id: str,
        url: str,
        timeout: float,
        probes: int,
        last_probe: str,
        state: str,
        log_tail: str,
        hint: str | None = None,
    ) -> None:
        self.container_id = container_id
        self.url = url
        self.timeout = timeout
        self.probes = probes
        self.last_probe = last_probe
        self.state = state
        self.log_tail = log_tail
        self.hint = hint or (
            "the app must answer GET on the health path with 2xx/3xx; check the health path and the "
            "container port, or raise the readiness timeout if the app is just slow to start"
        )
        super().__init__(
            f"container {container_id[:12]} not ready after {timeout:g}s ({probes} probes of {url}): "
            f"last probe saw {last_probe}; container state {state}. Hint: {self.hint}. "
            f"Last log lines:\n{_indent(log_tail)}"
        )


class UsageError(TurnoutError, ValueError):
    """A request that cannot be carried out as asked (unknown service, nothing to roll back to, ...)."""


class DeployInProgress(TurnoutError):
    def __init__(self, service: str, deployment_id: str) -> None:
        super().__init__(f"a deployment of {service!r} is already in progress ({deployment_id}); "
                         "wait for it, or `turnout promote` / `turnout abort` it")
        self.service, self.deployment_id = service, deployment_id


class DeployFailed(TurnoutError):
    """The new version could not be brought up; the old one keeps serving."""


class DeployAborted(TurnoutError):
    """An operator aborted the deployment; it was rolled back."""


class AnalysisFailed(TurnoutError):
    """The canary did worse than the stable version; it was rolled back automatically."""
