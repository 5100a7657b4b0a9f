"""Reading turnout.toml: `load_config(path)` gives a validated `Config` (or the embedded defaults for
None). Each section has its reader here; a service may take its container definition from a Compose file
(`compose`), and command-line flags go through the same readers (`overrides`)."""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import shlex
import stat
import tomllib
from pathlib import Path
from typing import Any

from proxy.config import ACCESS_LOG_FORMATS, ProxyConfig
from proxy.errors import ValidationError
from proxy.specs import (
    NAME_RE,
    MirrorSpec,
    RuleSpec,
    mirror_from_dict,
    override_settings,
    parse_address,
    rule_from_dict,
    rules_from_list,
)
from proxy.tls.config import AcmeConfig, TlsConfig

from ..hardening import (
    DEFAULT_CAP_ADD,
    DEFAULT_CAP_DROP,
    DEFAULT_PIDS_LIMIT,
    DEFAULT_SECURITY_OPT,
    cap_add_problem,
    cap_drop_problem,
    capability,
    security_opt_problem,
)
from ..labels import CORE_KEYS
from .compose import read_compose_service
from .duration import DurationError, parse_duration
from .model import (
    AB_KEYS,
    AB_THEN,
    ACME_KEYS,
    BLUEGREEN_KEYS,
    CANARY_KEYS,
    CONTAINER_KEYS,
    DASHBOARD_KEYS,
    DEFAULT_HOOK_TIMEOUT,
    DEFAULT_STATE_DIR,
    DEFAULT_STOP_TIMEOUT,
    DEFAULT_VERIFY,
    HEALTH_KEYS,
    HOOK_KEYS,
    HOOK_KINDS,
    HOOK_POINTS,
    MAX_REPLICAS,
    MIN_MEMORY_BYTES,
    PROXY_FIELDS,
    PROXY_KEYS,
    ROLLING_KEYS,
    SERVICE_KEYS,
    STRATEGIES,
    TLS_KEYS,
    AbOptions,
    BlueGreenOptions,
    CanaryOptions,
    Config,
    ConfigError,
    DashboardConfig,
    HealthCheck,
    Hook,
    RollingOptions,
    ServiceConfig,
    Volume,
)
from .table import Table

_PRESET = re.compile(r"(canary|linear)(\d+)-(\w+)")
_HOST = re.compile(r"[a-z0-9*]([a-z0-9*.-]*[a-z0-9])?(:\d{1,5})?")
_MEMORY = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", re.IGNORECASE)
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_URL_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")  # fits in `?token=` unescaped (secrets.token_urlsafe)
MIN_DASHBOARD_TOKEN = 32
# A rule's match written on one line (`--match`, `--rule`): `header:X-Canary=always`, `cookie:beta=prefix:y`,
# `query:b=1`, `hash:cookie:account_id=10%` (the value takes turnout.toml's forms: exact, prefix:, regex:).
_MATCH_TEXT = re.compile(r"(header|cookie|query):([^=]+)=(.*)", re.DOTALL)
_HASH_TEXT = re.compile(r"hash:(cookie|header):([^=]+)=([0-9]+(?:\.[0-9]+)?)%?")
MATCH_SYNTAX = ("header:NAME=VALUE, cookie:NAME=VALUE, query:NAME=VALUE (VALUE: exact, prefix:..., "
                "regex:...) or hash:cookie:NAME=PERCENT (or hash:header:...)")


def _proxy(t: Table, base_dir: Path | None) -> tuple[ProxyConfig, Path]:
    t.reject_unknown(PROXY_KEYS)
    state_dir = _resolve(Path(t.string("state_dir", str(DEFAULT_STATE_DIR))), base_dir)
    options: dict[str, Any] = {}
    for name, f in PROXY_FIELDS.items():
        if not t.has(name):
            continue
        if name.endswith("_timeout"):
            options[name] = t.duration(name, positive=True)
        elif name == "access_log":
            options[name] = _access_log(t, base_dir)
        elif name == "access_log_format":
            options[name] = t.string(name, choices=ACCESS_LOG_FORMATS)
        elif name == "access_log_sample":
            options[name] = t.number(name, positive=True, maximum=1.0)
        elif isinstance(f.default, bool):
            options[name] = t.boolean(name, f.default)
        elif isinstance(f.default, int):
            options[name] = t.integer(name, minimum=1 if name == "max_connections" else 0)
        elif name == "trusted_proxies":
            options[name] = t.strings(name)
        else:
            options[name] = t.string(name)
    for name in ("listen", "admin_tcp", "routing_listen"):
        if name in options:
            _address(t, name, options[name])
    if t.has("admin_token_file"):
        if t.has("admin_token"):
            raise t.error("admin_token_file", "cannot be combined with admin_token (choose one)")
        options["admin_token"] = _token_file(t, base_dir)
    admin_socket = _resolve(Path(options.get("admin_socket", state_dir / "admin.sock")), base_dir)
    if len(os.fsencode(admin_socket)) > 107:  # sun_path holds 108 bytes with the terminating NUL
        raise t.error("admin_socket", f"{admin_socket} is too long for a unix socket path (max 107 bytes)")
    options["admin_socket"] = str(admin_socket)
    if t.has("tls"):
        options["tls"] = _tls(t.table("tls"), base_dir, state_dir)  # type: ignore[arg-type]
    try:
        return ProxyConfig(**options), state_dir
    except ValidationError as exc:  # ProxyConfig's own cross-field checks name their key
        from_file = exc.key == "admin_token" and t.has("admin_token_file")
        raise t.error("admin_token_file" if from_file else exc.key, exc.message) from None


def _access_log(t: Table, base_dir: Path | None) -> bool | str:
    """`access_log`: true (stderr), false (off), or a file (relative to the config file's directory),
    whose directory must exist; the file is created (0640) or appended to."""
    value = t.data["access_log"]
    if isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value.strip():
        raise t.error("access_log", f"must be true, false or a file path, got {value!r}")
    path = _resolve(Path(value), base_dir)
    if not path.parent.is_dir():
        raise t.error("access_log", f"the directory of {path} does not exist")
    if path.is_dir():
        raise t.error("access_log", f"{path} is a directory; name a file in it")
    return str(path)


def read_dashboard(t: Table) -> DashboardConfig:
    """`[dashboard]` (or `serve --dashboard`): a token is required unless the listener is loopback."""
    t.reject_unknown(DASHBOARD_KEYS)
    listen = t.string("listen")
    if listen is None:
        raise t.error("listen", "required: the dashboard's host:port, e.g. \"127.0.0.1:8081\"")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise t.error("listen", f"{listen!r} is not host:port with a port in 0-65535 (0: any free port)")
    token = None if t.data.get("token") in (None, "") else t.string("token")  # `token = ""`: none
    if token is not None:
        if not _URL_TOKEN.fullmatch(token) or len(token) < MIN_DASHBOARD_TOKEN:
            raise t.error("token", f"must be at least {MIN_DASHBOARD_TOKEN} characters of A-Z a-z 0-9 . _ ~ -"
                                   " (make one with `python3 -c 'import secrets; "
                                   "print(secrets.token_urlsafe(32))'`)")
    elif not is_loopback(host.strip("[]")):
        raise t.error("token", f"required when the dashboard listens beyond loopback ({listen})")
    allow_actions = t.boolean("allow_actions", False)
    if allow_actions and token is None:  # the admin socket is the owner's alone; so are its actions
        raise t.error("allow_actions", "needs dashboard.token: without one, anyone on this host could "
                                       "steer deploys from the dashboard")
    return DashboardConfig(listen=listen, token=token, allow_actions=allow_actions)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
def _tls(t: Table, base_dir: Path | None, state_dir: Path) -> TlsConfig:
    """[proxy.tls]: the HTTPS listener; `certs_dir` must be a directory Turnout can read now."""
    t.reject_unknown(TLS_KEYS)
    d = TlsConfig(certs_dir="-")
    options: dict[str, Any] = {"state_dir": str(state_dir)}
    if t.has("listen"):
        options["listen"] = t.string("listen")
        _address(t, "listen", options["listen"])
    if t.has("certs_dir"):
        options["certs_dir"] = str(_readable_dir(t, "certs_dir", base_dir))
    options["default"] = t.string("default", d.default)
    options["redirect_http"] = t.boolean("redirect_http", d.redirect_http)
    options["hsts"] = t.duration("hsts", d.hsts)
    options["min_version"] = t.string("min_version", d.min_version)
    options["session_tickets"] = t.boolean("session_tickets", d.session_tickets)
    options["handshake_timeout"] = t.duration("handshake_timeout", d.handshake_timeout, positive=True)
    options["max_handshakes_per_client"] = t.integer("max_handshakes_per_client", d.max_handshakes_per_client,
                                                     minimum=1, maximum=100_000)
    acme = t.table("acme")
    if acme is not None:
        options["acme"] = _acme(acme, base_dir)
    try:
        return TlsConfig(**options)
    except ValidationError as exc:
        raise t.error(exc.key, exc.message) from None


def _acme(t: Table, base_dir: Path | None) -> AcmeConfig:
    t.reject_unknown(ACME_KEYS)
    d = AcmeConfig()
    ca_bundle = None
    if t.has("ca_bundle") and t.data["ca_bundle"] != "":
        ca_bundle = _resolve(Path(t.string("ca_bundle")), base_dir)
        if not os.access(ca_bundle, os.R_OK) or not ca_bundle.is_file():
            raise t.error("ca_bundle", f"{ca_bundle} is not a readable file")
    hosts = tuple(h.strip().lower() for h in t.strings("hosts"))
    try:
        return AcmeConfig(directory=t.string("directory", d.directory), email=t.string("email"),
                          ca_bundle=str(ca_bundle) if ca_bundle else None, hosts=hosts,
                          retry_min=t.duration("retry_min", d.retry_min, positive=True),
                          retry_max=t.duration("retry_max", d.retry_max, positive=True))
    except ValidationError as exc:
        raise t.error(exc.key.removeprefix("acme."), exc.message) from None


def _readable_dir(t: Table, key: str, base_dir: Path | None) -> Path:
    path = _resolve(Path(t.string(key)), base_dir)
    if not path.exists():
        raise t.error(key, f"{path} does not exist")
    if not path.is_dir():
        raise t.error(key, f"{path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise t.error(key, f"{path} cannot be read by this user")
    return path


def _token_file(t: Table, base_dir: Path | None) -> str:
    """`admin_token_file`: the token is the file's content without surrounding whitespace. Like an ssh
    key, the file must not be open to other users (0600, or 0640 for a group)."""
    path = _resolve(Path(t.string("admin_token_file")), base_dir)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise t.error("admin_token_file", f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if mode & 0o027:
        raise t.error("admin_token_file", f"{path} is open to other users (mode {mode:04o}): chmod 600 it")
    if not token:
        raise t.error("admin_token_file", f"{path} is empty")
    return token


def _address(t: Table, key: str, value: str) -> None:
    try:
        parse_address(key, value)
    except ValidationError as exc:
        raise t.error(key, exc.message) from None


def _resolve(path: Path, base_dir: Path | None) -> Path:
    path = path.expanduser()
    return path if base_dir is None or path.is_absolute() else base_dir / path


def _health(t: Table | None) -> HealthCheck:
    if t is None:
        return HealthCheck()
    t.reject_unknown(HEALTH_KEYS)
    d = HealthCheck()
    health = HealthCheck(
        path=t.string("path", d.path),
        interval=t.duration("interval", d.interval),
        timeout=t.duration("timeout", d.timeout),
        healthy=t.integer("healthy", d.healthy),
        unhealthy=t.integer("unhealthy", d.unhealthy),
        start_timeout=t.duration("start_timeout", d.start_timeout, positive=True),
    )
    try:  # the proxy's own check (proxy/specs.py HealthSpec): one set of bounds for every layer
        health.to_proxy()
    except ValidationError as exc:
        raise t.error(exc.key, exc.message) from None
    return health


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


def _steps(t: Table, key: str) -> tuple[int, ...]:
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


def read_canary(t: Table | None) -> CanaryOptions:
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
        max_diff_rate=t.number("max_diff_rate", d.max_diff_rate, minimum=0, maximum=1),
        analysis_interval=t.duration("analysis_interval", d.analysis_interval, positive=True),
        preset=preset,
    )


def match_from_text(text: str) -> dict[str, Any] | None:
    """A match written on one line (MATCH_SYNTAX) as turnout.toml's `match` table; None when it is not."""
    if (found := _HASH_TEXT.fullmatch(text)) is not None:
        percent = float(found[3])
        return {"hash": {found[1]: found[2], "percent": int(percent) if percent.is_integer() else percent}}
    if (found := _MATCH_TEXT.fullmatch(text)) is not None:
        return {found[1]: {found[2]: found[3]}}
    return None


def match_text(match: dict[str, Any]) -> str:
    """A rule's match on one line, as `--match` takes it (`header:X-Canary=always`; several conditions
    are shown joined by " & ", which only a TOML table can give)."""
    parts = []
    for source in ("header", "cookie", "query"):
        parts += [f"{source}:{name}={value}" for name, value in match.get(source, {}).items()]
    if "hash" in match:
        spec = match["hash"]
        source = "cookie" if "cookie" in spec else "header"
        parts.append(f"hash:{source}:{spec[source]}={spec['percent']:g}%")
    return " & ".join(parts)


def read_ab(t: Table | None) -> AbOptions:
    """`[services.x.ab]` (and `--match`, `--duration`, `--then`): `match` is a table as a rule's, or one
    line (`header:X-Canary=always`); it becomes the rule "ab" sending matches to the canary."""
    if t is None:
        return AbOptions()
    t.reject_unknown(AB_KEYS)
    d = AbOptions()
    match = d.match
    if t.has("match"):
        raw = t.data["match"]
        if isinstance(raw, str):
            raw = match_from_text(raw)
            if raw is None:
                raise t.error("match", f"{t.data['match']!r} is not one of {MATCH_SYNTAX}")
        try:
            match = rule_from_dict({"name": "ab", "match": raw, "to": "canary"}, "")
        except ValidationError as exc:
            raise t.error(exc.key.lstrip("."), exc.message) from None
    return AbOptions(match=match, duration=t.duration("duration", d.duration, positive=True),
                     then=t.string("then", d.then, choices=AB_THEN))


def read_rolling(t: Table | None) -> RollingOptions:
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


def read_bluegreen(t: Table | None) -> BlueGreenOptions:
    if t is None:
        return BlueGreenOptions()
    t.reject_unknown(BLUEGREEN_KEYS)
    d = BlueGreenOptions()
    return BlueGreenOptions(keep_old=t.duration("keep_old", d.keep_old),
                            preview=t.boolean("preview", d.preview))


def read_hooks(t: Table | None) -> dict[str, Hook]:
    """`[services.X.hooks]`: point = { <kind> = ..., timeout = "5m", on_failure = "abort" | "warn" }."""
    if t is None:
        return {}
    hooks = {}
    for point in t.data:
        if point not in HOOK_POINTS:
            raise t.error(str(point), f"unknown hook point (known: {', '.join(HOOK_POINTS)})")
        hook = t.table(point)
        assert hook is not None
        hook.reject_unknown(HOOK_KEYS)
        kinds = [k for k in HOOK_KINDS if hook.has(k)]
        if len(kinds) != 1:
            raise t.error(point, f"needs exactly one of {', '.join(HOOK_KINDS)}, got "
                          f"{', '.join(kinds) if kinds else 'none'}")
        kind = kinds[0]
        if kind in ("exec", "http") and point in ("pre_deploy", "migrate", "on_failure"):
            raise hook.error(kind, f"no new container serves at {point} (a new set runs from pre_traffic "
                             "to post_deploy); use oneoff or run")
        value: Any
        if kind == "http":
            value = hook.string("http")
            if not value.startswith("/"):
                raise hook.error("http", f"must be a path starting with '/', got {value!r}")
        else:
            value = hook.data[kind]
            if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
                raise hook.error(kind, f"must be a non-empty list of strings (the command and its "
                                 f"arguments, e.g. [\"/app/migrate\", \"up\"]), got {value!r}")
            value = tuple(value)
        hooks[point] = Hook(**{kind: value},  # type: ignore[arg-type]
                            timeout=hook.duration("timeout", DEFAULT_HOOK_TIMEOUT, positive=True),
                            on_failure=hook.string("on_failure", "abort", choices=("abort", "warn")))
    return hooks


def read_image(t: Table) -> str | None:
    image = t.string("image")
    if image is not None and any(c.isspace() for c in image):
        raise t.error("image", f"must not contain spaces, got {image!r}")
    return image


def _hosts(t: Table) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in t.strings("host"))
    for host in hosts:
        if not _HOST.fullmatch(host):
            raise t.error("host", f"{host!r} is not a host name")
    return hosts


def _command(t: Table) -> tuple[str, ...] | None:
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


def _volumes(t: Table, base_dir: Path | None) -> tuple[Volume, ...]:
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


def _memory(t: Table) -> int | None:
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


def _hardening(t: Table) -> dict[str, Any]:
    """pids_limit, cap_drop, cap_add, security_opt: controller/hardening.py's defaults unless given."""
    def checked(key: str, default: tuple[str, ...], problem_of: Any) -> tuple[str, ...]:
        values = t.strings(key, default)
        for value in values:
            if (problem := problem_of(value)) is not None:
                raise t.error(key, problem)
        return values

    def capabilities(key: str, default: tuple[str, ...], problem_of: Any) -> tuple[str, ...]:
        return tuple(dict.fromkeys(capability(name) for name in checked(key, default, problem_of)))

    return {
        "pids_limit": t.integer("pids_limit", DEFAULT_PIDS_LIMIT, minimum=0),
        "cap_drop": capabilities("cap_drop", DEFAULT_CAP_DROP, cap_drop_problem),
        "cap_add": capabilities("cap_add", DEFAULT_CAP_ADD, cap_add_problem),
        "security_opt": checked("security_opt", DEFAULT_SECURITY_OPT, security_opt_problem),
    }


def _labels(t: Table) -> dict[str, str]:
    labels = t.string_map("labels")
    for key in labels:
        if key in CORE_KEYS:
            raise t.error("labels", f"{key!r} is reserved for Turnout")
    return labels


def read_replicas(t: Table, default: int | None) -> int | None:
    return t.integer("replicas", default, minimum=1, maximum=MAX_REPLICAS)


def _override(t: Table) -> dict[str, Any]:
    """override / override_secret / override_networks, with the proxy's own rules (proxy/specs.py)."""
    keys = ("override", "override_secret", "override_networks")
    data = {key: t.data[key] for key in keys if key in t.data}
    if isinstance(data.get("override_networks"), str):
        data["override_networks"] = [data["override_networks"]]
    try:
        return override_settings(data)
    except ValidationError as exc:
        raise t.error(exc.field, exc.message) from None


def read_rules(t: Table, key: str = "rules") -> tuple[RuleSpec, ...]:
    """`[[services.x.rules]]`: validated by the proxy's own reader (proxy/specs.py), whose error names the
    key inside the rules (`rules[0].match.header.X-Canary`); here it gets the service's path and file."""
    try:
        return rules_from_list(t.data.get(key, []), key)
    except ValidationError as exc:
        raise t.error(exc.key, exc.message) from None


_SIZE = re.compile(r"([0-9]+)\s*(b|k|kb|kib|m|mb|mib)?", re.IGNORECASE)


def read_mirror(t: Table) -> MirrorSpec | None:
    """`[services.x.mirror]`: the proxy's own reader (proxy/specs.py), with `max_body` also as a size
    ("64KiB", "1MiB": powers of 1024)."""
    if not t.has("mirror"):
        return None
    mirror = t.table("mirror")
    assert mirror is not None
    data = dict(mirror.data)
    size = data.get("max_body")
    if isinstance(size, str):
        found = _SIZE.fullmatch(size.strip())
        if found is None:
            raise mirror.error("max_body", f"must be bytes or a size such as 64KiB or 1MiB, got {size!r}")
        unit = (found[2] or "b").lower()[:1]
        data["max_body"] = int(found[1]) * 1024 ** "bkm".index(unit)
    try:
        return mirror_from_dict(data, "mirror")
    except ValidationError as exc:
        raise t.error(exc.key, exc.message) from None


def read_strategy(t: Table) -> str:
    return t.string("strategy", "rolling", choices=STRATEGIES)


def _upstreams(t: Table) -> tuple[str, ...]:
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


def read_service(name: str, t: Table, base_dir: Path | None) -> ServiceConfig:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
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
        **_override(t),
        rules=read_rules(t),
        mirror=read_mirror(t),
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
        image=read_image(t),
        port=port,
        replicas=read_replicas(t, 1),
        health=_health(t.table("health")),
        strategy=read_strategy(t),
        env=t.string_map("env"),
        command=_command(t),
        volumes=_volumes(t, base_dir),
        labels=_labels(t),
        mem_limit=_memory(t),
        cpus=t.number("cpus", positive=True),
        **_hardening(t),
        stop_timeout=t.duration("stop_timeout", DEFAULT_STOP_TIMEOUT),
        init=t.boolean("init", False),
        canary=read_canary(t.table("canary")),
        rolling=read_rolling(t.table("rolling")),
        bluegreen=read_bluegreen(t.table("bluegreen")),
        ab=read_ab(t.table("ab")),
        verify=t.duration("verify", DEFAULT_VERIFY),
        hooks=read_hooks(t.table("hooks")),
        **common,
    )


def _with_compose(name: str, t: Table, base_dir: Path | None) -> tuple[Table, Path, str]:
    if not t.has("compose"):
        raise t.error("service", "needs `compose` (the Compose file to read the service from)")
    compose_path = _resolve(Path(t.string("compose")), base_dir)
    compose_service = t.string("service", name)
    raw, origins = read_compose_service(compose_path, compose_service, t.where("compose"), t.where("service"))
    own = {k: v for k, v in t.data.items() if k not in ("compose", "service")}
    for key in own:
        origins.pop(key, None)
    merged = Table(raw | own, t.path, t.source, origins=origins)
    return merged, compose_path, compose_service



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
    top = Table(data, "", source)
    top.reject_unknown(frozenset({"proxy", "services", "dashboard"}))
    proxy_table = top.table("proxy") or Table({}, "proxy", source)
    proxy, state_dir = _proxy(proxy_table, base_dir)
    allow_host_hooks = proxy_table.boolean("allow_host_hooks", False)
    services_table = top.table("services") or Table({}, "services", source)
    services = {name: read_service(name, services_table.table(name), base_dir)  # type: ignore[arg-type]
                for name in services_table.data}
    _check_routes(services, source)
    dashboard_table = top.table("dashboard")
    dashboard = read_dashboard(dashboard_table) if dashboard_table is not None else None
    if not allow_host_hooks:
        check_host_hooks(services.values(), source)
    return Config(proxy=proxy, state_dir=state_dir, services=services, dashboard=dashboard, source=source,
                  allow_host_hooks=allow_host_hooks)


def check_host_hooks(services: Any, source: Path | str | None) -> None:
    """`run` hooks (host commands) are refused unless `allow_host_hooks = true` in [proxy]."""
    for service in services:
        for point, hook in service.hooks.items():
            if hook.run is not None:
                raise ConfigError(f"services.{service.name}.hooks.{point}.run", "host command hooks are "
                                  "refused unless `allow_host_hooks = true` in [proxy] (they run as the "
                                  "Turnout daemon's user, on the host)", source)


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
