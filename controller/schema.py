"""The schema gate: what a service's database schema allows, so no version gets traffic against a schema
it cannot read, and a rollback never goes back past a migration that removed what the old version needs.

- An image may say which schema versions it reads: the label `turnout.schema = "MIN-MAX"` (or "N").
- The service's current schema becomes the new image's MIN once its `migrate` hook finished (expand: the
  old version still reads it) and its MAX once its `contract` hook finished.
- A finished `contract` sets the schema floor: the deployment that contracted, and every version the
  service ran before it. A rollback to one of those is refused, naming that deployment, unless forced
  (`turnout rollback --force-past-migration`); a failure of the contracting deploy after that point
  freezes it rather than rolling back (the deployer), and so does a daemon killed inside a hook
  (recovery: a hook is never run twice).

Kept in the journal's meta table per service (`Journal.schema`), beside the service state.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import TurnoutError

LABEL = "turnout.schema"
_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


class SchemaRefused(TurnoutError):
    """An image cannot read the current schema, or a rollback would go below the floor."""


def read_range(label: str | None, image: str) -> tuple[int, int] | None:
    """The schema versions an image reads, from its label; None without one."""
    if label is None:
        return None
    match = _RANGE.fullmatch(label)
    if not match or (match[2] is not None and int(match[2]) < int(match[1])):
        raise SchemaRefused(f"image {image!r}: label {LABEL}={label!r} is not MIN-MAX (e.g. \"2-3\") or N")
    low = int(match[1])
    return low, int(match[2]) if match[2] is not None else low


@dataclass
class Floor:
    deployment: str  # the deployment whose contract hook set it
    version: str  # the version it deployed
    schema: int | None  # the schema then (None: its image has no schema label)
    below: list[str] = field(default_factory=list)  # versions the service ran before: no rollback there


@dataclass
class SchemaState:
    current: int | None = None  # None: not known (no labelled image migrated yet)
    since: str | None = None  # the deployment that set `current`
    floor: Floor | None = None

    def describe(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SchemaState:
        if not data:
            return cls()
        floor = data.get("floor")
        return cls(data.get("current"), data.get("since"), Floor(**floor) if floor else None)

    def check_image(self, image: str, readable: tuple[int, int] | None) -> None:
        """Refuse an image that cannot read the current schema (before it gets traffic)."""
        if readable is None or self.current is None:
            return
        low, high = readable
        if not low <= self.current <= high:
            raise SchemaRefused(
                f"image {image!r} reads schema {low}-{high} ({LABEL}), but the schema is {self.current}"
                + (f" since deployment {self.since}" if self.since else "")
                + ": it would fail against it, so it gets no traffic")

    def check_rollback(self, version: str, force: bool) -> None:
        """Refuse going back to a version older than the floor, unless forced."""
        floor = self.floor
        if floor is None or version not in floor.below or force:
            return
        raise SchemaRefused(
            f"rollback to {version} refused: deployment {floor.deployment} ({floor.version}) ran its "
            f"contract hook, and {version} is older than that schema floor"
            + (f" (schema {floor.schema})" if floor.schema is not None else "")
            + "; `--force-past-migration` rolls back anyway")

    def migrated(self, deployment: str, readable: tuple[int, int] | None) -> None:
        if readable is not None:
            self.current, self.since = readable[0], deployment

    def contracted(self, deployment: str, version: str, readable: tuple[int, int] | None,
                   before: list[str]) -> None:
        if readable is not None:
            self.current, self.since = readable[1], deployment
        self.floor = Floor(deployment, version, self.current, sorted(set(before) - {version}))


def interrupted_hook(steps: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The point of a hook the journal shows started and never finished (the daemon died in it), unless
    it was the `on_failure` hook (the deploy had already put the old release back)."""
    running = None
    for name, detail in steps:
        if name == "hook_started":
            running = detail.get("point")
        elif name == "hook_finished":
            running = None
    return running if running != "on_failure" else None


def frozen_reason(steps: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Why recovery must freeze a deploy it finds interrupted: it froze before the daemon died, or died
    inside a hook (never run twice). None: recovery's usual rules apply."""
    for name, detail in reversed(steps):
        if name == "frozen":
            return str(detail.get("reason", "frozen"))
        if name == "resolved":
            return None
    point = interrupted_hook(steps)
    if point is None:
        return None
    container = next((d.get("container") for n, d in reversed(steps)
                      if n == "hook_container" and d.get("point") == point), None)
    return (f"the daemon stopped while the {point} hook ran; it is not run again"
            + (f" (its container {container} is left for you to inspect)" if container else "")
            + ": check what it did, then `turnout promote` to keep what serves or `turnout abort --force`")
