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
# Routing rules (proxy/rules.py): what a rule may look at, and the pools it may name besides a version.
RULE_KEYS = ("name", "match", "to")
MATCH_KEYS = ("header", "cookie", "query", "hash")
HASH_SOURCES = ("cookie", "header")
RULE_TARGETS = ("canary", "stable")  # the newest pool (label "canary") and the stable one (label "stable")
MAX_RULES = 32
MAX_PATTERN = 1024  # characters of one match value
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Shadow traffic (proxy/mirror.py): copies of sampled requests to another pool, answers compared.
MIRROR_KEYS = ("to", "percent", "max_per_second", "methods", "max_body", "compare", "ignore", "headers",
               "timeout")
MIRROR_HEADERS = ("content-type", "location", "cache-control")  # compared unless `headers` says otherwise
MAX_MIRROR_BODY = 16 * 1024 * 1024
_IGNORE_RE = re.compile(r"json:\$(?:\.[^.\[\]]+|\[(?:[0-9]+|\*)\])*|header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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
class HashSpec:
    """Stable buckets: the value of a cookie or header, hashed with the rule's name, lands in one of
    10,000 buckets; the first `percent` of them match (so raising the percent keeps who was in)."""

    source: str  # "cookie" or "header"
    key: str  # the cookie's or header's name
    percent: float  # 0 < percent <= 100, in steps of 0.01


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One routing rule: when every condition matches, the request goes to `to` ("canary", "stable" or a
    pool name) if that pool is routable; otherwise the next rule is tried. Conditions are (name,
    pattern) pairs; a pattern is an exact value, "prefix:<text>", "regex:<full match>" or
    "exact:<text>"."""

    name: str
    to: str
    header: tuple[tuple[str, str], ...] = ()
    cookie: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    hash: HashSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """The rule as turnout.toml and the admin API write it (what `rules_from_list` reads)."""
        match: dict[str, Any] = {source: dict(getattr(self, source))
                                 for source in ("header", "cookie", "query") if getattr(self, source)}
        if self.hash is not None:
            match["hash"] = {self.hash.source: self.hash.key, "percent": self.hash.percent}
        return {"name": self.name, "match": match, "to": self.to}


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    """Shadow traffic: `percent` of the requests with one of `methods` (at most `max_per_second`) are
    copied to the pool `to` ("canary", "stable" or a pool name) when it is another pool than the one
    serving them; with `compare`, the two answers are compared (status, `headers`, the body up to
    `max_body` bytes), leaving out `ignore` ("json:$.path", "header:Name")."""

    to: str = "canary"
    percent: float = 10.0
    max_per_second: int = 200
    methods: tuple[str, ...] = ("GET", "HEAD")
    max_body: int = 64 * 1024
    compare: bool = True
    ignore: tuple[str, ...] = ()
    headers: tuple[str, ...] = MIRROR_HEADERS
    timeout: float = 5.0  # seconds a copy (and the client's answer it is compared with) may take

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("methods", "ignore", "headers"):
            data[key] = list(data[key])
        return data


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
    rules: tuple[RuleSpec, ...] = ()  # tried in order, after the pool override, before the sticky cookie
    mirror: MirrorSpec | None = None  # shadow traffic with a response diff (proxy/mirror.py)

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
        data["rules"] = [rule.to_dict() for rule in self.rules]
        data["mirror"] = self.mirror.to_dict() if self.mirror is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Any, name: str | None = None) -> ServiceSpec:
        """Validate untrusted input (admin API JSON); raise ValidationError naming the field."""
        if not isinstance(data, dict):
            raise ValidationError("service", "must be a JSON object")
        known = {"name", "pools", "hosts", "path_prefix", "balance", "state", "sticky", "health",
                 "hold_timeout", "labels", "override", "override_secret", "override_networks", "rules",
                 "mirror"}
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
            rules=rules_from_list(data.get("rules", [])),
            mirror=mirror_from_dict(data["mirror"]) if data.get("mirror") is not None else None,
        )


def mirror_from_dict(raw: Any, where: str = "mirror") -> MirrorSpec:
    """Validate a mirror table (turnout.toml's `[services.x.mirror]`, with `max_body` in bytes here);
    a bad value raises ValidationError naming its key (`mirror.percent`)."""
    if not isinstance(raw, dict):
        raise ValidationError(where, "must be a table")
    for key in raw:
        if key not in MIRROR_KEYS:
            raise ValidationError(f"{where}.{key}", f"unknown key (known: {', '.join(MIRROR_KEYS)})")
    d = MirrorSpec()
    to = raw.get("to", d.to)
    if to not in RULE_TARGETS:
        try:
            _check_name(f"{where}.to", to)
        except ValidationError:
            raise ValidationError(f"{where}.to", f"must be canary, stable or a version (pool) name, got "
                                  f"{to!r}") from None
    percent = _number(f"{where}.percent", raw.get("percent", d.percent), 0.0, 100.0)
    if percent <= 0:
        raise ValidationError(f"{where}.percent", "must be above 0")
    rate = raw.get("max_per_second", d.max_per_second)
    if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= 100_000:
        raise ValidationError(f"{where}.max_per_second", f"must be a whole number 1-100000, got {rate!r}")
    methods = _strings(f"{where}.methods", raw.get("methods", list(d.methods)))
    for method in methods:
        if not _HEADER_NAME_RE.fullmatch(method) or method.upper() != method:
            raise ValidationError(f"{where}.methods", f"{method!r} is not an upper-case method name")
    max_body = raw.get("max_body", d.max_body)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or not 0 <= max_body <= MAX_MIRROR_BODY:
        raise ValidationError(f"{where}.max_body", f"must be 0-{MAX_MIRROR_BODY} bytes, got {max_body!r}")
    compare = raw.get("compare", d.compare)
    if not isinstance(compare, bool):
        raise ValidationError(f"{where}.compare", "must be true or false")
    ignore = _strings(f"{where}.ignore", raw.get("ignore", []))
    for entry in ignore:
        if not _IGNORE_RE.fullmatch(entry):
            raise ValidationError(f"{where}.ignore", f"{entry!r} is neither json:$.path (.key, [0], [*]) "
                                  "nor header:Name")
    headers = _strings(f"{where}.headers", raw.get("headers", list(d.headers)))
    for name in headers:
        if not _HEADER_NAME_RE.fullmatch(name):
            raise ValidationError(f"{where}.headers", f"{name!r} is not a header name")
    timeout = _number(f"{where}.timeout", raw.get("timeout", d.timeout), 0.01, 60.0, unit=" seconds")
    return MirrorSpec(to=to, percent=percent, max_per_second=rate, methods=tuple(methods), max_body=max_body,
                      compare=compare, ignore=tuple(ignore), headers=tuple(h.lower() for h in headers),
                      timeout=timeout)


def _strings(where: str, raw: Any) -> list[str]:
    if not isinstance(raw, list | tuple) or not all(isinstance(v, str) and v for v in raw):
        raise ValidationError(where, f"must be a list of non-empty strings, got {raw!r}")
    return list(raw)


def rules_from_list(raw: Any, where: str = "rules") -> tuple[RuleSpec, ...]:
    """Validate a list of rules (turnout.toml's `[[services.x.rules]]`, the admin API's JSON); a bad one
    raises ValidationError naming its key (`rules[0].match.header.X-Canary`)."""
    if not isinstance(raw, list | tuple):
        raise ValidationError(where, "must be a list of rules")
    if len(raw) > MAX_RULES:
        raise ValidationError(where, f"at most {MAX_RULES} rules, got {len(raw)}")
    rules = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        rule = rule_from_dict(item, f"{where}[{i}]")
        if rule.name in names:
            raise ValidationError(f"{where}[{i}].name", f"duplicate rule {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def rule_from_dict(item: Any, where: str = "rule") -> RuleSpec:
    if not isinstance(item, dict):
        raise ValidationError(where, "must be a table with name, match and to")
    for key in item:
        if key not in RULE_KEYS:
            raise ValidationError(f"{where}.{key}", f"unknown key (known: {', '.join(RULE_KEYS)})")
    for key in RULE_KEYS:
        if key not in item:
            raise ValidationError(f"{where}.{key}", "required")
    _check_name(f"{where}.name", item["name"])
    to = item["to"]
    if to not in RULE_TARGETS:
        try:
            _check_name(f"{where}.to", to)
        except ValidationError:
            raise ValidationError(f"{where}.to", f"must be canary, stable or a version (pool) name, got "
                                  f"{to!r}") from None
    match = item["match"]
    if not isinstance(match, dict) or not match:
        raise ValidationError(f"{where}.match",
                              f"must be a table of one or more of {', '.join(MATCH_KEYS)}")
    conditions: dict[str, Any] = {}
    for key, value in match.items():
        if key not in MATCH_KEYS:
            raise ValidationError(f"{where}.match.{key}",
                                  f"unknown match key (known: {', '.join(MATCH_KEYS)})")
        if key == "hash":
            conditions["hash"] = _hash_spec(value, f"{where}.match.hash")
        else:
            conditions[key] = _conditions(value, f"{where}.match.{key}", key)
    return RuleSpec(name=item["name"], to=to, **conditions)


def _conditions(raw: Any, where: str, source: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict) or not raw:
        raise ValidationError(where, f"must be a table of {source} name = value (exact, \"prefix:...\" or "
                              "\"regex:...\")")
    pairs = []
    for name, pattern in raw.items():
        key = f"{where}.{name}"
        if (not isinstance(name, str) or not name
                or (source != "query" and not _HEADER_NAME_RE.fullmatch(name))):
            raise ValidationError(key, f"{name!r} is not a {source} name")
        check_pattern(key, pattern)
        pairs.append((name, pattern))
    return tuple(pairs)


def check_pattern(where: str, pattern: Any) -> None:
    """A match value: exact text, "prefix:<text>", "exact:<text>" or "regex:<pattern>" (which must
    compile: a bad one is refused here, naming its key, never at the first request)."""
    if not isinstance(pattern, str):
        raise ValidationError(where, f"must be a string, got {pattern!r}")
    if len(pattern) > MAX_PATTERN:
        raise ValidationError(where, f"at most {MAX_PATTERN} characters")
    if pattern.startswith("regex:"):
        try:
            re.compile(pattern[6:])
        except re.error as exc:
            raise ValidationError(where, f"bad regex {pattern[6:]!r}: {exc}") from None


def _hash_spec(raw: Any, where: str) -> HashSpec:
    if not isinstance(raw, dict):
        raise ValidationError(where, "must be a table: { cookie = \"name\", percent = 10 } (or header)")
    for key in raw:
        if key not in (*HASH_SOURCES, "percent"):
            raise ValidationError(f"{where}.{key}", "unknown key (known: cookie, header, percent)")
    sources = [s for s in HASH_SOURCES if s in raw]
    if len(sources) != 1:
        raise ValidationError(where, "needs exactly one of cookie or header (whose value is hashed)")
    source = sources[0]
    key = raw[source]
    if not isinstance(key, str) or not _HEADER_NAME_RE.fullmatch(key):
        raise ValidationError(f"{where}.{source}", f"{key!r} is not a {source} name")
    if "percent" not in raw:
        raise ValidationError(f"{where}.percent", "required (0-100)")
    percent = _number(f"{where}.percent", raw["percent"], 0.0, 100.0)
    if percent <= 0 or abs(percent * 100 - round(percent * 100)) > 1e-6:
        raise ValidationError(f"{where}.percent",
                              f"must be above 0, in steps of 0.01, got {raw['percent']!r}")
    return HashSpec(source, key, percent)


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
