"""A ServiceConfig as plain JSON for the journal, so a service created from `turnout deploy` flags
(not in any config file) is known again after the daemon restarts."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .model import BlueGreenOptions, CanaryOptions, HealthCheck, RollingOptions, ServiceConfig, Volume


def service_to_dict(config: ServiceConfig) -> dict[str, Any]:
    data = asdict(config)
    for key in ("compose_file",):
        if data[key] is not None:
            data[key] = str(data[key])
    return data


def service_from_dict(data: dict[str, Any]) -> ServiceConfig:
    known = {f.name for f in fields(ServiceConfig)}
    values = {k: v for k, v in data.items() if k in known}
    tuples = ("hosts", "upstreams", "override_networks")
    for key in tuples:
        values[key] = tuple(values.get(key) or ())
    if values.get("command") is not None:
        values["command"] = tuple(values["command"])
    if values.get("health") is not None:
        values["health"] = HealthCheck(**values["health"])
    canary = dict(values.get("canary") or {})
    if "steps" in canary:
        canary["steps"] = tuple(canary["steps"])
    values["canary"] = CanaryOptions(**canary)
    values["rolling"] = RollingOptions(**(values.get("rolling") or {}))
    values["bluegreen"] = BlueGreenOptions(**(values.get("bluegreen") or {}))
    values["volumes"] = tuple(Volume(**v) for v in values.get("volumes") or ())
    if values.get("compose_file"):
        values["compose_file"] = Path(values["compose_file"])
    return ServiceConfig(**values)
