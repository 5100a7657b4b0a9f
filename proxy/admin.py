"""The admin API (aiohttp): read the table, set pools and weights, pause/resume, drains, metrics.

Served over a unix socket (mode 0600) by default, optionally on loopback TCP with a bearer token.
Browsers cannot drive it: requests carrying `Origin` are refused, and every change needs the
`X-Turnout-Client` header, which a cross-site form cannot send. Bad input gets 400 naming the field
and changes nothing. The controller adds its own routes to the same application.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

from .errors import ProxyError, UnknownService, ValidationError
from .router import Router
from .specs import RuleSpec, ServiceSpec, rules_from_list
from .table import RoutingTable

log = structlog.get_logger("turnout.proxy.admin")


class RulesSetter(Protocol):
    def __call__(self, service: str, rules: tuple[RuleSpec, ...]) -> None: ...


ROUTER_KEY = web.AppKey("router", Router)
# Who applies a rules change: the router itself, unless a controller mounted beside it keeps the rules
# in its own config (and journal) and installs them from there (controller/api.py).
RULES_SETTER: web.AppKey[RulesSetter] = web.AppKey("rules_setter")
CLIENT_HEADER = "X-Turnout-Client"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LogReopener = Callable[[], Awaitable[str | None]]  # `ProxyServer.reopen_logs`
REOPEN_KEY = web.AppKey("reopen_logs", LogReopener)


class ApiError(ProxyError):
    """An error with an HTTP status, raised by handlers (ours or the controller's)."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.extra = status, message, field, extra
        self.headers = headers or {}


def create_guarded_app(token: str | None = None) -> web.Application:
    """An application with the admin API's error boundary and guard (bearer token, no browsers), and no
    routes yet (the controller's routing listener is one)."""
    # The first middleware is the outermost: `_errors` must wrap the guard, or its refusals become 500s.
    return web.Application(middlewares=[_errors, _guard(token)])


def create_admin_app(router: Router, token: str | None = None,
                     reopen_logs: LogReopener | None = None) -> web.Application:
    app = create_guarded_app(token)
    app[ROUTER_KEY] = router
    app[RULES_SETTER] = router.set_rules
    if reopen_logs is not None:
        app[REOPEN_KEY] = reopen_logs
        app.router.add_post("/v1/logs/reopen", post_logs_reopen)
    app.router.add_get("/v1/table", get_table)
    app.router.add_put("/v1/services/{name}", put_service)
    app.router.add_delete("/v1/services/{name}", delete_service)
    app.router.add_patch("/v1/services/{name}/weights", patch_weights)
    app.router.add_post("/v1/services/{name}/pause", pause_service)
    app.router.add_post("/v1/services/{name}/resume", resume_service)
    app.router.add_post("/v1/services/{name}/stop", stop_service)
    app.router.add_get("/v1/services/{name}/counters", get_counters)
    app.router.add_get("/v1/services/{name}/rules", get_rules)
    app.router.add_put("/v1/services/{name}/rules", put_rules)
    app.router.add_delete("/v1/services/{name}/rules", delete_rules)
    app.router.add_get("/v1/services/{name}/mirror", get_mirror)
    app.router.add_get("/v1/drains", get_drains)
    app.router.add_get("/metrics", get_metrics)
    return app


# ---------------------------------------------------------------- middlewares
def _guard(token: str | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = None if token is None else b"Bearer " + token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if "Origin" in request.headers:
            raise ApiError(403, "browser requests (with an Origin header) are refused")
        if expected is not None and not _bearer_matches(request, expected):
            raise ApiError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD") and CLIENT_HEADER not in request.headers:
            raise ApiError(403, f"changes need the {CLIENT_HEADER} header")
        return await handler(request)

    return guard


def _bearer_matches(request: web.Request, expected: bytes) -> bool:
    """The one `Authorization` header's raw bytes against `Bearer <token>`, in constant time. Raw bytes:
    a value that is not UTF-8 is simply wrong (decoding it would fail before the comparison)."""
    given = [value for name, value in request.raw_headers if name.lower() == b"authorization"]
    return len(given) == 1 and hmac.compare_digest(given[0], expected)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as exc:
        return _json({"error": exc.message, "field": exc.field}, status=400)
    except UnknownService as exc:
        return _json({"error": str(exc)}, status=404)
    except ApiError as exc:
        body: dict[str, Any] = {"error": exc.message, **exc.extra}
        if exc.field:
            body["field"] = exc.field
        response = _json(body, status=exc.status)
        response.headers.update(exc.headers)
        return response
    except web.HTTPException:
        raise
    except Exception as exc:  # one error boundary per request: say what broke, in JSON
        log.exception("admin.internal_error", path=request.path)
        return _json({"error": f"internal error: {exc!r}"}, status=500)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=1))


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", field="body") from None


# ---------------------------------------------------------------- handlers
async def _data_plane_first() -> None:
    """After a swap, one turn of the event loop before this handler builds its answer: client requests
    already waiting (the admin API shares the proxy's loop) are routed on the new table first, instead
    of after the JSON answer is made and written."""
    await asyncio.sleep(0)


def describe_table(router: Router) -> dict[str, Any]:
    table: RoutingTable = router.table
    services = {}
    for service in table.services.values():
        services[service.name] = {
            "spec": _redacted(service.spec.to_dict()),
            "routable": service.routable,
            "pools": [
                {
                    "name": pool.name,
                    "weight": pool.weight,
                    "upstreams": [
                        {"address": u.address, "health": u.health.value, "in_flight": len(u.inflight)}
                        for u in pool.upstreams
                    ],
                    "eligible": [u.address for u in pool.eligible],
                }
                for pool in service.pools
            ],
        }
    return {"generation": router.generation, "services": services}


def _redacted(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec for display: the override secret is not printed by `turnout status --json`."""
    if spec.get("override_secret"):
        spec["override_secret"] = "(set)"
    return spec


def _drain_timeout(request: web.Request) -> float | None:
    raw = request.query.get("drain_timeout")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        raise ValidationError("drain_timeout", f"{raw!r} is not a number of seconds") from None
    if not 0 <= seconds <= 3600:
        raise ValidationError("drain_timeout", "must be between 0 and 3600 seconds")
    return seconds


async def get_table(request: web.Request) -> web.Response:
    return _json(describe_table(request.app[ROUTER_KEY]))


async def put_service(request: web.Request) -> web.Response:
    """Install a service. `?wait=drain` answers only after removed upstreams drained;
    `?drain_timeout=S` bounds how long their in-flight requests get."""
    router = request.app[ROUTER_KEY]
    spec = ServiceSpec.from_dict(await read_json(request), name=request.match_info["name"])
    if spec.name != request.match_info["name"]:
        raise ValidationError("name", "differs from the name in the URL")
    removed = router.set_service(spec, _drain_timeout(request))
    await _data_plane_first()
    return _json({"generation": router.generation, **await _maybe_drain(request, router, removed)})


async def delete_service(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    removed = router.remove_service(request.match_info["name"], _drain_timeout(request))
    await _data_plane_first()
    return _json({"generation": router.generation, **await _maybe_drain(request, router, removed)})


async def patch_weights(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    body = await read_json(request)
    weights = body.get("weights") if isinstance(body, dict) else None
    if not isinstance(weights, dict):
        raise ValidationError("weights", "must be an object of pool name to integer weight")
    removed = router.set_weights(request.match_info["name"], weights, _drain_timeout(request))
    await _data_plane_first()
    return _json({"generation": router.generation, **await _maybe_drain(request, router, removed)})


async def pause_service(request: web.Request) -> web.Response:
    return await _set_state(request, "paused")


async def resume_service(request: web.Request) -> web.Response:
    return await _set_state(request, "active")


async def stop_service(request: web.Request) -> web.Response:
    return await _set_state(request, "stopped")


async def _set_state(request: web.Request, state: str) -> web.Response:
    router = request.app[ROUTER_KEY]
    router.set_state(request.match_info["name"], state)
    await _data_plane_first()
    return _json({"generation": router.generation, "state": state})


async def get_counters(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    name = request.match_info["name"]
    router.service_spec(name)
    counters = router.metrics.counters(name)
    return _json({
        pool: {"requests": c.requests, "by_class": dict(zip(("1xx", "2xx", "3xx", "4xx", "5xx"),
                                                            c.classes, strict=True)),
               "proxy_errors": c.proxy_errors, "p50": _seconds(c.quantile(0.5)),
               "p99": _seconds(c.quantile(0.99))}
        for pool, c in counters.items()
    })


def describe_rules(router: Router, name: str) -> dict[str, Any]:
    """A service's rules in order, each with the pool it sends to now (None: it falls through) and the
    requests it routed so far."""
    router.service_spec(name)
    service = router.table.services[name]
    rules = []
    for rule, pool in zip(service.spec.rules, service.rule_pools, strict=True):
        stats = router.metrics.rules.get((name, rule.name))
        rules.append({**rule.to_dict(), "pool": pool.name if pool is not None else None,
                      "matches": stats.matches if stats is not None else 0})
    return {"service": name, "rules": rules}


async def get_rules(request: web.Request) -> web.Response:
    return _json(describe_rules(request.app[ROUTER_KEY], request.match_info["name"]))


async def put_rules(request: web.Request) -> web.Response:
    """Replace the service's rules: `{"rules": [{"name", "match", "to"}, ...]}` (validated whole first)."""
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"rules"}:
        raise ValidationError("rules", 'the body must be {"rules": [...]}')
    return await _apply_rules(request, rules_from_list(body["rules"]))


async def delete_rules(request: web.Request) -> web.Response:
    return await _apply_rules(request, ())


async def _apply_rules(request: web.Request, rules: tuple[RuleSpec, ...]) -> web.Response:
    router = request.app[ROUTER_KEY]
    name = request.match_info["name"]
    router.service_spec(name)
    request.app[RULES_SETTER](name, rules)
    await _data_plane_first()
    return _json({"generation": router.generation, **describe_rules(router, name)})


async def get_mirror(request: web.Request) -> web.Response:
    """The service's shadow traffic: its settings, what happened to the copies, and the differences
    found per endpoint template (noise learned from the stable pool left out)."""
    router = request.app[ROUTER_KEY]
    name = request.match_info["name"]
    spec = router.service_spec(name)
    mirror = router.mirrors.get(name)
    if mirror is None:
        raise ApiError(404, f"service {name!r} has no mirror (add [services.{name}.mirror])")
    service = router.table.services.get(name)
    target = service.mirror_pool if service is not None and service.mirror is not None else None
    return _json({**mirror.describe(), "active": spec.mirror is not None and target is not None,
                  "target_pool": target.name if target is not None else None})


def _seconds(bound: float | None) -> float | str | None:
    """A latency bound for JSON: +inf (past the last bucket) has no JSON number, so say "+Inf"."""
    return "+Inf" if bound == float("inf") else bound


async def get_drains(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    return _json({a: {"in_flight": len(u.inflight)} for a, u in router.draining.items()})


async def get_metrics(request: web.Request) -> web.Response:
    router = request.app[ROUTER_KEY]
    health = [(s.name, p.name, u.address, u in p.eligible)
              for s in router.table.services.values() for p in s.pools for u in p.upstreams]
    return web.Response(text=router.metrics.render(health), content_type="text/plain",
                        charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})


async def post_logs_reopen(request: web.Request) -> web.Response:
    """Reopen the access log's file (after logrotate moved it); says which, or that it goes to stderr."""
    try:
        path = await request.app[REOPEN_KEY]()
    except OSError as exc:
        raise ApiError(500, f"could not reopen the access log: {exc}") from None
    return _json({"reopened": path})


async def _maybe_drain(request: web.Request, router: Router, removed: list) -> dict[str, Any]:
    """Removed upstreams are already draining; `?wait=drain` answers only once they are done."""
    result: dict[str, Any] = {"removed": [u.address for u in removed]}
    if removed and request.query.get("wait") == "drain":
        results = await router.wait_drained(removed)
        result["drained"] = [{"address": r.address, "completed": r.completed, "aborted": r.aborted,
                              "replayed": r.replayed, "seconds": round(r.seconds, 3)} for r in results]
    return result
