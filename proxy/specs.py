"""The desired routing state as plain, validated values (what the admin API and controller set).

Every constructor path goes through `ServiceSpec.from_dict`, which names the bad field in its error, so
a bad request changes nothing. The effective table (`table.py`) is derived from these plus health.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ValidationError

# Names of services, pools and versions: they end up in cookies, headers, labels and /metrics, so they
# must be matched whole (`fullmatch`: `$` would let a trailing newline through).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
BALANCES = ("round_robin", "least_outstanding")
STATES = ("active", "paused", "stopped")
# Who may pick a pool with X-Turnout-Pool / the turnout-pool cookie (proxy/override.py).
OVERRIDE_MODES = ("off", "header-secret", "trusted")
# An override secret travels in a header and a cookie value: token characters only, long enough to guess.
SECRET_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
MAX_WEIGHT = 1_000_000
# A health check's bounds: the one place both layers take them from (turnout.toml, the journal and the
# admin API all build a HealthSpec, which checks them).
HEALTH_THRESHOLDS = (1, 100)  # `healthy` / `unhealthy`: consecutive probes
HEALTH_SECONDS = (0.01, 3600.0)  # `interval` / `timeout`
HEALTH_KEYS = ("path", "interval", "timeout", "healthy", "unhealthy")


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """Active HTTP probe per upstream: `healthy` passes in a row make it healthy, `unhealthy` failures
    unhealthy. Checks its own values: a bad one raises ValidationError naming the key."""

    path: str = "/healthz"
    interval: float = 1.0
    timeout: float = 1.0
    healthy: int = 2
    unhealthy: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValidationError("path", f"must start with '/', got {self.path!r}")
        for key in ("interval", "timeout"):
            _number(key, getattr(self, key), *HEALTH_SECONDS, unit=" seconds")
        low, high = HEALTH_THRESHOLDS
        for key in ("healthy", "unhealthy"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValidationError(key, f"must be a whole number {low}-{high}, got {value!r}")


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    weight: int
    upstreams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    pools: tuple[PoolSpec, ...]
    hosts: tuple[str, ...] = ()
    path_prefix: str = "/"
    balance: str = "round_robin"
    state: str = "active"
    sticky: bool = False
    health: HealthSpec | None = None
    hold_timeout: float | None = None  # None: the proxy-wide default
    labels: dict[str, str] = field(default_factory=dict)  # free-form, e.g. which pool is stable
    # The pool override (X-Turnout-Pool / turnout-pool cookie): "off", "header-secret" (the value is
    # `<pool>:<override_secret>`) or "trusted" (clients whose address is in `override_networks`).
    override: str = "off"
    override_secret: str | None = None
    override_networks: tuple[str, ...] = ()

    @property
    def upstream_addresses(self) -> set[str]:
        return {address for pool in self.pools for address in pool.upstreams}

    def pool(self, name: str) -> PoolSpec | None:
        return next((p for p in self.pools if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pools"] = [asdict(p) | {"upstreams": list(p.upstreams)} for p in self.pools]
        data["hosts"] = list(self.hosts)
        data["override_networks"] = list(self.override_networks)
        return data

    @classmethod
    def from_dict(cls, data: Any, name: str | None = None) -> ServiceSpec:
        """Validate untrusted input (admin API JSON); raise ValidationError naming the field."""
        if not isinstance(data, dict):
            raise ValidationError("service", "must be a JSON object")
        known = {"name", "pools", "hosts", "path_prefix", "balance", "state", "sticky", "health",
                 "hold_timeout", "labels", "override", "override_secret", "override_networks"}
        for key in data:
            if key not in known:
                raise ValidationError(str(key), f"unknown field (known: {', '.join(sorted(known))})")
        name = data.get("name", name)
        _check_name("name", name)
        pools = _pools(data.get("pools"))
        hosts = data.get("hosts", [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            raise ValidationError("hosts", "must be a list of host names")
        prefix = data.get("path_prefix", "/")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ValidationError("path_prefix", "must be a string starting with '/'")
        balance = data.get("balance", "round_robin")
        if balance not in BALANCES:
            raise ValidationError("balance", f"must be one of {', '.join(BALANCES)}")
        state = data.get("state", "active")
        if state not in STATES:
            raise ValidationError("state", f"must be one of {', '.join(STATES)}")
        sticky = data.get("sticky", False)
        if not isinstance(sticky, bool):
            raise ValidationError("sticky", "must be true or false")
        hold = data.get("hold_timeout")
        if hold is not None:
            hold = _number("hold_timeout", hold, minimum=0.0, maximum=3600.0)
        labels = data.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValidationError("labels", "must be an object of strings")
        return cls(
            name=name,
            pools=pools,
            hosts=tuple(h.lower() for h in hosts),
            path_prefix=prefix,
            balance=balance,
            state=state,
            sticky=sticky,
            health=_health(data.get("health")),
            hold_timeout=hold,
            labels=dict(labels),
            **override_settings(data),
        )


def override_settings(data: dict[str, Any]) -> dict[str, Any]:
    """The override keys: a mode, and exactly what that mode needs (a secret, or client networks)."""
    mode = data.get("override", "off")
    if mode not in OVERRIDE_MODES:
        raise ValidationError("override", f"must be one of {', '.join(OVERRIDE_MODES)}")
    secret = data.get("override_secret")
    networks = data.get("override_networks", [])
    if mode == "header-secret":
        if not isinstance(secret, str) or not SECRET_RE.fullmatch(secret):
            raise ValidationError("override_secret", "must be 16-256 characters of letters, digits and "
                                  "._~+/=- (required with override = header-secret)")
    elif secret is not None:
        raise ValidationError("override_secret", "only with override = header-secret")
    if not isinstance(networks, list | tuple) or not all(isinstance(n, str) for n in networks):
        raise ValidationError("override_networks", "must be a list of addresses or CIDR networks")
    if mode == "trusted":
        if not networks:
            raise ValidationError("override_networks", "required with override = trusted (CIDR networks "
                                  "such as 10.0.0.0/8, or addresses)")
        for network in networks:
            parse_network("override_networks", network)
    elif networks:
        raise ValidationError("override_networks", "only with override = trusted")
    return {"override": mode, "override_secret": secret, "override_networks": tuple(networks)}


def parse_network(where: str, value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """'10.0.0.0/8', '::1' or '192.168.1.7' (one address) -> a network, or ValidationError."""
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(where, f"{value!r} is not an address or CIDR network") from None


def _check_name(where: str, value: Any) -> None:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValidationError(where, "must be 1-63 characters of letters, digits, '_', '.', '-'")


def _number(where: str, value: Any, minimum: float, maximum: float, unit: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(where, f"must be a number, got {value!r}")
    if not minimum <= value <= maximum:
        raise ValidationError(where, f"must be between {minimum:g} and {maximum:g}{unit}, got {value!r}")
    return float(value)


def parse_address(where: str, address: Any) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port), or ValidationError."""
    if not isinstance(address, str) or ":" not in address:
        raise ValidationError(where, f"{address!r} is not host:port")
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(where, f"{address!r} is not host:port with a port in 1-65535")
    return host, int(port)


def _pools(raw: Any) -> tuple[PoolSpec, ...]:
    if not isinstance(raw, list):
        raise ValidationError("pools", "must be a list")
    pools = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"pools[{i}]"
        if not isinstance(item, dict):
            raise ValidationError(where, "must be an object")
        extra = set(item) - {"name", "weight", "upstreams"}
        if extra:
            raise ValidationError(f"{where}.{sorted(extra)[0]}", "unknown field")
        _check_name(f"{where}.name", item.get("name"))
        if item["name"] in seen:
            raise ValidationError(f"{where}.name", f"duplicate pool {item['name']!r}")
        seen.add(item["name"])
        weight = item.get("weight", 0)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise ValidationError(f"{where}.weight", f"must be an integer 0-{MAX_WEIGHT}")
        upstreams = item.get("upstreams", [])
        if not isinstance(upstreams, list):
            raise ValidationError(f"{where}.upstreams", "must be a list of host:port")
        for j, address in enumerate(upstreams):
            parse_address(f"{where}.upstreams[{j}]", address)
        if len(set(upstreams)) != len(upstreams):
            raise ValidationError(f"{where}.upstreams", "lists an upstream twice")
        pools.append(PoolSpec(item["name"], weight, tuple(upstreams)))
    return tuple(pools)


def _health(raw: Any) -> HealthSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationError("health", "must be an object or null")
    extra = set(raw) - set(HEALTH_KEYS)
    if extra:
        raise ValidationError(f"health.{sorted(extra)[0]}",
                              f"unknown field (known: {', '.join(HEALTH_KEYS)})")
    try:
        return HealthSpec(**raw)
    except ValidationError as exc:
        raise ValidationError(f"health.{exc.key}", exc.message) from None
