"""Turnout's configuration model: frozen dataclasses and the key vocabulary each section accepts.

Reading and validating them is `reader` (TOML), `compose` (a Compose file's service) and `overrides`
(command-line flags); every error is a `ConfigError` naming the key path and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from proxy.config import ProxyConfig
from proxy.specs import HealthSpec

from ..errors import TurnoutError
from ..hardening import DEFAULT_CAP_ADD, DEFAULT_CAP_DROP, DEFAULT_PIDS_LIMIT, DEFAULT_SECURITY_OPT

STRATEGIES = ("bigbang", "bluegreen", "rolling", "canary")
DEFAULT_STATE_DIR = Path(".turnout")
CLI_SOURCE = "command-line options"
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker refuses smaller memory limits
DEFAULT_VERIFY = 2.0  # seconds of post-switch verification (ServiceConfig.verify)
MAX_REPLICAS = 100  # containers per service on one host: turnout.toml, the CLI and the admin API alike


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
                          healthy=self.healthy, unhealthy=self.unhealthy)


@dataclass(frozen=True, slots=True)
class CanaryOptions:
    steps: tuple[int, ...] = (5, 25, 50, 100)  # canary weight in percent, strictly increasing, ends at 100
    step_pause: float | None = 30.0  # seconds at each step; None: wait for `turnout promote`
    max_error_rate: float = 0.05  # error rate (500, 502-504) above the old version's by more rolls back
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
    mem_limit: int | None = None  # bytes; None: no limit (no default, see SECURITY.md)
    cpus: float | None = None  # None: no limit
    # Hardening every container gets unless the service says otherwise (controller/hardening.py).
    pids_limit: int = DEFAULT_PIDS_LIMIT  # 0: no limit set by Turnout
    cap_drop: tuple[str, ...] = DEFAULT_CAP_DROP
    cap_add: tuple[str, ...] = DEFAULT_CAP_ADD
    security_opt: tuple[str, ...] = DEFAULT_SECURITY_OPT
    sticky: bool = False
    # Who may pick a pool with X-Turnout-Pool / the turnout-pool cookie (proxy/override.py): "off",
    # "header-secret" (value `<pool>:<override_secret>`) or "trusted" (clients in `override_networks`).
    override: str = "off"
    override_secret: str | None = None
    override_networks: tuple[str, ...] = ()
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


# The keys each section accepts.
PROXY_FIELDS = {f.name: f for f in fields(ProxyConfig) if f.name != "extra"}
PROXY_KEYS = frozenset(PROXY_FIELDS) | {"state_dir", "admin_token_file"}
HEALTH_KEYS = frozenset({f.name for f in fields(HealthCheck)})
CANARY_KEYS = frozenset({f.name for f in fields(CanaryOptions)})
ROLLING_KEYS = frozenset({f.name for f in fields(RollingOptions)})
BLUEGREEN_KEYS = frozenset({f.name for f in fields(BlueGreenOptions)})
CONTAINER_KEYS = frozenset({"image", "port", "replicas", "strategy", "env", "command", "volumes", "labels",
                            "mem_limit", "cpus", "pids_limit", "cap_drop", "cap_add", "security_opt",
                            "canary", "rolling", "bluegreen", "verify"})
SERVICE_KEYS = CONTAINER_KEYS | {"host", "path_prefix", "health", "sticky", "hold_timeout", "drain_timeout",
                                 "upstreams", "compose", "service", "override", "override_secret",
                                 "override_networks"}
X_TURNOUT_KEYS = SERVICE_KEYS - {"compose", "service", "upstreams"}
SERVICE_OVERRIDES = frozenset({"image", "strategy", "replicas", "hold_timeout", "drain_timeout", "verify"})
OVERRIDES = CANARY_KEYS | ROLLING_KEYS | BLUEGREEN_KEYS | SERVICE_OVERRIDES
