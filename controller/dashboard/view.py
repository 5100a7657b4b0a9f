"""What the dashboard shows, as plain JSON-ready data read from the router and the deployer: every
service with its pools (set weight, upstreams with health, in-flight and draining state), a deploy in
progress, the journal's last deployments, and per-pool rates over one sampling window.

Pure readers: nothing here awaits or changes state, so the feed can call them on the event loop it
shares with the proxy (each is O(services + upstreams))."""

from __future__ import annotations

import math
import time
from typing import Any

from proxy.metrics import PoolCounters
from proxy.router import Router

from ..deployer import ActiveDeployment, Deployer

HISTORY_LIMIT = 8  # journal rows shown per service
# Deploy events shown whole; any other kind (e.g. `preview_access`, which carries a blue-green preview's
# secret) is shown by its name and time only: a dashboard viewer is not the operator.
SHOWN_EVENTS = frozenset({"step", "finished", "plan", "analysis"})


def describe_services(router: Router, deployer: Deployer,
                      homes: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Every service the controller knows or the proxy routes. `homes` maps an upstream address to the
    (service, pool) it was last routed in, so an upstream that left the table still shows where it
    drains."""
    draining: dict[str, list[dict[str, Any]]] = {}
    for address, upstream in list(router.draining.items()):
        service, pool = homes.get(address, ("", ""))
        draining.setdefault(service, []).append(
            {"address": address, "pool": pool, "in_flight": len(upstream.inflight)})
    routed = router.table.services
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(deployer.configs) | set(routed)):
        config = deployer.configs.get(name)
        service = routed.get(name)
        release, previous = deployer.releases.get(name), deployer.previous.get(name)
        pools = []
        if service is not None:
            for pool in service.pools:
                eligible = set(pool.eligible)
                pools.append({
                    "name": pool.name,
                    "weight": pool.weight,
                    "upstreams": [{"address": u.address, "health": u.health.value,
                                   "eligible": u in eligible, "in_flight": len(u.inflight)}
                                  for u in pool.upstreams],
                })
        out[name] = {
            "name": name,
            "managed": config.managed if config is not None else False,
            "strategy": config.strategy if config is not None and config.managed else None,
            "hosts": list(service.hosts) if service is not None else list(config.hosts if config else ()),
            "state": service.state if service is not None else "not routed",
            "stable": release.version if release else None,
            "stable_pool": release.pool if release else None,
            "previous": previous.version if previous else None,
            "pools": pools,
            "draining": draining.get(name, []),
        }
    return out


def describe_deployment(active: ActiveDeployment, with_events: bool = False) -> dict[str, Any]:
    """A deploy (running or the last finished one): what it is, where it stands, and the countdown to
    its next step (`step_ends_at`, wall-clock seconds; None outside a timed step pause)."""
    info = {**active.describe(), "started": round(active.started, 3),
            "step_ends_at": active.signals.step_ends_at}
    if with_events:
        info["events"] = [shown(e) for e in active.events.events]
    return info


def shown(event: dict[str, Any]) -> dict[str, Any]:
    """A deploy event as the dashboard may show it (see SHOWN_EVENTS)."""
    if event.get("event") in SHOWN_EVENTS:
        return event
    return {"event": event.get("event"), "time": event.get("time")}


def describe_history(deployer: Deployer, service: str) -> list[dict[str, Any]]:
    return [{"id": d.id, "strategy": d.strategy, "from_version": d.from_version, "to_version": d.to_version,
             "status": d.status, "started_at": round(d.started_at, 3),
             "seconds": round(d.finished_at - d.started_at, 1) if d.finished_at else None,
             "message": d.message}
            for d in deployer.journal.history(service, limit=HISTORY_LIMIT)]


def pool_rates(window: PoolCounters, seconds: float, in_flight: int) -> dict[str, Any]:
    """One pool over one sampling window: requests/s, 5xx/s and share, p99 (a histogram bound, None
    without requests; past the last bound it says so with `p99_over`)."""
    seconds = max(seconds, 1e-6)
    p99 = window.quantile(0.99)
    rates: dict[str, Any] = {"rps": round(window.requests / seconds, 2),
                             "errors": round(window.errors / seconds, 2),
                             "error_rate": round(window.error_rate, 4),
                             "p99": None if p99 is None or math.isinf(p99) else p99,
                             "in_flight": in_flight}
    if p99 is not None and math.isinf(p99):
        rates["p99_over"] = True
    return rates


def now() -> float:
    return round(time.time(), 3)
