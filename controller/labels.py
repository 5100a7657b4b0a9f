"""The `turnout.*` label namespace put on every container Turnout starts.

Labels are how Turnout finds its containers again (after a restart, for cleanup) and how it refuses to
touch anything else: a container is ours only if it is MANAGED *and* carries our OWNER, so two daemons
(or two test runs) on one engine never see or stop each other's containers.
"""

from __future__ import annotations

from collections.abc import Mapping

PREFIX = "turnout."
MANAGED = "turnout.managed"
OWNER = "turnout.owner"  # which Turnout daemon instance owns the container
SERVICE = "turnout.service"
VERSION = "turnout.version"
DEPLOYMENT = "turnout.deployment"
POOL = "turnout.pool"
PORT = "turnout.port"  # the container port the app listens on
# A hash of the container definition it was started from (image ID, not tag; replicas excluded):
# `turnout apply` compares it with the file's to tell a new release from a no-op (controller/apply/).
SPEC_HASH = "turnout.spec-hash"

MANAGED_VALUE = "true"
# Keys Turnout sets itself: extra labels may add to the namespace (turnout.test-run) but never override these.
CORE_KEYS = frozenset({MANAGED, OWNER, SERVICE, VERSION, DEPLOYMENT, POOL, PORT, SPEC_HASH})


def labels_for(
    owner: str,
    service: str,
    version: str,
    deployment: str,
    pool: str,
    port: int,
    extra: Mapping[str, str] | None = None,
    spec_hash: str = "",
) -> dict[str, str]:
    """All labels for a new container: `extra` first, then the core keys (which extras may not set);
    `spec_hash` when known."""
    for name, value in (("owner", owner), ("service", service), ("version", version), ("pool", pool)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"label {name} must be a non-empty string, got {value!r}")
    if not isinstance(deployment, str):
        raise ValueError(f"label deployment must be a string, got {deployment!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"label port must be an int in 1..65535, got {port!r}")
    labels: dict[str, str] = {}
    for key, value in (extra or {}).items():
        if key in CORE_KEYS:
            raise ValueError(f"extra label {key!r} would override a label Turnout sets itself")
        if not isinstance(value, str):
            raise ValueError(f"extra label {key!r} must have a string value, got {value!r}")
        labels[key] = value
    labels.update(
        {
            MANAGED: MANAGED_VALUE,
            OWNER: owner,
            SERVICE: service,
            VERSION: version,
            DEPLOYMENT: deployment,
            POOL: pool,
            PORT: str(port),
        }
    )
    if spec_hash:
        labels[SPEC_HASH] = spec_hash
    return labels


def is_ours(labels: Mapping[str, str] | None, owner: str) -> bool:
    """True only for containers Turnout manages on behalf of this `owner`."""
    if not labels:
        return False
    return labels.get(MANAGED) == MANAGED_VALUE and labels.get(OWNER) == owner


def list_filters(owner: str, service: str | None = None) -> dict[str, list[str]]:
    """Filters for the engine's container list call: our managed containers, optionally one service."""
    wanted = [f"{MANAGED}={MANAGED_VALUE}", f"{OWNER}={owner}"]
    if service is not None:
        wanted.append(f"{SERVICE}={service}")
    return {"label": wanted}
