"""A ServiceConfig as plain JSON for the journal, so a service created from `turnout deploy` flags
(not in any config file) is known again after the daemon restarts.

The row holds the dataclass' fields; reading it back goes through the config's own reader
(`reader.read_service`), so a bad or tampered row is refused with an error naming its key, exactly like
a bad turnout.toml, instead of becoming a ServiceConfig nothing checked.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .model import CONTAINER_KEYS, ConfigError, ServiceConfig
from .reader import read_service
from .table import Table

JOURNAL_SOURCE = "the journal"
# Fields that say where a service came from rather than what it is: not read as config keys (a Compose
# file is not read again: the row holds what was read from it).
_ORIGIN = ("name", "compose_file", "compose_service")
_RENAMED = {"hosts": "host"}  # dataclass field -> config key


def service_to_dict(config: ServiceConfig) -> dict[str, Any]:
    data = asdict(config)
    for key in ("compose_file",):
        if data[key] is not None:
            data[key] = str(data[key])
    data["rules"] = [rule.to_dict() for rule in config.rules]  # as turnout.toml writes them
    data["mirror"] = config.mirror.to_dict() if config.mirror is not None else None
    ab = config.ab
    data["ab"] = {"duration": ab.duration, "then": ab.then,
                  **({"match": ab.match.to_dict()["match"]} if ab.match is not None else {})}
    return data


def service_from_dict(data: Any, source: Path | str | None = JOURNAL_SOURCE) -> ServiceConfig:
    """The service a journal row describes, validated by the config reader; errors name the key as
    `config.<key>` and `source` (e.g. the journal's path and the service)."""
    if not isinstance(data, dict):
        raise ConfigError("config", f"must be an object, got {data!r}", source)
    config = read_service(data.get("name"), Table(_as_config(data), "config", source), None)
    compose_file = data.get("compose_file")
    return replace(config, compose_file=Path(compose_file) if isinstance(compose_file, str) else None,
                   compose_service=data.get("compose_service") or None)


def _as_config(data: dict[str, Any]) -> dict[str, Any]:
    """The row in turnout.toml's vocabulary: None is an absent key, `hosts` is `host`, volumes are
    "source:target:mode", a manual step_pause is "manual", a preset stands for its steps."""
    static = bool(data.get("upstreams"))
    config: dict[str, Any] = {}
    for key, value in data.items():
        if key in _ORIGIN or value is None or (key == "upstreams" and not static):
            continue
        if static and key in CONTAINER_KEYS:  # a routed service's dataclass carries unused defaults
            continue
        config[_RENAMED.get(key, key)] = _lists(value)
    if isinstance(config.get("volumes"), list):
        config["volumes"] = [_volume(v) for v in config["volumes"]]
    if isinstance(config.get("canary"), dict):
        config["canary"] = _canary(config["canary"])
    if isinstance(config.get("hooks"), dict):  # a hook's unused kinds are None: absent keys
        config["hooks"] = {point: {k: v for k, v in hook.items() if v is not None}
                           if isinstance(hook, dict) else hook for point, hook in config["hooks"].items()}
    return config


def _lists(value: Any) -> Any:
    """Tuples as lists, as JSON gives them (a row may also come straight from `service_to_dict`)."""
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def _volume(value: Any) -> Any:
    if isinstance(value, dict) and {"source", "target"} <= value.keys():
        return f"{value['source']}:{value['target']}:{'ro' if value.get('read_only') else 'rw'}"
    return value  # not a volume row: the reader names what is wrong with it


def _canary(canary: dict[str, Any]) -> dict[str, Any]:
    canary = dict(canary)
    if canary.get("preset") is not None:  # the preset sets steps and step_pause
        canary.pop("steps", None)
        canary.pop("step_pause", None)
    else:
        canary.pop("preset", None)
        if "step_pause" in canary and canary["step_pause"] is None:
            canary["step_pause"] = "manual"
    return {k: v for k, v in canary.items() if v is not None}
