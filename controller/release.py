"""A release: one version of a service as a pool of containers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.specs import PoolSpec

from .engine.base import Container


@dataclass
class Release:
    version: str
    image: str
    pool: str
    containers: list[Container] = field(default_factory=list)

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(c.address for c in self.containers if c.address)

    def as_pool(self, weight: int) -> PoolSpec:
        return PoolSpec(self.pool, weight, self.addresses)

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "image": self.image, "pool": self.pool,
                "containers": [c.id for c in self.containers]}


def version_of(image: str) -> str:
    """The version an image reference names: its tag ('myapp:v2' -> 'v2'), else 'latest'."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    if "@" in image:
        return image.split("@", 1)[1].split(":")[-1][:12]
    return "latest"
