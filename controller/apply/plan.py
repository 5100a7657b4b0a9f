"""The plan of `turnout apply`: the desired services (a file) against the live ones (the deployer's configs
and releases), one action per service. Pure: no engine, no journal, no clock; `run.py` gathers the inputs
(image IDs resolved to spec hashes) and carries the plan out.

    =         nothing to do
    ~routing  settings only (host, path, health, timeouts, strategy and its options, hooks): one table
              swap, no container touched
    ~scale    the replica count (with any settings change): containers added or retired, none replaced
    ~release  the container definition changed (spec hash or version): a deploy with the service's strategy
    +         a service not running yet: its first deploy (a static one is routed)
    -         pruned: in no file any more, created by apply, and `--prune` given
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..config.duration import format_duration
from ..config.model import ServiceConfig, Volume
from ..errors import UsageError
from ..release import version_of
from .spec import CONTAINER_FIELDS

UNCHANGED, ROUTING, SCALE, RELEASE, NEW, PRUNE = "=", "~routing", "~scale", "~release", "+", "-"
ACTIONS = (UNCHANGED, ROUTING, SCALE, RELEASE, NEW, PRUNE)
# Fields that are neither a setting nor part of the container: who the service is and where it was read.
_NOT_SETTINGS = frozenset({"name", "image", "replicas", "upstreams", "compose_file", "compose_service",
                           *CONTAINER_FIELDS})
SETTINGS = tuple(f.name for f in fields(ServiceConfig) if f.name not in _NOT_SETTINGS)
_SECRET = frozenset({"env", "override_secret"})  # changed values never printed


class PlanError(UsageError):
    """A change apply cannot make as one action (the message says what to do instead)."""

    def __init__(self, service: str, problem: str) -> None:
        self.service = service
        super().__init__(f"services.{service}: {problem}")


@dataclass(frozen=True)
class Desired:
    """A service as the file wants it; `spec_hash` of its container definition (None: static)."""

    config: ServiceConfig
    spec_hash: str | None = None


@dataclass(frozen=True)
class Live:
    """A service as the daemon runs it. `version`/`image`/`spec_hash`: the serving release (None when
    nothing serves; `spec_hash` None when its containers carry none); `by_apply`: apply created it."""

    config: ServiceConfig
    version: str | None = None
    image: str | None = None
    spec_hash: str | None = None
    by_apply: bool = False


@dataclass(frozen=True)
class Action:
    service: str
    action: str  # one of ACTIONS
    changes: tuple[str, ...] = ()
    config: ServiceConfig | None = None  # what to make it (None for a prune, or a service kept as is)

    @property
    def changed(self) -> bool:
        return self.action != UNCHANGED

    def line(self) -> str:
        """`~ web: image v1 -> v2 (canary 5,25,50,100 / 30s)`"""
        sign = self.action[0]
        return f"{sign} {self.service}" + (f": {'; '.join(self.changes)}" if self.changes else "")

    def describe(self) -> dict[str, Any]:
        return {"service": self.service, "action": self.action, "changes": list(self.changes),
                "line": self.line()}


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]

    @property
    def changed(self) -> bool:
        return any(a.changed for a in self.actions)

    def lines(self) -> list[str]:
        return [a.line() for a in self.actions]

    def describe(self) -> dict[str, Any]:
        return {"changed": self.changed, "actions": [a.describe() for a in self.actions]}


def plan(desired: Mapping[str, Desired], live: Mapping[str, Live], *, prune: bool = False) -> Plan:
    """One action per service named in `desired` or `live`, in name order."""
    actions = []
    for name in sorted(set(desired) | set(live)):
        want, have = desired.get(name), live.get(name)
        if want is None:
            assert have is not None
            actions.append(_absent(name, have, prune))
        elif have is not None and want.config.managed != have.config.managed:
            raise PlanError(name, "cannot switch between static upstreams and containers in one apply; "
                            "remove the service (apply --prune) and add it again")
        elif have is None or (want.config.managed and have.version is None):
            actions.append(Action(name, NEW, _new(want.config), want.config))
        else:
            actions.append(_compare(name, want, have))
    return Plan(tuple(actions))


def _absent(name: str, have: Live, prune: bool) -> Action:
    if not have.by_apply:
        return Action(name, UNCHANGED, ("not in the file; kept (apply did not create it)",))
    if not prune:
        return Action(name, UNCHANGED, ("not in the file; kept (--prune removes it)",))
    what = f"{have.version} drained, then its containers removed" if have.version else "routing removed"
    return Action(name, PRUNE, (f"prune: {what}",))


def _new(config: ServiceConfig) -> tuple[str, ...]:
    if not config.managed:
        return (f"upstreams {', '.join(config.upstreams)}",)
    return (f"image {config.image}, {config.replicas} replica(s) ({strategy_text(config)})",)


def _compare(name: str, want: Desired, have: Live) -> Action:
    new, old = want.config, have.config
    settings = differences(old, new, SETTINGS)
    if not new.managed:
        if new.upstreams != old.upstreams:
            settings.insert(0, f"upstreams {', '.join(old.upstreams)} -> {', '.join(new.upstreams)}")
        return Action(name, ROUTING, tuple(settings), new) if settings else Action(name, UNCHANGED)
    assert new.image is not None
    version = version_of(new.image)
    container = differences(old, new, CONTAINER_FIELDS)
    if want.spec_hash != have.spec_hash or version != have.version:
        image = _image_change(have, new.image, version, want.spec_hash, container)
        changes = [f"{image} ({strategy_text(new)})", *container]
        if new.replicas != old.replicas:
            changes.append(f"replicas {old.replicas} -> {new.replicas}")
        return Action(name, RELEASE, tuple(changes + settings), new)
    if new.replicas != old.replicas:
        return Action(name, SCALE, (f"replicas {old.replicas} -> {new.replicas}", *settings), new)
    if settings:
        return Action(name, ROUTING, tuple(settings), new)
    return Action(name, UNCHANGED, (), new)


def _image_change(have: Live, image: str, version: str, spec: str | None,
                  container: list[str]) -> str:
    before = have.image or "?"
    if before == image and container:
        return f"new containers of {version}"
    if before == image:
        return (f"image {version} deployed without a spec hash: replaced once" if have.spec_hash is None
                else f"image {version} rebuilt: a new image ID under the same tag")
    if _repository(before) == _repository(image):
        text = f"image {have.version} -> {version}"
    else:
        text = f"image {before} -> {image}"
    return text + (" (same image ID: a new version name)" if spec == have.spec_hash else "")


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def differences(old: ServiceConfig, new: ServiceConfig, names: tuple[str, ...]) -> list[str]:
    """Each of the fields `names` that differs, as `name old -> new` (secrets and hooks only named);
    the plan's and `turnout reload`'s lines."""
    out = []
    for name in names:
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if name == "hooks":
            for point in sorted(set(a) | set(b)):
                if a.get(point) != b.get(point):
                    what = "added" if point not in a else "removed" if point not in b else "changed"
                    out.append(f"hooks.{point} {what}")
        elif name in _SECRET:
            keys = sorted(set(a) ^ set(b) | {k for k in set(a) & set(b) if a[k] != b[k]}) \
                if isinstance(a, dict) and isinstance(b, dict) else []
            out.append(f"{name} changed" + (f" ({', '.join(keys)})" if keys else ""))
        elif hasattr(a, "__dataclass_fields__") and hasattr(b, "__dataclass_fields__") \
                and type(a) is type(b):
            for sub in fields(a):
                x, y = getattr(a, sub.name), getattr(b, sub.name)
                if x != y:
                    out.append(f"{name}.{sub.name} {show(x)} -> {show(y)}")
        else:
            out.append(f"{_DISPLAY.get(name, name)} {show(a)} -> {show(b)}")
    return out


_DISPLAY = {"hosts": "host"}


def show(value: Any) -> str:
    """A config value as plan lines show it: `-` for none, lists comma-separated."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(show(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={show(v)}" for k, v in value.items()) or "-"
    if isinstance(value, Volume):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return "{" + ", ".join(f"{f.name}={show(getattr(value, f.name))}" for f in fields(value)) + "}"
    return str(value)


def strategy_text(config: ServiceConfig) -> str:
    """`canary 5,25,50,100 / 30s`, `rolling, max surge 1, max unavailable 0`, ..."""
    strategy = config.strategy
    if strategy == "canary":
        c = config.canary
        pause = "manual" if c.step_pause is None else format_duration(c.step_pause)
        return f"canary {','.join(str(s) for s in c.steps)} / {pause}"
    if strategy == "rolling":
        r = config.rolling
        return f"rolling, max surge {r.max_surge}, max unavailable {r.max_unavailable}"
    if strategy == "bluegreen":
        b = config.bluegreen
        extra = [*(["preview"] if b.preview else []),
                 *([f"keep old {format_duration(b.keep_old)}"] if b.keep_old else [])]
        return ", ".join(["bluegreen", *extra])
    return strategy
