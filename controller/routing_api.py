"""The routing listener: where remote proxies (`turnout serve --role proxy`) pull the table.

`POST /v1/routing?after=GEN&wait=S` with the proxy's report as its body (controller/fleet.py: the
generation it applied, in flight per upstream, per-pool counters) answers the controller's table as soon
as its generation is past GEN, or `{"generation": G, "unchanged": true}` after S seconds (a quiet poll,
at most 30). A pull is a report and a heartbeat: it is a POST only because it carries that body.

It is its own application on its own listener (`[proxy] routing_listen`), with its own bearer token
(`routing_token`, never the admin token): the only route a proxy's token reaches reads the table.
Whoever holds it can read the table (override secrets included) and add its figures to the analysis;
it can steer nothing. Browsers are refused as on the admin API (proxy/admin.py's guard).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from proxy.admin import ApiError, create_guarded_app, read_json
from proxy.router import Router

from .fleet import BadReport, Fleet, Report

FLEET_KEY = web.AppKey("fleet", Fleet)
ROUTING_ROUTER_KEY = web.AppKey("routing_router", Router)
MAX_WAIT = 30.0  # seconds a quiet pull may be held


def create_routing_app(router: Router, fleet: Fleet, token: str,
                       drain_timeouts: dict[str, float]) -> web.Application:
    app = create_guarded_app(token)
    app[ROUTING_ROUTER_KEY] = router
    app[FLEET_KEY] = fleet
    app[DRAIN_TIMEOUTS_KEY] = drain_timeouts
    app.router.add_post("/v1/routing", post_routing)
    return app


DRAIN_TIMEOUTS_KEY: web.AppKey[dict[str, float]] = web.AppKey("drain_timeouts")


def add_fleet_routes(app: web.Application, fleet: Fleet | None) -> None:
    """`GET /v1/proxies` on the admin API: the remote proxies, for `turnout status --proxies` and
    `turnout nodes` (an empty list when no routing listener is configured)."""
    if fleet is not None:
        app[FLEET_KEY] = fleet
    app.router.add_get("/v1/proxies", get_proxies)


def describe_routing(router: Router, drain_timeouts: dict[str, float]) -> dict[str, Any]:
    """What a remote proxy installs: every service's spec as the admin API takes it, and the drain
    timeout its removed upstreams get (the last install's)."""
    return {"generation": router.generation,
            "services": {name: spec.to_dict() for name, spec in router.specs.items()},
            "drain_timeouts": {name: drain_timeouts.get(name, router.drain_timeout) for name in router.specs}}


async def post_routing(request: web.Request) -> web.Response:
    fleet, router = request.app[FLEET_KEY], request.app[ROUTING_ROUTER_KEY]
    after = _number(request, "after", -1, minimum=-1, maximum=2**62)
    wait = _number(request, "wait", 0, minimum=0, maximum=MAX_WAIT)
    try:
        report = Report.from_dict(await read_json(request), fleet.epoch)
    except BadReport as exc:
        raise ApiError(400, str(exc), field=exc.key) from None
    after = min(after, report.applied)  # a table of another controller run: this run's table at once
    proxy = fleet.report(report)
    if router.generation <= after and wait > 0 and not fleet.moved:
        fleet.pull_opened(proxy)
        try:
            await fleet.wait_published(after, wait)
        finally:
            fleet.pull_closed(proxy)
    if router.generation <= after:
        response = _json({"generation": router.generation, "epoch": fleet.epoch, "unchanged": True})
    else:
        response = _json({**describe_routing(router, request.app[DRAIN_TIMEOUTS_KEY]), "epoch": fleet.epoch})
    if fleet.moved:  # handed over: the proxy's next pull, on a new connection, reaches the new controller
        response.force_close()
    return response


async def get_proxies(request: web.Request) -> web.Response:
    fleet = request.app.get(FLEET_KEY)
    if fleet is None:
        return _json({"proxies": [], "routing_listen": None})
    return _json({"proxies": fleet.describe(), "routing_listen": fleet.listen,
                  "ack_timeout": fleet.ack_timeout, "unseen_timeout": fleet.unseen_timeout})


def _number(request: web.Request, key: str, default: float, minimum: float, maximum: float) -> Any:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = float(raw) if key == "wait" else int(raw)
    except ValueError:
        raise ApiError(400, f"{key}: must be a number, got {raw!r}", field=key) from None
    if not minimum <= value <= maximum:
        raise ApiError(400, f"{key}: must be between {minimum:g} and {maximum:g}", field=key)
    return value


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=json.dumps)
