"""Command-line options through the config's own readers: a service from `turnout deploy` flags, and
per-deploy overrides (steps, step_pause, max_surge, keep_old, ...), errors named as `--flags`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy.errors import ValidationError
from proxy.specs import RuleSpec, rule_from_dict, rules_from_list

from .model import (
    AB_KEYS,
    BLUEGREEN_KEYS,
    CANARY_KEYS,
    CLI_SOURCE,
    OVERRIDES,
    ROLLING_KEYS,
    SERVICE_OVERRIDES,
    CanaryOptions,
    ConfigError,
    ServiceConfig,
)
from .reader import (
    MATCH_SYNTAX,
    match_from_text,
    read_ab,
    read_bluegreen,
    read_canary,
    read_image,
    read_replicas,
    read_rolling,
    read_service,
    read_strategy,
)
from .table import Table

# What `turnout deploy` may say about a service that is in no config (the admin API's `flags`).
FLAGS = ("port", "replicas", "health_path", "host")


def match_from_flag(text: str, flag: str) -> dict[str, Any]:
    """A `--rule` MATCH as turnout.toml's `match` table; ConfigError names the flag."""
    match = match_from_text(text)
    if match is None:
        raise ConfigError(flag, f"{text!r} is not one of {MATCH_SYNTAX}", CLI_SOURCE)
    return match


def rules_from_flags(triples: list[list[str]]) -> tuple[RuleSpec, ...]:
    """`--rule NAME MATCH TO`, repeated: the rules in that order, validated as turnout.toml's are."""
    rules = []
    for name, match, to in triples:
        flag = f"--rule {name}"
        try:
            rules.append(rule_from_dict({"name": name, "match": match_from_flag(match, flag), "to": to}, ""))
        except ValidationError as exc:
            raise ConfigError(flag, f"{exc.key.lstrip('.')}: {exc.message}", CLI_SOURCE) from None
    try:
        return rules_from_list([rule.to_dict() for rule in rules])
    except ValidationError as exc:  # across rules: a name given twice
        raise ConfigError("--rule", exc.message, CLI_SOURCE) from None


def service_from_flags(name: str, image: str | None, port: int | None = None, replicas: int = 1,
                       health_path: str = "/healthz", host: str | list[str] | None = None,
                       strategy: str = "rolling") -> ServiceConfig:
    """A service that is not in the config, from `turnout deploy` flags (errors name the flags)."""
    data: dict[str, Any] = {"replicas": replicas, "health": {"path": health_path}, "strategy": strategy}
    if port is not None:  # without it the reader says the port is required, naming --port
        data["port"] = port
    if image is not None:
        data["image"] = image
    if host:
        data["host"] = host
    return read_service(name, Table(data, "", CLI_SOURCE, flag_prefix=""), None)


def flags_for_existing(service: ServiceConfig, flags: dict[str, Any]) -> ServiceConfig:
    """`turnout deploy` flags for a service that exists already: `--replicas` scales it (and stays, as the
    deployed image does); `--port`, `--health-path` and `--host` say how to create a service, so one that
    differs from the service's is refused, never ignored (an existing service changes through its config).
    Checked by the same reader as a new service's flags."""
    given = {key: value for key, value in flags.items() if value is not None}
    if not given:
        return service
    if not service.managed:
        raise ConfigError(_flag(next(iter(given))), f"service {service.name!r} has static upstreams; there "
                          "is nothing to deploy", CLI_SOURCE)
    current = {"port": service.port, "health_path": service.health.path if service.health else None,
               "host": service.hosts}
    asked = service_from_flags(service.name, None, port=given.get("port", service.port),
                               replicas=given.get("replicas", service.replicas),
                               health_path=given.get("health_path", current["health_path"] or "/healthz"),
                               host=given.get("host", list(service.hosts)))
    wanted = {"port": asked.port, "health_path": asked.health.path if asked.health else None,
              "host": asked.hosts}
    for key, value in current.items():
        if key in given and wanted[key] != value:
            shown = (", ".join(value) or "none") if key == "host" else value
            raise ConfigError(_flag(key), f"service {service.name!r} exists, with {key.replace('_', ' ')} "
                              f"{shown}: this flag only creates a service (change an existing one in its "
                              "config, then `turnout apply`)", CLI_SOURCE)
    return replace(service, replicas=asked.replicas)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


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
        changes["canary"] = read_canary(_cli_table(_canary_base(service.canary, canary) | canary))
    if rolling := {k: v for k, v in given.items() if k in ROLLING_KEYS}:
        base = {"max_surge": service.rolling.max_surge, "max_unavailable": service.rolling.max_unavailable}
        changes["rolling"] = read_rolling(_cli_table(base | rolling))
    if bluegreen := {k: v for k, v in given.items() if k in BLUEGREEN_KEYS}:
        changes["bluegreen"] = read_bluegreen(_cli_table(bluegreen | {
            k: getattr(service.bluegreen, k) for k in BLUEGREEN_KEYS - set(bluegreen)}))
    if ab := {k: v for k, v in given.items() if k in AB_KEYS}:
        current = service.ab
        base: dict[str, Any] = {"duration": current.duration, "then": current.then}
        if current.match is not None:
            base["match"] = current.match.to_dict()["match"]
        changes["ab"] = read_ab(_cli_table(base | ab))
    own = _cli_table({k: v for k, v in given.items() if k in SERVICE_OVERRIDES})
    readers = {"image": read_image, "strategy": read_strategy,
               "replicas": lambda t: read_replicas(t, None),
               "hold_timeout": lambda t: t.duration("hold_timeout", positive=True),
               "drain_timeout": lambda t: t.duration("drain_timeout", positive=True),
               "verify": lambda t: t.duration("verify")}
    changes.update({key: readers[key](own) for key in own.data})
    return replace(service, **changes)


def _cli_table(data: dict[str, Any]) -> Table:
    return Table(data, "", CLI_SOURCE, flag_prefix="")


def _canary_base(current: CanaryOptions, given: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {k: getattr(current, k) for k in
                            ("max_error_rate", "max_p99_ratio", "min_requests", "analysis_interval")}
    if "preset" not in given:  # a new preset replaces steps and pause; otherwise keep the current ones
        base["steps"] = list(current.steps)
        base["step_pause"] = "manual" if current.step_pause is None else current.step_pause
    return base
