"""The front door's routes on the admin API: `GET /v1/certs` (what `turnout certs` prints) and
`POST /v1/certs/reload` (`turnout certs reload`). Without `[proxy.tls]` both answer 404."""

from __future__ import annotations

import json

from aiohttp import web

from ..admin import ApiError
from .manager import Https

HTTPS_KEY = web.AppKey("https", Https)


def add_tls_routes(app: web.Application, https: Https | None) -> None:
    if https is not None:
        app[HTTPS_KEY] = https
    app.router.add_get("/v1/certs", get_certs)
    app.router.add_post("/v1/certs/reload", post_reload)


def _https(request: web.Request) -> Https:
    https = request.app.get(HTTPS_KEY)
    if https is None:
        raise ApiError(404, "no HTTPS listener: add [proxy.tls] to turnout.toml")
    return https


def _json(data: object) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d, indent=1))


async def get_certs(request: web.Request) -> web.Response:
    return _json(_https(request).describe())


async def post_reload(request: web.Request) -> web.Response:
    return _json(_https(request).reload())
