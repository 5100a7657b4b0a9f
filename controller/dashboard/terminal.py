"""`turnout status --watch`: the dashboard's picture in a terminal (rich), refreshed in place from the
daemon's feed (`GET /v1/feed` on the admin socket, the same events the browser gets) until Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..events import describe_verdict

REFRESH_SECONDS = 0.25  # at most this often, and at least this often while a countdown runs


class Picture:
    """The state the feed's events build (the page's `state`, in Python)."""

    def __init__(self) -> None:
        self.services: dict[str, Any] = {}
        self.rates: dict[str, Any] = {}
        self.deployments: dict[str, Any] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.offset = 0.0  # server clock minus ours
        self.updated = 0.0

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if "t" in event:
            self.offset, self.updated = event["t"] - time.time(), event["t"]
        if kind == "snapshot":
            self.services, self.history = event["services"], event["history"]
            self.deployments = event["deployments"]
            self.rates = event["series"][-1]["rates"] if event["series"] else {}
        elif kind == "table":
            self.services = event["services"]
        elif kind == "tick":
            self.services, self.rates = event["services"], event["rates"]
            for name, info in event["deployments"].items():
                known = self.deployments.get(name)
                events = known["events"] if known and known["id"] == info["id"] else []
                self.deployments[name] = {**info, "events": events}
        elif kind == "deploy":
            known = self.deployments.get(event["service"])
            if known is None or known["id"] != event["deployment"]["id"]:
                known = self.deployments[event["service"]] = {**event["deployment"], "status": "running",
                                                              "events": []}
            if event["event"] not in known["events"]:
                known["events"].append(event["event"])
            if event["event"].get("event") == "finished":
                known.update(status=event["event"]["status"], message=event["event"].get("message", ""),
                             step_ends_at=None)
        elif kind == "history":
            self.history[event["service"]] = event["deployments"]

    # ------------------------------------------------------------ rendering
    def render(self) -> Group:
        running = [d for d in self.deployments.values() if d.get("status") == "running"]
        clock = time.strftime("%H:%M:%S", time.localtime(self.updated)) if self.updated else "-"
        header = Text.assemble(("Turnout", "bold"), f"  {len(self.services)} service(s) · {len(running)} "
                               f"deploying · {clock} · Ctrl-C to stop")
        parts: list[Any] = [header, self._services_table()]
        for name in sorted(self.deployments):
            parts.append(self._deployment(name, self.deployments[name]))
        parts.append(self._history_table())
        return Group(*parts)

    def _services_table(self) -> Table:
        table = Table(expand=True, title="services", title_justify="left")
        for column in ("service", "serving", "pool", "set weight", "seen (5 s)"):
            table.add_column(column)
        for column in ("req/s", "5xx/s", "p99"):
            table.add_column(column, justify="right")
        table.add_column("upstreams (health · in flight)")
        for name in sorted(self.services):
            service = self.services[name]
            serving = service["stable"] or ("not deployed" if service["managed"] else "static")
            rates = self.rates.get(name, {})
            rows = service["pools"] or [None]
            for i, pool in enumerate(rows):
                r = rates.get(pool["name"], {}) if pool else {}
                upstreams = [Text(f"{u['address']} {u['health']} · {u['in_flight']}",
                                  style="green" if u["eligible"] else "red")
                             for u in (pool or {}).get("upstreams", [])]
                table.add_row(name if i == 0 else "", serving if i == 0 else "",
                              pool["name"] if pool else "-", f"{pool['weight']}%" if pool else "-",
                              _pct(r.get("share")), _num(r.get("rps")), _num(r.get("errors")),
                              _ms(r.get("p99")), Text(", ").join(upstreams) if upstreams else "-")
            for u in service["draining"]:
                table.add_row("", "", u["pool"] or "-", "out", "", "", "", "",
                              Text(f"{u['address']} draining · {u['in_flight']}", style="yellow"))
        return table

    def _deployment(self, name: str, deployment: dict[str, Any]) -> Text:
        running = deployment.get("status") == "running"
        status = "paused" if running and deployment.get("paused") else deployment.get("status", "?")
        text = Text.assemble((f"{name}: ", "bold"), f"{'deploying' if running else 'last deploy'} "
                             f"{deployment['version']} with {deployment['strategy']} ({deployment['id']}) ",
                             (status, "yellow" if running else "green" if status == "succeeded" else "red"))
        events = deployment.get("events", [])
        plan = next((e for e in reversed(events) if e.get("event") == "plan"), None)
        weights = [list(e["weights"].values())[-1] for e in events  # the new pool comes last
                   if e.get("event") == "step" and e.get("step") in ("weight", "switched")
                   and e.get("weights")]
        if plan:
            reached = weights[-1] if weights else 0
            text.append("\n  weights: ")
            for w in plan["steps"]:
                style = "bold reverse" if w == reached and running else "green" if w <= reached else "dim"
                text.append(f" {w}% ", style=style)
        if running and deployment.get("step_ends_at"):
            left = max(0.0, deployment["step_ends_at"] - (time.time() + self.offset))
            text.append(f"\n  next step in {left:.1f}s")
        verdict = next((e for e in reversed(events) if e.get("event") == "analysis"), None)
        if verdict:
            text.append(f"\n  analysis: {describe_verdict(verdict)}")
        steps = [e for e in events if e.get("event") == "step"]
        if steps:
            first = events[0].get("time", 0)
            text.append("\n  steps: " + " → ".join(f"{e['step']} (+{e['time'] - first:.1f}s)"
                                                   for e in steps[-8:]))
        if deployment.get("message"):
            text.append(f"\n  {deployment['message']}", style="dim")
        return text

    def _history_table(self) -> Table:
        table = Table(expand=True, title="last deployments", title_justify="left")
        for column in ("service", "id", "strategy", "from → to", "status", "took", "message"):
            table.add_column(column)
        rows = sorted(((name, d) for name, items in self.history.items() for d in items),
                      key=lambda row: row[1]["started_at"], reverse=True)[:8]
        for name, d in rows:
            took = "-" if d["seconds"] is None else f"{d['seconds']}s"
            table.add_row(name, d["id"], d["strategy"], f"{d['from_version'] or '-'} → {d['to_version']}",
                          d["status"], took, d["message"] or "")
        return table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"≤{seconds * 1000:g}ms"


async def watch(client: Any, console: Console | None = None) -> int:
    """Follow the feed and redraw in place until Ctrl-C (or the daemon stops); returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    picture = Picture()
    changed = asyncio.Event()

    async def follow() -> None:
        async for event in client.stream("GET", "/v1/feed"):
            picture.apply(event)
            changed.set()

    reader = asyncio.create_task(follow())
    stopper = asyncio.create_task(stop.wait())
    try:
        with Live(picture.render(), console=console, auto_refresh=False, transient=False) as live:
            while not stop.is_set() and not reader.done():
                await asyncio.wait([reader, stopper], timeout=REFRESH_SECONDS)
                if changed.is_set() or picture.deployments:
                    changed.clear()
                    live.update(picture.render(), refresh=True)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        for task in (reader, stopper):
            task.cancel()
        await asyncio.gather(reader, stopper, return_exceptions=True)
    if reader.done() and not reader.cancelled() and reader.exception() is not None:
        raise reader.exception()  # type: ignore[misc]
    return 0
