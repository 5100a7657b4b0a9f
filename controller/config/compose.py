"""Compose files: the container definition of one service, plus Turnout options under `x-turnout`.
Keys set in turnout.toml replace the same keys from the Compose file (whole values, not merged)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .model import X_TURNOUT_KEYS, ConfigError
from .table import Origin


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

    for key in ("image", "command", "mem_limit", "cpus", "pids_limit", "cap_drop", "cap_add", "security_opt",
                "init"):
        if key in svc:
            put(key, svc[key], key)
    if "stop_grace_period" in svc:  # Compose's name for `docker stop`'s timeout
        put("stop_timeout", svc["stop_grace_period"], "stop_grace_period")
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
