"""The controller's routes on the admin API: deploy (streamed progress), status, history, rollback,
promote, abort, pause, resume. Mounted beside the proxy's own routes (proxy/admin.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from proxy.admin import RULES_SETTER, ApiError, describe_table, read_json
from proxy.tls.admin import HTTPS_KEY

from .apply.run import ApplyOptions, applier_for
from .config.model import AB_KEYS, CLI_SOURCE, ConfigError, ServiceConfig
from .config.overrides import FLAGS, flags_for_existing, service_from_flags, with_overrides
from .config.service_state import service_from_dict
from .deployer import ActiveDeployment, Deployer
from .errors import DeployInProgress, TurnoutError, UsageError
from .events import EventLog
from .journal import redacted
from .schema import SchemaRefused

DEPLOYER_KEY = web.AppKey("deployer", Deployer)
LISTEN_KEY = web.AppKey("listen", str)


def add_controller_routes(app: web.Application, deployer: Deployer, listen: str) -> None:
    app[DEPLOYER_KEY] = deployer
    app[LISTEN_KEY] = listen
    app[RULES_SETTER] = deployer.set_rules  # rules set live are kept in the service's config and journal
    app.middlewares.append(_turnout_errors)
    app.router.add_post("/v1/deploy", post_deploy)
    app.router.add_post("/v1/apply", post_apply)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/status/{service}", get_status)
    app.router.add_get("/v1/history/{service}", get_history)
    app.router.add_get("/v1/deployments/{service}/events", get_events)
    app.router.add_post("/v1/deployments/{service}/rollback", post_rollback)
    app.router.add_post("/v1/deployments/{service}/{command:promote|abort|pause|resume}", post_command)


@web.middleware
async def _turnout_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConfigError as exc:
        raise ApiError(400, str(exc), field=getattr(exc, "key", None)) from None
    except (DeployInProgress, SchemaRefused) as exc:
        raise ApiError(409, str(exc)) from None
    except UsageError as exc:
        raise ApiError(400, str(exc)) from None
    except TurnoutError as exc:
        raise ApiError(500, str(exc)) from None


DEPLOY_KEYS = ("service", "image", "strategy", "version", "flags", "options")


def _known_keys(data: dict[str, Any], known: tuple[str, ...], where: str = "") -> None:
    """An unknown key is refused, never ignored: `privileged` or `volumes` in a deploy must not be
    answered 202 with nothing applied."""
    for key in data:
        if key not in known:
            raise ApiError(400, f"{where}{key}: unknown key (known: {', '.join(known)})", field=where + key)


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{key}: must be a JSON object", field=key)
    return value


def _service_config(deployer: Deployer, body: dict[str, Any]) -> ServiceConfig:
    name = body.get("service")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "service: required", field="service")
    flags = _object(body, "flags")
    _known_keys(flags, FLAGS, "flags.")
    config = deployer.configs.get(name)
    if config is None:
        config = service_from_flags(name, image=body.get("image"), **flags)
    else:
        config = flags_for_existing(config, flags)
    options = _object(body, "options")
    _refuse_ab_options(options, body.get("strategy") or options.get("strategy") or config.strategy)
    return with_overrides(config, **options) if options else config


def _refuse_ab_options(options: dict[str, Any], strategy: Any) -> None:
    """`--match`, `--duration` and `--then` are read by the ab strategy alone: refused with any other,
    never ignored (a deploy meant for a few matched requests must not send them all to the new version)."""
    given = [key for key in options if key in AB_KEYS and options[key] is not None]
    if given and strategy != "ab":
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(flag, f"only the ab strategy reads it, and this deploy's strategy is {strategy} "
                          "(add --strategy ab)", CLI_SOURCE)


async def post_deploy(request: web.Request) -> web.StreamResponse:
    """Start a deploy. With `?follow=1` the answer streams its events (NDJSON) until it ends."""
    deployer = request.app[DEPLOYER_KEY]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object", field="body")
    _known_keys(body, DEPLOY_KEYS)
    image = body.get("image")
    if not isinstance(image, str) or not image:
        raise ApiError(400, "image: required", field="image")
    config = _service_config(deployer, body)
    active = deployer.deploy(config, image, body.get("strategy"), body.get("version"))
    if request.query.get("follow"):
        return await _stream(request, active.events)
    return web.json_response(active.describe(), status=202)


APPLY_KEYS = ("services", "source", "dry_run", "prune", "allow_empty", "wait")


async def post_apply(request: web.Request) -> web.StreamResponse:
    """`turnout apply`: `services` as the journal spells them (the CLI read the file: relative paths and
    Compose files resolve where it runs). Answers the plan (`dry_run`), the started changes, or with
    `?follow=1` streams the plan, each change's events and the results (NDJSON)."""
    deployer = request.app[DEPLOYER_KEY]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object", field="body")
    _known_keys(body, APPLY_KEYS)
    source = body.get("source") if isinstance(body.get("source"), str) else None
    services = _object(body, "services")
    configs = {}
    for name, data in services.items():
        config = service_from_dict(data, f"{source or 'apply'} (service {name!r})")
        if config.name != name:
            raise ApiError(400, f"services.{name}: names service {config.name!r}", field=f"services.{name}")
        configs[name] = config
    flags = {}
    for key in APPLY_KEYS[2:]:
        if not isinstance(body.get(key, False), bool):
            raise ApiError(400, f"{key}: must be true or false", field=key)
        flags[key] = body.get(key, False)
    run = await applier_for(deployer).apply(configs, ApplyOptions(**flags), source)
    if request.query.get("follow"):
        return await _stream(request, run.events)
    return web.json_response(run.describe(), status=200 if flags["dry_run"] else 202)


async def post_rollback(request: web.Request) -> web.StreamResponse:
    deployer = request.app[DEPLOYER_KEY]
    body = await read_json(request) if request.can_read_body else {}
    body = body or {}
    force = body.get("force_past_migration", False)
    if not isinstance(force, bool):
        raise ApiError(400, "force_past_migration: must be true or false", field="force_past_migration")
    active = await deployer.rollback(request.match_info["service"], body.get("to_version"), force)
    if request.query.get("follow"):
        return await _stream(request, active.events)
    return web.json_response(active.describe(), status=202)


async def post_command(request: web.Request) -> web.Response:
    deployer = request.app[DEPLOYER_KEY]
    active: ActiveDeployment = deployer.signals_of(request.match_info["service"])
    command = request.match_info["command"]
    force = request.query.get("force") == "1"
    if active.frozen and command == "abort" and not force:
        raise ApiError(409, f"deployment {active.id} is frozen ({active.message}); a plain abort would "
                       "roll back past it: `turnout abort --force` does, `turnout promote` keeps what serves")
    if active.frozen and command == "promote" and not active.promotable:
        raise ApiError(409, f"deployment {active.id} is frozen with nothing to promote (its new version has "
                       "no containers); `turnout abort --force` ends it, keeping what serves")
    if command == "abort":
        active.signals.abort(force=force)
    else:
        getattr(active.signals, command)()
    return web.json_response({**active.describe(), "command": command})


async def get_events(request: web.Request) -> web.StreamResponse:
    deployer = request.app[DEPLOYER_KEY]
    service = request.match_info["service"]
    active = deployer.active.get(service) or deployer.finished.get(service)
    if active is None:
        raise ApiError(404, f"no deployment of {service!r} since the daemon started")
    return await _stream(request, active.events)


async def get_status(request: web.Request) -> web.Response:
    deployer = request.app[DEPLOYER_KEY]
    service = request.match_info.get("service")
    names = [service] if service else sorted(deployer.configs)
    if service and service not in deployer.configs:
        raise ApiError(404, f"unknown service {service!r}")
    router = deployer.proxy.router
    https = request.app.get(HTTPS_KEY)
    proxy: dict[str, Any] = {"listen": request.app[LISTEN_KEY]}
    if https is not None:
        proxy["tls_listen"] = https.describe()["listen"]
        proxy["tls_warnings"] = https.warnings()
    return web.json_response({
        "owner": deployer.journal.owner,
        "proxy": proxy,
        "services": {name: deployer.status(name) for name in names},
        "table": describe_table(router),
    })


async def get_history(request: web.Request) -> web.Response:
    deployer = request.app[DEPLOYER_KEY]
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise ApiError(400, "limit: must be an integer", field="limit") from None
    records = deployer.journal.history(request.match_info["service"], limit=limit)
    out = []
    for record in records:
        item = asdict(record)
        if request.query.get("steps"):
            item["steps"] = [asdict(s) for s in deployer.journal.steps(record.id)]
        out.append(redacted(item))
    return web.json_response({"service": request.match_info["service"], "deployments": out},
                             dumps=lambda d: json.dumps(d, default=str))


async def _stream(request: web.Request, events: EventLog) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    async for event in events.follow():
        await response.write(json.dumps(event, default=str).encode() + b"\n")
    await response.write_eof()
    return response
