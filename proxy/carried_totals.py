"""Monotonic totals carried over a hand-over (`turnout serve --takeover`, controller/handover.py).

The old process reads its counters when it stops accepting (the commit) and sends them in its answer;
the new one, which has counted only what it served since it began accepting, adds them to its own. So
`turnout status`, the dashboard and `/metrics` go on from the old totals instead of falling back to zero.
Requests the old process finishes after its reading are counted there only. Gauges (in flight, open
connections, waiting handshakes) describe one process and are not carried.

A reading that does not fit (another Turnout's layout: other latency buckets, another version) is
refused whole, nothing added: the counters then restart at zero, which Prometheus tolerates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .metrics import MIRROR_OUTCOMES, PoolStats

if TYPE_CHECKING:
    from .metrics import Metrics
    from .tls.frontdoor import FrontDoor
    from .tls.listener import TlsServer

VERSION = 1
_TLS = ("completed", "resumed", "waits")
_FRONT_DOOR = ("redirected", "challenges_answered")


class TotalsRefused(ValueError):
    """A reading this process cannot add (the message says what does not fit)."""


def read_totals(metrics: Metrics, https: TlsServer | None = None,
                front_door: FrontDoor | None = None) -> dict[str, Any]:
    """Every monotonic total, as JSON."""
    pools = []
    for (service, pool), stats in metrics.pools.items():
        entry: dict[str, Any] = {"service": service, "pool": pool, **_pool(stats)}
        if stats._overridden is not None:
            entry["overridden"] = _pool(stats._overridden)
        pools.append(entry)
    out: dict[str, Any] = {
        "version": VERSION, "pools": pools,
        "rules": [[service, rule, stats.matches] for (service, rule), stats in metrics.rules.items()],
        "mirrors": {service: stats.as_dict() for service, stats in metrics.mirrors.items()},
        "unrouted": list(metrics.unrouted), "hold_timeouts": dict(metrics.hold_timeouts),
        "drain_aborted": metrics.drain_aborted, "drain_replayed": metrics.drain_replayed,
        "internal_errors": metrics.internal_errors}
    if https is not None:
        out["tls"] = {"failures": dict(https.failures), **{k: getattr(https, k) for k in _TLS}}
    if front_door is not None:
        out["front_door"] = {k: getattr(front_door, k) for k in _FRONT_DOOR}
    return out


def add_totals(data: Any, metrics: Metrics, https: TlsServer | None = None,
               front_door: FrontDoor | None = None) -> None:
    """Add a reading of `read_totals` (another process's) to these counters. Raises TotalsRefused, having
    added nothing, when it does not fit."""
    _check(data, metrics)
    for entry in data["pools"]:
        stats = metrics.pool(entry["service"], entry["pool"])
        _add_pool(stats, entry)
        if "overridden" in entry:
            _add_pool(stats.overridden, entry["overridden"])
    for service, rule, matches in data["rules"]:
        metrics.rule(service, rule).matches += matches
    for service, outcomes in data["mirrors"].items():
        stats = metrics.mirror(service)
        for name, count in outcomes.items():
            setattr(stats, name, getattr(stats, name) + count)
    for i, count in enumerate(data["unrouted"]):
        metrics.unrouted[i] += count
    for service, count in data["hold_timeouts"].items():
        metrics.hold_timeouts[service] = metrics.hold_timeouts.get(service, 0) + count
    metrics.drain_aborted += data["drain_aborted"]
    metrics.drain_replayed += data.get("drain_replayed", 0)  # absent from an older process's totals
    metrics.internal_errors += data["internal_errors"]
    tls = data.get("tls")
    if https is not None and tls is not None:
        for reason, count in tls["failures"].items():
            if reason in https.failures:  # a reason this version does not know is left out
                https.failures[reason] += count
        for key in _TLS:
            setattr(https, key, getattr(https, key) + tls.get(key, 0))
    door = data.get("front_door")
    if front_door is not None and door is not None:
        for key in _FRONT_DOOR:
            setattr(front_door, key, getattr(front_door, key) + door.get(key, 0))


def _pool(stats: PoolStats) -> dict[str, Any]:
    return {"by_class": list(stats.by_class), "proxy_errors": stats.proxy_errors,
            "buckets": list(stats.buckets), "latency_sum": stats.latency_sum}


def _add_pool(stats: PoolStats, entry: dict[str, Any]) -> None:
    for i, count in enumerate(entry["by_class"]):
        stats.by_class[i] += count
    for i, count in enumerate(entry["buckets"]):
        stats.buckets[i] += count
    stats.proxy_errors += entry["proxy_errors"]
    stats.latency_sum += entry["latency_sum"]


def _check(data: Any, metrics: Metrics) -> None:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        theirs = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise TotalsRefused(f"totals of layout {theirs!r}, this process reads {VERSION}")
    template = _pool(PoolStats())
    for entry in data.get("pools", ()):
        if not isinstance(entry, dict) or not isinstance(entry.get("service"), str) \
                or not isinstance(entry.get("pool"), str):
            raise TotalsRefused(f"a pool entry without service and pool names: {entry!r}")
        for counts in (entry, *([entry["overridden"]] if "overridden" in entry else [])):
            for key in ("by_class", "buckets"):
                if not _counts(counts.get(key), len(template[key])):
                    raise TotalsRefused(f"pool {entry['service']}/{entry['pool']}: {key} is not "
                                        f"{len(template[key])} counts (another layout)")
            latency_sum = counts.get("latency_sum")
            if not _count(counts.get("proxy_errors")) or not isinstance(latency_sum, (int, float)):
                raise TotalsRefused(f"pool {entry['service']}/{entry['pool']}: proxy_errors or latency_sum")
    rules = data.get("rules")
    if not isinstance(rules, list) or not all(
            isinstance(r, list) and len(r) == 3 and isinstance(r[0], str) and isinstance(r[1], str)
            and _count(r[2]) for r in rules):
        raise TotalsRefused("rules: not [service, rule, matches] triples")
    mirrors = data.get("mirrors")
    if not isinstance(mirrors, dict) or not all(
            isinstance(o, dict) and set(o) <= set(MIRROR_OUTCOMES) and all(map(_count, o.values()))
            for o in mirrors.values()):
        raise TotalsRefused("mirrors: not counts by known outcome")
    if not _counts(data.get("unrouted"), len(metrics.unrouted)):
        raise TotalsRefused("unrouted: another layout")
    holds = data.get("hold_timeouts")
    if not isinstance(holds, dict) or not all(map(_count, holds.values())):
        raise TotalsRefused("hold_timeouts: not counts by service")
    if not _count(data.get("drain_aborted")) or not _count(data.get("internal_errors")):
        raise TotalsRefused("drain_aborted or internal_errors: not a count")
    if not _count(data.get("drain_replayed", 0)):
        raise TotalsRefused("drain_replayed: not a count")
    tls = data.get("tls")
    if tls is not None and not (isinstance(tls, dict) and isinstance(tls.get("failures"), dict)
                                and all(map(_count, tls["failures"].values()))
                                and all(_count(tls.get(k, 0)) for k in _TLS)):
        raise TotalsRefused("tls: not counts")
    door = data.get("front_door")
    if door is not None and not (isinstance(door, dict) and all(_count(door.get(k, 0)) for k in _FRONT_DOOR)):
        raise TotalsRefused("front_door: not counts")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _counts(value: Any, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(map(_count, value))
