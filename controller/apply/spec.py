"""The spec hash: what a service's containers are, as one short string, labelled `turnout.spec-hash` on
every container Turnout starts. Two definitions with the same hash would start identical containers, so
`turnout apply` of an unchanged file restarts nothing, and a tag rebuilt since (a new image ID) is a new
release. Replicas, routing and deploy settings are not in it: changing them touches no container.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..config.model import ServiceConfig

# The ServiceConfig fields that make up a container (besides the image, which enters as its ID).
CONTAINER_FIELDS = ("port", "env", "command", "volumes", "labels", "mem_limit", "cpus", "pids_limit",
                    "cap_drop", "cap_add", "security_opt")
VERSION = 1  # of the hashed layout: bump it when CONTAINER_FIELDS change, so old labels read as changed


def spec_hash(config: ServiceConfig, image_id: str) -> str:
    """The hash of `config`'s container definition with the image `image_id` ("sha256:...")."""
    definition: dict[str, Any] = {"v": VERSION, "image_id": image_id}
    for name in CONTAINER_FIELDS:
        value = getattr(config, name)
        if name == "volumes":
            value = [str(v) for v in value]  # one "source:target:mode" bind each
        definition[name] = value
    text = json.dumps(definition, sort_keys=True, default=list, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]
