"""Turnout's configuration model: frozen dataclasses and the key vocabulary each section accepts.

Reading and validating them is `reader` (TOML), `compose` (a Compose file's service) and `overrides`
(command-line flags); every error is a `ConfigError` naming the key path and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from proxy.config import ProxyConfig
from proxy.specs import HealthSpec, MirrorSpec, RuleSpec

from ..errors import TurnoutError
from ..hardening import DEFAULT_CAP_ADD, DEFAULT_CAP_DROP, DEFAULT_PIDS_LIMIT, DEFAULT_SECURITY_OPT

# Strategies that move all traffic on their own (what `rehearse --all-strategies` and the benchmarks run)
SHIFTING = ("bigbang", "bluegreen", "rolling", "canary")
# ... and `ab`, which needs a match (`--match`): only matching requests reach the new version until it is
# judged, then it is promoted or handed on to a canary.
STRATEGIES = (*SHIFTING, "ab")
AB_THEN = ("promote", "canary")  # what follows a passed A/B phase
DEFAULT_STATE_DIR = Path(".turnout")
CLI_SOURCE = "command-line options"
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker refuses smaller memory limits
DEFAULT_VERIFY = 2.0  # seconds of post-switch verification (ServiceConfig.verify)
MAX_REPLICAS = 100  # containers per service on one host: turnout.toml, the CLI and the admin API alike
DEFAULT_STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL when stopping a container (Docker's own)


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
    # Share of mirrored requests whose answers differ (proxy/mirror_diff.py) above which the new version
    # is rolled back (judged once `min_requests` copies were compared); None: differences never roll back.
    max_diff_rate: float | None = None

    @property
    def manual(self) -> bool:
        return self.step_pause is None


@dataclass(frozen=True, slots=True)
class AbOptions:
    """The `ab` strategy: requests matching `match` (a rule named "ab" to the canary) reach the new
    version for `duration`, judged by the canary's analysis against the stable pool; then `then`."""

    match: RuleSpec | None = None
    duration: float = 600.0
    then: str = "promote"  # or "canary": hand on to the canary's weight steps


@dataclass(frozen=True, slots=True)
class RollingOptions:
    max_surge: int = 1  # new containers started beyond `replicas` per batch
    max_unavailable: int = 0  # old containers stopped before their replacement is healthy


@dataclass(frozen=True, slots=True)
class BlueGreenOptions:
    keep_old: float = 0.0  # seconds blue stays running after the switch (0: stopped, kept for rollback)
    preview: bool = False  # route a preview to green before the switch


HOOK_POINTS = ("pre_deploy", "migrate", "pre_traffic", "post_switch", "contract", "post_deploy", "on_failure")
HOOK_KINDS = ("oneoff", "exec", "http", "run")
DEFAULT_HOOK_TIMEOUT = 300.0  # seconds a hook may take unless it says (`timeout`)


@dataclass(frozen=True, slots=True)
class Hook:
    """One deploy hook (controller/hooks.py): exactly one of the kinds, with its timeout and what its
    failure does (`abort`: the deploy fails, or freezes past a schema floor; `warn`: it goes on)."""

    oneoff: tuple[str, ...] | None = None  # a container of the new image runs this command
    exec: tuple[str, ...] | None = None  # run inside one new container
    http: str | None = None  # GET this path through the preview route: 2xx passes
    run: tuple[str, ...] | None = None  # a host command (needs allow_host_hooks in [proxy])
    timeout: float = DEFAULT_HOOK_TIMEOUT
    on_failure: str = "abort"

    @property
    def kind(self) -> str:
        return next(k for k in HOOK_KINDS if getattr(self, k) is not None)

    @property
    def what(self) -> tuple[str, ...] | str:
        return getattr(self, self.kind)  # type: ignore[no-any-return]


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
    stop_timeout: float = DEFAULT_STOP_TIMEOUT  # `docker stop`'s grace: SIGTERM, then SIGKILL after it
    init: bool = False  # Docker's --init: a tiny init as PID 1 forwards signals and reaps zombies
    sticky: bool = False
    # Who may pick a pool with X-Turnout-Pool / the turnout-pool cookie (proxy/override.py): "off",
    # "header-secret" (value `<pool>:<override_secret>`) or "trusted" (clients in `override_networks`).
    override: str = "off"
    override_secret: str | None = None
    override_networks: tuple[str, ...] = ()
    # Routing rules (`[[services.x.rules]]`, proxy/rules.py), tried in order after the pool override.
    rules: tuple[RuleSpec, ...] = ()
    # Shadow traffic with a response diff (`[services.x.mirror]`, proxy/mirror.py); None: no mirror.
    mirror: MirrorSpec | None = None
    hold_timeout: float | None = None  # None: the proxy-wide default
    drain_timeout: float | None = None  # None: the proxy-wide default
    upstreams: tuple[str, ...] = ()  # static "host:port" upstreams: routed, not managed
    canary: CanaryOptions = field(default_factory=CanaryOptions)
    rolling: RollingOptions = field(default_factory=RollingOptions)
    bluegreen: BlueGreenOptions = field(default_factory=BlueGreenOptions)
    ab: AbOptions = field(default_factory=AbOptions)
    # Seconds the new version is watched after bigbang/bluegreen/rolling switch to it (5xx rate with the
    # canary's thresholds, active health); a breach rolls back. 0: no verification.
    verify: float = DEFAULT_VERIFY
    hooks: dict[str, Hook] = field(default_factory=dict)  # point -> hook (HOOK_POINTS)
    compose_file: Path | None = None  # where the container definition came from, if a Compose file
    compose_service: str | None = None

    @property
    def managed(self) -> bool:
        """Turnout starts and stops this service's containers (it has no static upstreams)."""
        return not self.upstreams


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """`[dashboard]`: the live dashboard in a browser (controller/dashboard/); off when absent."""

    listen: str  # host:port; port 0 takes any free port (`turnout dashboard` prints the URL)
    token: str | None = None  # required unless `listen` is loopback; then optional
    allow_actions: bool = False  # promote / abort / pause / resume / rollback buttons (CSRF-protected)

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


ENGINE_KINDS = ("docker", "swarm")
ENGINE_HOST_SCHEMES = ("unix://", "tcp://", "ssh://")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """`[engine]`: what runs the containers (controller/engine/). "docker": containers on one host;
    "swarm": one-replica services on a Swarm, addressed through a manager."""

    kind: str = "docker"
    host: str | None = None  # the engine's (a manager's) API address; None: DOCKER_HOST or the local socket


@dataclass(frozen=True, slots=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    state_dir: Path = DEFAULT_STATE_DIR
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    dashboard: DashboardConfig | None = None  # None: no dashboard
    source: Path | None = None  # the file read; None: embedded defaults
    allow_host_hooks: bool = False  # [proxy] allow_host_hooks: `run` hooks (host commands) may run
    engine: EngineConfig = field(default_factory=EngineConfig)

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"

    def with_service(self, service: ServiceConfig) -> Config:
        return replace(self, services={**self.services, service.name: service})


# The keys each section accepts.
PROXY_FIELDS = {f.name: f for f in fields(ProxyConfig) if f.name not in ("extra", "tls")}
PROXY_KEYS = frozenset(PROXY_FIELDS) | {"state_dir", "admin_token_file", "allow_host_hooks", "tls"}
DASHBOARD_KEYS = frozenset({f.name for f in fields(DashboardConfig)})
ENGINE_KEYS = frozenset({f.name for f in fields(EngineConfig)})
TLS_KEYS = frozenset({"listen", "certs_dir", "default", "redirect_http", "hsts", "min_version",
                      "handshake_timeout", "max_handshakes_per_client", "session_tickets", "acme"})
ACME_KEYS = frozenset({"directory", "email", "ca_bundle", "hosts", "retry_min", "retry_max"})
HEALTH_KEYS = frozenset({f.name for f in fields(HealthCheck)})
CANARY_KEYS = frozenset({f.name for f in fields(CanaryOptions)})
ROLLING_KEYS = frozenset({f.name for f in fields(RollingOptions)})
BLUEGREEN_KEYS = frozenset({f.name for f in fields(BlueGreenOptions)})
AB_KEYS = frozenset({f.name for f in fields(AbOptions)})
CONTAINER_KEYS = frozenset({"image", "port", "replicas", "strategy", "env", "command", "volumes", "labels",
                            "mem_limit", "cpus", "pids_limit", "cap_drop", "cap_add", "security_opt",
                            "stop_timeout", "init", "canary", "rolling", "bluegreen", "ab", "verify",
                            "hooks"})
HOOK_KEYS = frozenset({f.name for f in fields(Hook)})
SERVICE_KEYS = CONTAINER_KEYS | {"host", "path_prefix", "health", "sticky", "hold_timeout", "drain_timeout",
                                 "upstreams", "compose", "service", "override", "override_secret",
                                 "override_networks", "rules", "mirror"}
X_TURNOUT_KEYS = SERVICE_KEYS - {"compose", "service", "upstreams"}
SERVICE_OVERRIDES = frozenset({"image", "strategy", "replicas", "hold_timeout", "drain_timeout", "verify"})
OVERRIDES = CANARY_KEYS | ROLLING_KEYS | BLUEGREEN_KEYS | AB_KEYS | SERVICE_OVERRIDES
