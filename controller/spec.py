"""Turnout's configuration: frozen dataclasses, read and validated in this one module.

`load_config(path)` reads a TOML file (or returns the embedded defaults for `None`). Every error is a
`ConfigError` naming the key path (`services.web.health.interval`) and the file it came from; a service
may take its container definition from a Compose file, and then errors inside that file name it instead.
CLI flags go through the same readers (`service_from_flags`, `with_overrides`), named as `--flags`.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from proxy.config import ProxyConfig
from proxy.errors import ValidationError
from proxy.specs import NAME_RE, HealthSpec, parse_address

from .duration import DurationError, parse_duration
from .errors import TurnoutError
from .labels import CORE_KEYS

STRATEGIES = ("bigbang", "bluegreen", "rolling", "canary")
DEFAULT_STATE_DIR = Path(".turnout")
CLI_SOURCE = "command-line options"
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker refuses smaller memory limits
DEFAULT_VERIFY = 2.0  # seconds of post-switch verification (ServiceConfig.verify)


class ConfigError(TurnoutError, ValueError):
    """A bad configuration value: names the key path and the file (or the command line)."""

    def __init__(self, key: str, problem: str, source: Path | str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {problem}" if key else f"{where}{problem}")


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """HTTP readiness/health probe: `healthy` passes in a row make a container healthy, `unhealthy`
    failures unhealthy; a new container gets `start_timeout` to become healthy at all."""

    path: str = "/healthz"
    interval: float = 1.0
    timeout: float = 1.0
    healthy: int = 2
    unhealthy: int = 3
    start_timeout: float = 60.0

    def to_proxy(self) -> HealthSpec:
        return HealthSpec(path=self.path, interval=self.interval, timeout=self.timeout,
                          rise=self.healthy, fall=self.unhealthy)


@dataclass(frozen=True, slots=True)
class CanaryOptions:
    steps: tuple[int, ...] = (5, 25, 50, 100)  # canary weight in percent, strictly increasing, ends at 100
    step_pause: float | None = 30.0  # seconds at each step; None: wait for `turnout promote`
    max_error_rate: float = 0.05  # canary 5xx ratio above this rolls back
    max_p99_ratio: float = 2.0  # canary p99 above stable p99 times this rolls back
    min_requests: int = 20  # requests the canary must see at a step before it is judged
    analysis_interval: float = 1.0
    preset: str | None = None  # the preset the steps came from, for display

    @property
    def manual(self) -> bool:
        return self.step_pause is None


@dataclass(frozen=True, slots=True)
class RollingOptions:
    max_surge: int = 1  # new containers started beyond `replicas` per batch
    max_unavailable: int = 0  # old containers stopped before their replacement is healthy


@dataclass(frozen=True, slots=True)
class BlueGreenOptions:
    keep_old: float = 0.0  # seconds blue stays running after the switch (0: stopped, kept for rollback)
    preview: bool = False  # route a preview to green before the switch


@dataclass(frozen=True, slots=True)
class Volume:
    source: str  # absolute host path, or a named volume
    target: str  # absolute path in the container
    read_only: bool = False

    def __str__(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    image: str | None = None  # deployed on start when nothing of this service runs yet
    port: int | None = None  # container port; None only for static upstreams
    replicas: int = 1
    hosts: tuple[str, ...] = ()
    path_prefix: str = "/"
    health: HealthCheck | None = field(default_factory=HealthCheck)  # None: static, not probed
    strategy: str = "rolling"
    env: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    volumes: tuple[Volume, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    mem_limit: int | None = None  # bytes
    cpus: float | None = None
    sticky: bool = False
    hold_timeout: float | None = None  # None: the proxy-wide default
    drain_timeout: float | None = None  # None: the proxy-wide default
    upstreams: tuple[str, ...] = ()  # static "host:port" upstreams: routed, not managed
    canary: CanaryOptions = field(default_factory=CanaryOptions)
    rolling: RollingOptions = field(default_factory=RollingOptions)
    bluegreen: BlueGreenOptions = field(default_factory=BlueGreenOptions)
    # Seconds the new version is watched after bigbang/bluegreen/rolling switch to it (5xx rate with the
    # canary's thresholds, active health); a breach rolls back. 0: no verification.
    verify: float = DEFAULT_VERIFY
    compose_file: Path | None = None  # where the container definition came from, if a Compose file
    compose_service: str | None = None

    @property
    def managed(self) -> bool:
        """Turnout starts and stops this service's containers (it has no static upstreams)."""
        return not self.upstreams


@dataclass(frozen=True, slots=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    state_dir: Path = DEFAULT_STATE_DIR
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    source: Path | None = None  # the file read; None: embedded defaults

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    def with_service(self, service: ServiceConfig) -> Config:
        return replace(self, services={**self.services, service.name: service})


# ---------------------------------------------------------------------------------------------------
# Reading tables: typed getters that name the key path and source in every error.

Origin = tuple[str, "Path | str | None"]


class _Table:
    """One table being read. Keys may carry their own origin (a Compose file) through `origins`; on
    the command line keys are named as flags (`--step-pause`)."""

    def __init__(self, data: Any, path: str, source: Path | str | None, *,
                 origins: dict[str, Origin] | None = None, flag_prefix: str | None = None) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"must be a table, got {data!r}", source)
        self.data = data
        self.path = path
        self.source = source
        self._origins = origins or {}
        self._flag_prefix = flag_prefix  # not None: the command line

    def where(self, key: str) -> Origin:
        if key in self._origins:
            return self._origins[key]
        if self._flag_prefix is not None:
            return "--" + "-".join(filter(None, (self._flag_prefix, key))).replace("_", "-"), self.source
        return (f"{self.path}.{key}" if self.path else key), self.source

    def error(self, key: str, problem: str) -> ConfigError:
        path, source = self.where(key)
        return ConfigError(path, problem, source)

    def has(self, key: str) -> bool:
        return key in self.data

    def reject_unknown(self, known: set[str] | frozenset[str]) -> None:
        for key in self.data:
            if key not in known:
                raise self.error(str(key), f"unknown key (known: {', '.join(sorted(known))})")

    def table(self, key: str) -> _Table | None:
        if key not in self.data:
            return None
        path, source = self.where(key)
        prefix = None if self._flag_prefix is None else "-".join(filter(None, (self._flag_prefix, key)))
        return _Table(self.data[key], path, source, flag_prefix=prefix)

    def string(self, key: str, default: Any = None, *, choices: tuple[str, ...] = ()) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, key: str, default: Any = None, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be a whole number, got {value!r}")
        _check_range(self, key, value, minimum, maximum)
        return value

    def number(self, key: str, default: Any = None, *, minimum: float | None = None,
               maximum: float | None = None, positive: bool = False) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, got {value!r}")
        if positive and not value > 0:
            raise self.error(key, f"must be greater than 0, got {value!r}")
        _check_range(self, key, value, minimum, maximum)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def duration(self, key: str, default: Any = None, *, positive: bool = False) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        path, source = self.where(key)
        try:
            seconds = parse_duration(value, path)
        except DurationError as exc:
            raise ConfigError(path, str(exc).removeprefix(f"{path}: "), source) from None
        if positive and seconds <= 0:
            raise self.error(key, f"must be longer than 0, got {value!r}")
        return seconds

    def strings(self, key: str, default: Any = ()) -> Any:
        """A string or a list of strings, as a tuple."""
        if key not in self.data:
            return default
        value = self.data[key]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
            raise self.error(key, f"must be a string or a list of non-empty strings, got {value!r}")
        return tuple(items)

    def string_map(self, key: str) -> dict[str, str]:
        """A table of scalars, as strings (TOML `PORT = 8080` means the string "8080")."""
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table of key = value, got {value!r}")
        result = {}
        for name, item in value.items():
            if not name or "=" in name:
                raise self.error(key, f"bad name {name!r}")
            if isinstance(item, bool):
                item = "true" if item else "false"
            if not isinstance(item, str | int | float):
                raise ConfigError(f"{self.where(key)[0]}.{name}", f"must be a string or number, got {item!r}",
                                  self.where(key)[1])
            result[name] = str(item)
        return result


def _check_range(table: _Table, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise table.error(key, f"must be at least {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise table.error(key, f"must be at most {maximum}, got {value!r}")


# ---------------------------------------------------------------------------------------------------
# Sections.

PROXY_FIELDS = {f.name: f for f in fields(ProxyConfig) if f.name != "extra"}
PROXY_KEYS = frozenset(PROXY_FIELDS) | {"state_dir"}
HEALTH_KEYS = frozenset({f.name for f in fields(HealthCheck)})
CANARY_KEYS = frozenset({f.name for f in fields(CanaryOptions)})
ROLLING_KEYS = frozenset({f.name for f in fields(RollingOptions)})
BLUEGREEN_KEYS = frozenset({f.name for f in fields(BlueGreenOptions)})
CONTAINER_KEYS = frozenset({"image", "port", "replicas", "strategy", "env", "command", "volumes", "labels",
                            "mem_limit", "cpus", "canary", "rolling", "bluegreen", "verify"})
SERVICE_KEYS = CONTAINER_KEYS | {"host", "path_prefix", "health", "sticky", "hold_timeout", "drain_timeout",
                                 "upstreams", "compose", "service"}
X_TURNOUT_KEYS = SERVICE_KEYS - {"compose", "service", "upstreams"}
SERVICE_OVERRIDES = frozenset({"image", "strategy", "replicas", "hold_timeout", "drain_timeout", "verify"})
OVERRIDES = CANARY_KEYS | ROLLING_KEYS | BLUEGREEN_KEYS | SERVICE_OVERRIDES
_PRESET = re.compile(r"(canary|linear)(\d+)-(\w+)")
_HOST = re.compile(r"^[a-z0-9*]([a-z0-9*.-]*[a-z0-9])?(:\d{1,5})?$")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", re.IGNORECASE)
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _proxy(t: _Table, base_dir: Path | None) -> tuple[ProxyConfig, Path]:
    t.reject_unknown(PROXY_KEYS)
    state_dir = _resolve(Path(t.string("state_dir", str(DEFAULT_STATE_DIR))), base_dir)
    options: dict[str, Any] = {}
    for name, f in PROXY_FIELDS.items():
        if not t.has(name):
            continue
        if name.endswith("_timeout"):
            options[name] = t.duration(name, positive=True)
        elif isinstance(f.default, bool):
            options[name] = t.boolean(name, f.default)
        elif isinstance(f.default, int):
            options[name] = t.integer(name, minimum=1 if name == "max_connections" else 0)
        elif name == "trusted_proxies":
            options[name] = t.strings(name)
        else:
            options[name] = t.string(name)
    for name in ("listen", "admin_tcp"):
        if name in options:
            _address(t, name, options[name])
    admin_socket = _resolve(Path(options.get("admin_socket", state_dir / "admin.sock")), base_dir)
    if len(os.fsencode(admin_socket)) > 107:  # sun_path holds 108 bytes with the terminating NUL
        raise t.error("admin_socket", f"{admin_socket} is too long for a unix socket path (max 107 bytes)")
    options["admin_socket"] = str(admin_socket)
    try:
        return ProxyConfig(**options), state_dir
    except ValueError as exc:  # ProxyConfig's own cross-field checks say "proxy.<key>: problem"
        key, _, problem = str(exc).partition(": ")
        key = key if key.startswith("proxy.") else "proxy"
        raise ConfigError(key, problem or str(exc), t.source) from None


def _address(t: _Table, key: str, value: str) -> None:
    try:
        parse_address(key, value)
    except ValidationError as exc:
        raise t.error(key, exc.message) from None


def _resolve(path: Path, base_dir: Path | None) -> Path:
    path = path.expanduser()
    return path if base_dir is None or path.is_absolute() else base_dir / path


def _health(t: _Table | None) -> HealthCheck:
    if t is None:
        return HealthCheck()
    t.reject_unknown(HEALTH_KEYS)
    d = HealthCheck()
    path = t.string("path", d.path)
    if not path.startswith("/"):
        raise t.error("path", f"must start with '/', got {path!r}")
    return HealthCheck(
        path=path,
        interval=t.duration("interval", d.interval, positive=True),
        timeout=t.duration("timeout", d.timeout, positive=True),
        healthy=t.integer("healthy", d.healthy, minimum=1),
        unhealthy=t.integer("unhealthy", d.unhealthy, minimum=1),
        start_timeout=t.duration("start_timeout", d.start_timeout, positive=True),
    )


def preset_steps(name: str, where: str = "preset",
                 source: Path | str | None = None) -> tuple[tuple[int, ...], float]:
    """CodeDeploy-style presets: canaryP-T (P%, then 100% after T), linearP-T (+P% every T),
    all-at-once. Returns (steps, step_pause)."""
    if name == "all-at-once":
        return (100,), 0.0
    match = _PRESET.fullmatch(name)
    problem = (f"unknown preset {name!r} (use canaryP-T such as canary10-5m, linearP-T such as linear10-1m, "
               "or all-at-once)")
    if not match or not 1 <= int(match[2]) <= 99:
        raise ConfigError(where, problem, source)
    try:
        pause = parse_duration(match[3], where)
    except DurationError:
        raise ConfigError(where, problem, source) from None
    percent = int(match[2])
    steps = (percent, 100) if match[1] == "canary" else (*range(percent, 100, percent), 100)
    return steps, pause


def _steps(t: _Table, key: str) -> tuple[int, ...]:
    value = t.data[key]
    if isinstance(value, str):  # "5,25,50,100" from the command line
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise t.error(key, f"must be a list of percentages such as 5,25,50,100, got {value!r}") from None
    if not isinstance(value, list | tuple) or not value:
        raise t.error(key, f"must be a non-empty list of percentages, got {value!r}")
    for step in value:
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100:
            raise t.error(key, f"each step must be a whole percentage in 1..100, got {step!r}")
    if any(b <= a for a, b in itertools.pairwise(value)):
        raise t.error(key, f"steps must be strictly increasing, got {list(value)}")
    if value[-1] != 100:
        raise t.error(key, f"the last step must be 100, got {list(value)}")
    return tuple(value)


def _canary(t: _Table | None) -> CanaryOptions:
    if t is None:
        return CanaryOptions()
    t.reject_unknown(CANARY_KEYS)
    d = CanaryOptions()
    preset = t.string("preset")
    if preset is not None:
        for key in ("steps", "step_pause"):
            if t.has(key):
                raise t.error(key, "cannot be combined with preset (the preset sets steps and step_pause)")
        steps, pause = preset_steps(preset, *t.where("preset"))
    else:
        steps = _steps(t, "steps") if t.has("steps") else d.steps
        raw_pause = t.data.get("step_pause", d.step_pause)
        pause = None if raw_pause in ("manual", None) else t.duration("step_pause", d.step_pause)
    return CanaryOptions(
        steps=steps,
        step_pause=pause,
        max_error_rate=t.number("max_error_rate", d.max_error_rate, minimum=0, maximum=1),
        max_p99_ratio=t.number("max_p99_ratio", d.max_p99_ratio, minimum=1),
        min_requests=t.integer("min_requests", d.min_requests, minimum=0),
        analysis_interval=t.duration("analysis_interval", d.analysis_interval, positive=True),
        preset=preset,
    )


def _rolling(t: _Table | None) -> RollingOptions:
    if t is None:
        return RollingOptions()
    t.reject_unknown(ROLLING_KEYS)
    d = RollingOptions()
    surge = t.integer("max_surge", d.max_surge, minimum=0)
    unavailable = t.integer("max_unavailable", d.max_unavailable, minimum=0)
    if surge == 0 and unavailable == 0:
        key = "max_surge" if t.has("max_surge") else "max_unavailable"
        raise t.error(key, "max_surge and max_unavailable cannot both be 0 (nothing could ever move)")
    return RollingOptions(max_surge=surge, max_unavailable=unavailable)


def _bluegreen(t: _Table | None) -> BlueGreenOptions:
    if t is None:
        return BlueGreenOptions()
    t.reject_unknown(BLUEGREEN_KEYS)
    d = BlueGreenOptions()
    return BlueGreenOptions(keep_old=t.duration("keep_old", d.keep_old),
                            preview=t.boolean("preview", d.preview))


def _image(t: _Table) -> str | None:
    image = t.string("image")
    if image is not None and any(c.isspace() for c in image):
        raise t.error("image", f"must not contain spaces, got {image!r}")
    return image


def _hosts(t: _Table) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in t.strings("host"))
    for host in hosts:
        if not _HOST.match(host):
            raise t.error("host", f"{host!r} is not a host name")
    return hosts


def _command(t: _Table) -> tuple[str, ...] | None:
    value = t.data.get("command")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise t.error("command", f"cannot split {value!r}: {exc}") from None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise t.error("command", f"must be a string or a non-empty list of strings, got {value!r}")
    return tuple(value)


def _volumes(t: _Table, base_dir: Path | None) -> tuple[Volume, ...]:
    value = t.data.get("volumes", [])
    if isinstance(value, dict):
        items = [(str(src), dst, "rw") for src, dst in value.items()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = []
        for entry in value:
            parts = entry.split(":")
            if len(parts) not in (2, 3):
                raise t.error("volumes", f"{entry!r} is not source:target[:ro|rw]")
            items.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    else:
        raise t.error("volumes", f"must be a table of source = target or a list of 'source:target[:ro]', "
                                 f"got {value!r}")
    volumes = []
    for source, target, mode in items:
        if not isinstance(target, str) or not target.startswith("/"):
            raise t.error("volumes", f"target of {source!r} must be an absolute path, got {target!r}")
        if mode not in ("ro", "rw"):
            raise t.error("volumes", f"mode of {source!r} must be ro or rw, got {mode!r}")
        if source.startswith((".", "~", "/")):  # a host path; relative ones are relative to the config file
            host_path = _resolve(Path(source), base_dir)
            source = str(host_path.resolve() if base_dir else host_path)
        elif not _VOLUME_NAME.fullmatch(source):
            raise t.error("volumes", f"{source!r} is neither a host path (/, ./, ~) nor a volume name")
        volumes.append(Volume(source, target, read_only=mode == "ro"))
    return tuple(volumes)


def _memory(t: _Table) -> int | None:
    value = t.data.get("mem_limit")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _MEMORY.fullmatch(value.strip())):
        size = int(float(match[1]) * 1024 ** "bkmg".index(match[2].lower() or "b"))
    else:
        raise t.error("mem_limit", f"must be bytes or a size such as 256m or 1g, got {value!r}")
    if size < MIN_MEMORY_BYTES:
        raise t.error("mem_limit", f"must be at least 6m (Docker's minimum), got {value!r}")
    return size


def _labels(t: _Table) -> dict[str, str]:
    labels = t.string_map("labels")
    for key in labels:
        if key in CORE_KEYS:
            raise t.error("labels", f"{key!r} is reserved for Turnout")
    return labels


def _strategy(t: _Table) -> str:
    return t.string("strategy", "rolling", choices=STRATEGIES)


def _upstreams(t: _Table) -> tuple[str, ...]:
    upstreams = t.strings("upstreams")
    if not upstreams:
        raise t.error("upstreams", "must list at least one host:port")
    for address in upstreams:
        _address(t, "upstreams", address)
    if len(set(upstreams)) != len(upstreams):
        raise t.error("upstreams", f"lists an address twice: {list(upstreams)}")
    for key in sorted(CONTAINER_KEYS):
        if t.has(key):
            raise t.error(key, "not allowed with static upstreams (the service is routed, not managed)")
    return upstreams


def _service(name: str, t: _Table, base_dir: Path | None) -> ServiceConfig:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(t.path or "service", f"{name!r} is not a valid service name "
                          "(letters, digits, _ . -)", t.source)
    t.reject_unknown(SERVICE_KEYS)
    if t.has("upstreams") and t.has("compose"):
        raise t.error("compose", "not allowed with static upstreams (the service is routed, not managed)")
    compose_file = compose_service = None
    if t.has("compose") or t.has("service"):
        t, compose_file, compose_service = _with_compose(name, t, base_dir)
    path_prefix = t.string("path_prefix", "/")
    if not path_prefix.startswith("/"):
        raise t.error("path_prefix", f"must start with '/', got {path_prefix!r}")
    common = dict(
        name=name,
        hosts=_hosts(t),
        path_prefix=path_prefix,
        sticky=t.boolean("sticky", False),
        hold_timeout=t.duration("hold_timeout", positive=True),
        drain_timeout=t.duration("drain_timeout", positive=True),
        compose_file=compose_file,
        compose_service=compose_service,
    )
    if t.has("upstreams"):
        health = _health(t.table("health")) if t.has("health") else None
        return ServiceConfig(upstreams=_upstreams(t), health=health, **common)
    port = t.integer("port", minimum=1, maximum=65535)
    if port is None:
        raise t.error("port", "required: the container port the app listens on (or set static upstreams)")
    return ServiceConfig(
        image=_image(t),
        port=port,
        replicas=t.integer("replicas", 1, minimum=1),
        health=_health(t.table("health")),
        strategy=_strategy(t),
        env=t.string_map("env"),
        command=_command(t),
        volumes=_volumes(t, base_dir),
        labels=_labels(t),
        mem_limit=_memory(t),
        cpus=t.number("cpus", positive=True),
        canary=_canary(t.table("canary")),
        rolling=_rolling(t.table("rolling")),
        bluegreen=_bluegreen(t.table("bluegreen")),
        verify=t.duration("verify", DEFAULT_VERIFY),
        **common,
    )


# ---------------------------------------------------------------------------------------------------
# Compose files: the container definition of one service, plus Turnout options under `x-turnout`.
# Keys set in turnout.toml replace the same keys from the Compose file (whole values, not merged).

def _with_compose(name: str, t: _Table, base_dir: Path | None) -> tuple[_Table, Path, str]:
    if not t.has("compose"):
        raise t.error("service", "needs `compose` (the Compose file to read the service from)")
    compose_path = _resolve(Path(t.string("compose")), base_dir)
    compose_service = t.string("service", name)
    raw, origins = read_compose_service(compose_path, compose_service, t.where("compose"), t.where("service"))
    own = {k: v for k, v in t.data.items() if k not in ("compose", "service")}
    for key in own:
        origins.pop(key, None)
    merged = _Table(raw | own, t.path, t.source, origins=origins)
    return merged, compose_path, compose_service


def _load_yaml(path: Path, needed_by: Origin) -> Any:
    try:
        import yaml  # optional: only Compose-backed services need it
    except ImportError:
        raise ConfigError(needed_by[0], "reading a Compose file needs PyYAML (pip install pyyaml)",
                          needed_by[1]) from None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError("", f"not valid YAML: {exc}", path) from None


def read_compose_service(path: Path, service: str, compose_key: Origin = ("compose", None),
                         service_key: Origin = ("service", None)) -> tuple[dict[str, Any], dict[str, Origin]]:
    """The Turnout service keys a Compose service defines, and where each came from."""
    if not path.is_file():
        raise ConfigError(compose_key[0], f"Compose file {path} not found", compose_key[1])
    doc = _load_yaml(path, compose_key)
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or service not in services:
        found = ", ".join(sorted(services)) if isinstance(services, dict) else "none"
        raise ConfigError(service_key[0], f"no service {service!r} in {path} (found: {found})",
                          service_key[1])
    prefix = f"services.{service}"
    svc = services[service]
    if not isinstance(svc, dict):
        raise ConfigError(prefix, "must be a mapping", path)
    raw: dict[str, Any] = {}
    origins: dict[str, Origin] = {}

    def put(key: str, value: Any, compose_name: str) -> None:
        raw[key] = value
        origins[key] = (f"{prefix}.{compose_name}", path)

    for key in ("image", "command", "mem_limit", "cpus"):
        if key in svc:
            put(key, svc[key], key)
    if isinstance(raw.get("cpus"), str):  # Compose allows cpus: "0.5"
        try:
            raw["cpus"] = float(raw["cpus"])
        except ValueError:
            pass  # left as is: the service reader reports it with its Compose origin
    if "environment" in svc:
        put("env", _compose_mapping(svc["environment"], f"{prefix}.environment", path, from_env=True),
            "environment")
    if "labels" in svc:
        put("labels", _compose_mapping(svc["labels"], f"{prefix}.labels", path), "labels")
    if "volumes" in svc:
        put("volumes", _compose_volumes(svc["volumes"], f"{prefix}.volumes", path), "volumes")
    port = _compose_port(svc, prefix, path)
    if port is not None:
        put("port", port, "ports" if "ports" in svc else "expose")
    extra = svc.get("x-turnout", {})
    if not isinstance(extra, dict):
        raise ConfigError(f"{prefix}.x-turnout", "must be a mapping", path)
    for key, value in extra.items():
        if key not in X_TURNOUT_KEYS:
            raise ConfigError(f"{prefix}.x-turnout.{key}",
                              f"unknown key (known: {', '.join(sorted(X_TURNOUT_KEYS))})", path)
        put(key, value, f"x-turnout.{key}")
    return raw, origins


def _compose_mapping(value: Any, where: str, path: Path, from_env: bool = False) -> dict[str, Any]:
    """Compose's `KEY: value` mapping or `["KEY=value"]` list; a bare KEY takes the host's value."""
    if isinstance(value, list):
        pairs = []
        for item in value:
            if not isinstance(item, str):
                raise ConfigError(where, f"entries must be KEY=value strings, got {item!r}", path)
            key, sep, val = item.partition("=")
            pairs.append((key, val if sep else None))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise ConfigError(where, f"must be a mapping or a list of KEY=value, got {value!r}", path)
    result = {}
    for key, val in pairs:
        if val is None:
            if not from_env:
                val = ""
            elif (val := os.environ.get(str(key))) is None:
                continue  # Compose leaves an unset pass-through variable out
        result[str(key)] = val
    return result


def _compose_volumes(value: Any, where: str, path: Path) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(where, f"must be a list, got {value!r}", path)
    volumes = []
    for i, item in enumerate(value):
        if isinstance(item, dict):  # long syntax
            source, target = item.get("source"), item.get("target")
            mode = "ro" if item.get("read_only") else "rw"
        elif isinstance(item, str) and item.count(":") in (1, 2):
            source, target, *rest = item.split(":")
            mode = rest[0] if rest else "rw"
        else:
            raise ConfigError(f"{where}[{i}]", f"must be source:target[:mode], got {item!r}", path)
        if not isinstance(source, str) or not isinstance(target, str) or not source:
            raise ConfigError(f"{where}[{i}]", "needs a source and a target", path)
        if source.startswith("."):  # Compose paths are relative to the Compose file
            source = str((path.parent / source).resolve())
        volumes.append(f"{source}:{target}:{mode}")
    return volumes


def _compose_port(svc: dict[str, Any], prefix: str, path: Path) -> int | None:
    """The one container port of `ports` (host side ignored: Turnout publishes its own) or `expose`."""
    key = "ports" if "ports" in svc else "expose" if "expose" in svc else None
    if key is None:
        return None
    entries = svc[key]
    if not isinstance(entries, list):
        raise ConfigError(f"{prefix}.{key}", f"must be a list, got {entries!r}", path)
    ports = set()
    for i, entry in enumerate(entries):
        target = entry.get("target") if isinstance(entry, dict) else str(entry).rpartition(":")[2]
        target = str(target).partition("/")[0]
        if not target.isdigit() or not 1 <= int(target) <= 65535:
            raise ConfigError(f"{prefix}.{key}[{i}]", f"no single container port in {entry!r}", path)
        ports.add(int(target))
    if len(ports) > 1:
        raise ConfigError(f"{prefix}.{key}", f"several container ports {sorted(ports)}; choose one with "
                                             "x-turnout.port", path)
    return ports.pop() if ports else None


# ---------------------------------------------------------------------------------------------------
# Public entry points.

def load_config(path: Path | None) -> Config:
    """The config in `path` (TOML), or the embedded defaults for None."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("", "config file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read the config file: {exc}", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"not valid TOML: {exc}", path) from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    """Validate already-parsed TOML; relative paths resolve against the source file's directory."""
    base_dir = source.resolve().parent if source is not None else None
    top = _Table(data, "", source)
    top.reject_unknown(frozenset({"proxy", "services"}))
    proxy_table = top.table("proxy") or _Table({}, "proxy", source)
    proxy, state_dir = _proxy(proxy_table, base_dir)
    services_table = top.table("services") or _Table({}, "services", source)
    services = {name: _service(name, services_table.table(name), base_dir)  # type: ignore[arg-type]
                for name in services_table.data}
    _check_routes(services, source)
    return Config(proxy=proxy, state_dir=state_dir, services=services, source=source)


def _check_routes(services: dict[str, ServiceConfig], source: Path | None) -> None:
    seen: dict[tuple[str, str], str] = {}
    for service in services.values():
        for host in service.hosts or ("",):
            route = (host, service.path_prefix)
            if route in seen:
                what = f"host {host!r}" if host else "no host rule"
                raise ConfigError(f"services.{service.name}.host", f"{what} and path_prefix "
                                  f"{service.path_prefix!r} are already routed to {seen[route]!r}", source)
            seen[route] = service.name


def service_from_flags(name: str, image: str | None, port: int, replicas: int = 1,
                       health_path: str = "/healthz", host: str | list[str] | None = None,
                       strategy: str = "rolling") -> ServiceConfig:
    """A service that is not in the config, from `turnout deploy` flags (errors name the flags)."""
    data: dict[str, Any] = {"port": port, "replicas": replicas, "health": {"path": health_path},
                            "strategy": strategy}
    if image is not None:
        data["image"] = image
    if host:
        data["host"] = host
    return _service(name, _Table(data, "", CLI_SOURCE, flag_prefix=""), None)


def with_overrides(service: ServiceConfig, **options: Any) -> ServiceConfig:
    """Apply CLI options (steps, step_pause, preset, max_surge, keep_old, strategy, replicas, ...) with
    the config's validation. None values mean "not given". Values have TOML types; steps may also be
    "5,25,50,100" and durations strings such as "30s" or "manual" for step_pause."""
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in OVERRIDES:
            raise ConfigError("--" + key.replace("_", "-"), "unknown option", CLI_SOURCE)
    if not service.managed and given:
        raise ConfigError("--" + next(iter(given)).replace("_", "-"),
                          f"service {service.name!r} has static upstreams; there is nothing to deploy",
                          CLI_SOURCE)
    changes: dict[str, Any] = {}
    if canary := {k: v for k, v in given.items() if k in CANARY_KEYS}:
        changes["canary"] = _canary(_cli_table(_canary_base(service.canary, canary) | canary))
    if rolling := {k: v for k, v in given.items() if k in ROLLING_KEYS}:
        base = {"max_surge": service.rolling.max_surge, "max_unavailable": service.rolling.max_unavailable}
        changes["rolling"] = _rolling(_cli_table(base | rolling))
    if bluegreen := {k: v for k, v in given.items() if k in BLUEGREEN_KEYS}:
        changes["bluegreen"] = _bluegreen(_cli_table(bluegreen | {
            k: getattr(service.bluegreen, k) for k in BLUEGREEN_KEYS - set(bluegreen)}))
    own = _cli_table({k: v for k, v in given.items() if k in SERVICE_OVERRIDES})
    readers = {"image": _image, "strategy": _strategy,
               "replicas": lambda t: t.integer("replicas", minimum=1),
               "hold_timeout": lambda t: t.duration("hold_timeout", positive=True),
               "drain_timeout": lambda t: t.duration("drain_timeout", positive=True),
               "verify": lambda t: t.duration("verify")}
    changes.update({key: readers[key](own) for key in own.data})
    return replace(service, **changes)


def _cli_table(data: dict[str, Any]) -> _Table:
    return _Table(data, "", CLI_SOURCE, flag_prefix="")


def _canary_base(current: CanaryOptions, given: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {k: getattr(current, k) for k in
                            ("max_error_rate", "max_p99_ratio", "min_requests", "analysis_interval")}
    if "preset" not in given:  # a new preset replaces steps and pause; otherwise keep the current ones
        base["steps"] = list(current.steps)
        base["step_pause"] = "manual" if current.step_pause is None else current.step_pause
    return base
