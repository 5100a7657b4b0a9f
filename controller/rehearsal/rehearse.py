"""`turnout rehearse`: run a deploy under live load through the proxy and report what every client saw.

The load generator starts first; the deploy runs inside the daemon (as `turnout deploy` would); marks
tie the load's timeline to the deploy's steps: started, the final switch acknowledged (after which an
old-version answer is misrouted), finished. `--all-strategies` runs the four strategies one after
another, alternating between the current image and the new one, and compares them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..admin_client import AdminClient
from ..events import describe_event
from .loadgen import (
    DEPLOY_FINISHED,
    DEPLOY_STARTED,
    SWITCH_ACKNOWLEDGED,
    LoadConfig,
    LoadResult,
    Marks,
    run_load,
)
from .report import DeployInfo, comparison_table, format_table, to_json, write_html

WARMUP = 2.0  # seconds of load before the deploy starts, so "before" latencies exist
TAIL = 2.0  # seconds of load after the deploy finished
MAX_RUN = 600.0  # a rehearsal never runs longer than this, whatever the deploy does
# Open loop: requests a big-bang hold keeps waiting count against the in-flight bound, so the default
# leaves room for a 1 s hold at 1,000 req/s on top of the usual (the load generator's own is 512).
DEFAULT_MAX_IN_FLIGHT = 2048


@dataclass(frozen=True)
class RehearsalPlan:
    service: str
    image: str
    strategies: tuple[str | None, ...]  # None: the service's configured strategy
    duration: float = 20.0
    rate: float | None = None
    concurrency: int | None = None
    new_connections: float = 0.1
    url: str | None = None  # default: the daemon's proxy listener
    options: dict[str, Any] | None = None  # strategy options, as for `turnout deploy`
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # open loop: see LoadConfig.max_in_flight
    cacert: str | None = None  # https --url: the CA file to trust
    connect_to: str | None = None  # send to this host:port, keeping the URL's host for SNI and Host

    def load_config(self, url: str) -> LoadConfig:
        """The load of one rehearsal: runs until stopped (bounded by MAX_RUN), 30 s per request."""
        return LoadConfig(url=url, duration=MAX_RUN, rate=self.rate,
                          concurrency=self.concurrency if self.rate is None else None,
                          new_connections=self.new_connections, timeout=30.0,
                          max_in_flight=self.max_in_flight, cacert=self.cacert, connect_to=self.connect_to)


@dataclass
class Rehearsal:
    result: LoadResult
    deploy: DeployInfo
    events: list[dict[str, Any]]


async def rehearse(client: AdminClient, plan: RehearsalPlan, progress: Any = print) -> list[Rehearsal]:
    status = await client.request("GET", f"/v1/status/{plan.service}")
    info = status["services"][plan.service]
    if not info["stable"]:
        raise ValueError(f"{plan.service} serves nothing yet: deploy a first version, then rehearse")
    url = plan.url or f"http://{status['proxy']['listen']}"
    current_image = info["stable"]["image"]
    runs = []
    for i, strategy in enumerate(plan.strategies):
        image = plan.image if i % 2 == 0 else current_image  # alternate, so each run is a real change
        progress(f"rehearsal {i + 1}/{len(plan.strategies)}: {plan.service} -> {image} "
                 f"with {strategy or info['strategy']} under load")
        runs.append(await _one(client, plan, url, image, strategy, progress))
    return runs


async def _one(client: AdminClient, plan: RehearsalPlan, url: str, image: str, strategy: str | None,
               progress: Any) -> Rehearsal:
    marks = Marks()
    stop = asyncio.Event()
    load_task = asyncio.create_task(run_load(plan.load_config(url), marks, stop=stop))
    started = time.monotonic()
    await asyncio.sleep(WARMUP)
    body = {"service": plan.service, "image": image, "strategy": strategy, "options": plan.options or {}}
    events: list[dict[str, Any]] = []
    deploy_status, from_version, to_version, timings = "unknown", None, None, {}
    marks.mark(DEPLOY_STARTED)
    try:
        async for event in client.stream("POST", "/v1/deploy", body, follow="1"):
            events.append(event)
            step = event.get("step")
            if step == "started":
                from_version = event.get("from_version")
            if step == "switched" and event.get("weights"):
                (to_version,) = [pool for pool, w in event["weights"].items() if w == 100][:1] or [None]
                # From here on, a request that starts and is answered by another version is misrouted.
                marks.mark(SWITCH_ACKNOWLEDGED, expect_version=_version_of_pool(to_version))
            if event.get("event") == "step":
                progress(f"  {describe_event(event)}")
            if event.get("event") == "finished":
                deploy_status, timings = event["status"], event.get("timings", {})
                timings = {**timings, "total": event.get("seconds", 0.0)}
                message = f": {event['message']}" if event.get("message") else ""
                progress(f"  deploy {deploy_status}{message}")
    finally:
        marks.mark(DEPLOY_FINISHED)
        remaining = max(TAIL, plan.duration - (time.monotonic() - started))
        await asyncio.sleep(remaining)
        stop.set()
        result = await load_task
    deploy = DeployInfo(service=plan.service, strategy=strategy or "configured", from_version=from_version,
                        to_version=to_version, status=deploy_status, timings=timings)
    return Rehearsal(result, deploy, events)


def _version_of_pool(pool: str | None) -> str | None:
    """Pools are named after their version, with a suffix when a version is redeployed."""
    if pool is None:
        return None
    head, sep, tail = pool.rpartition("-")
    return head if sep and tail.isdigit() else pool


def render(runs: list[Rehearsal], html: Path | None, as_json: bool) -> tuple[str, Path | None]:
    """The terminal (or JSON) text for the runs, and where the HTML report went."""
    import json

    if as_json:
        text = json.dumps([to_json(r.result, r.deploy) for r in runs], indent=2)
    else:
        text = "\n\n".join(format_table(r.result, r.deploy) for r in runs)
        if len(runs) > 1:
            text += "\n\n" + comparison_table([(r.result, r.deploy) for r in runs])
    written = None
    if html is not None:
        written = write_html(html, runs[-1].result, runs[-1].deploy) if len(runs) == 1 else \
            _write_many(html, runs)
    return text, written


def _write_many(html: Path, runs: list[Rehearsal]) -> Path:
    """One HTML file per strategy beside the named one; the named one is the last run."""
    for run in runs[:-1]:
        write_html(html.with_name(f"{html.stem}-{run.deploy.strategy}{html.suffix}"), run.result, run.deploy)
    return write_html(html, runs[-1].result, runs[-1].deploy)


def all_succeeded(runs: list[Rehearsal]) -> bool:
    return all(r.deploy.status == "succeeded" and r.result.failed_by_proxy == 0 and r.result.truncated == 0
               for r in runs)
