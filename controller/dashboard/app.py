"""The dashboard's web app: a separate aiohttp application from the admin API (which refuses browsers).

Routes: `/` (the page), `/assets/...` (its script, style and plotly.js from the installed `plotly`
package: no CDN, nothing fetched from elsewhere), `/events` (the server-sent-events feed, stream.py),
`/api/state` (the same picture once, as JSON) and, only with `allow_actions = true`,
`POST /api/services/{service}/{promote|abort|pause|resume|rollback}`.

Who may look: with a token, a browser opens `/?token=...` once and gets an HttpOnly, SameSite=Strict
session cookie (scripts may send `Authorization: Bearer <token>`); anything else is 401. Without a
token (loopback only) the Host header must name loopback, so a DNS-rebinding page cannot read it.
Actions need the page's CSRF token in `X-CSRF-Token`, and a same-origin `Origin` when one is sent.
Every request is logged (`dashboard.request`, never its query: it may carry the token).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import importlib.resources
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import plotly
import structlog
from aiohttp import web

from ..config.model import ConfigError, DashboardConfig
from ..config.reader import is_loopback
from ..deployer import Deployer
from ..errors import TurnoutError, UsageError
from .feed import Feed
from .stream import FEED_KEY, get_events

log = structlog.get_logger("turnout.dashboard")

ASSETS = Path(__file__).with_name("assets")
COOKIE = "turnout-dashboard"
CSRF_HEADER = "X-CSRF-Token"
COMMANDS = ("promote", "abort", "pause", "resume", "rollback")
PLOTLY_JS = f"plotly-{plotly.__version__}.min.js"  # versioned: cached by the browser for good
PLOTLY_SOURCE = importlib.resources.files("plotly").joinpath("package_data/plotly.min.js")
# The page runs only what it was served: no inline script, no other origin for anything.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashboardAuth:
    """The token, the session cookie derived from it, and the CSRF token the page carries."""

    def __init__(self, config: DashboardConfig) -> None:
        self.token = config.token
        secret = (config.token or secrets.token_urlsafe(32)).encode()
        self.session = hmac.new(secret, b"turnout-dashboard-session", hashlib.sha256).hexdigest()
        self.csrf = hmac.new(secret, b"turnout-dashboard-csrf", hashlib.sha256).hexdigest()
        self.allow_actions = config.allow_actions

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def allowed(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session.encode()):
            return True
        bearer = request.headers.get("Authorization", "")
        return bearer.startswith("Bearer ") and self.token_matches(bearer[len("Bearer "):])


AUTH_KEY = web.AppKey("auth", DashboardAuth)
DEPLOYER_KEY = web.AppKey("deployer", Deployer)
PAGES_KEY = web.AppKey("pages", dict)


def create_dashboard_app(config: DashboardConfig, feed: Feed, deployer: Deployer) -> web.Application:
    app = web.Application(middlewares=[_logged, _headers, _guard])
    app[AUTH_KEY] = DashboardAuth(config)
    app[FEED_KEY] = feed
    app[DEPLOYER_KEY] = deployer
    app[PAGES_KEY] = {}
    app.router.add_get("/", get_page)
    app.router.add_get("/assets/{name}", get_asset)
    app.router.add_get("/events", get_events)
    app.router.add_get("/api/state", get_state)
    app.router.add_post("/api/services/{service}/{command}", post_action)
    return app


# ---------------------------------------------------------------- middlewares
@web.middleware
async def _logged(request: web.Request, handler: Handler) -> web.StreamResponse:
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        log.info("dashboard.request", method=request.method, path=request.path, status=status,
                 peer=request.remote)


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH_KEY]
    if auth.token is None and not is_loopback((request.url.host or "").strip("[]")):
        return _error(403, "this dashboard has no token, so it answers only to a loopback Host "
                           "(127.0.0.1, localhost, [::1])")
    if request.path == "/" and "token" in request.query:
        if not auth.token_matches(request.query["token"]):
            return _error(401, "wrong token")
        response = web.HTTPSeeOther("/")  # the token leaves the address bar and the history
        # No `Secure` flag: the dashboard speaks plain HTTP until Turnout has HTTPS.
        response.set_cookie(COOKIE, auth.session, httponly=True, samesite="Strict", path="/")
        return response
    if not auth.allowed(request):
        return _error(401, "this dashboard needs its token: open /?token=<dashboard.token from turnout.toml> "
                           "once (`turnout dashboard --with-token` prints that address)",
                      headers={"WWW-Authenticate": 'Bearer realm="turnout-dashboard"'})
    return await handler(request)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# ---------------------------------------------------------------- handlers
async def get_page(request: web.Request) -> web.Response:
    auth = request.app[AUTH_KEY]
    page = (ASSETS / "index.html").read_text(encoding="utf-8")
    page = (page.replace("{{csrf}}", auth.csrf if auth.allow_actions else "")
                .replace("{{actions}}", "true" if auth.allow_actions else "false")
                .replace("{{plotly}}", html.escape(PLOTLY_JS)))
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


ASSET_TYPES = {".js": "application/javascript", ".css": "text/css"}


async def get_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    pages = request.app[PAGES_KEY]
    if name not in pages:
        if name == PLOTLY_JS:
            pages[name] = PLOTLY_SOURCE.read_bytes()
        elif name in ("dashboard.js", "dashboard.css"):
            pages[name] = (ASSETS / name).read_bytes()
        else:
            raise web.HTTPNotFound()
    cache = "public, max-age=31536000, immutable" if name == PLOTLY_JS else "no-cache"
    return web.Response(body=pages[name], content_type=ASSET_TYPES[Path(name).suffix],
                        headers={"Cache-Control": cache})


async def get_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[FEED_KEY].snapshot(), dumps=_dumps)


async def post_action(request: web.Request) -> web.Response:
    auth = request.app[AUTH_KEY]
    if not auth.allow_actions:
        return _error(403, "this dashboard is read-only (dashboard.allow_actions = false)")
    given = request.headers.get(CSRF_HEADER, "")
    if not given or not hmac.compare_digest(given.encode(), auth.csrf.encode()):
        return _error(403, f"missing or wrong {CSRF_HEADER}: actions come from the dashboard's own page")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return _error(403, f"cross-origin request from {origin} refused")
    service, command = request.match_info["service"], request.match_info["command"]
    if command not in COMMANDS:
        return _error(404, f"unknown action {command!r} (known: {', '.join(COMMANDS)})")
    deployer = request.app[DEPLOYER_KEY]
    try:
        if command == "rollback":
            active = await deployer.rollback(service)
        else:
            active = deployer.signals_of(service)
            getattr(active.signals, command)()
    except UsageError as exc:
        return _error(409, str(exc))
    except TurnoutError as exc:
        return _error(500, str(exc))
    log.info("dashboard.action", service=service, command=command, deployment_id=active.id)
    return web.json_response({**active.describe(), "command": command})


def _dumps(data: Any) -> str:
    import json

    return json.dumps(data, default=str)


# ---------------------------------------------------------------- the server
class DashboardServer:
    """The dashboard's listener, started and stopped by the daemon."""

    def __init__(self, config: DashboardConfig, feed: Feed, deployer: Deployer,
                 source: Path | None = None) -> None:
        self.config = config
        self.source = source
        self.app = create_dashboard_app(config, feed, deployer)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        host, port = self.config.listen_host_port
        # Open event streams end when the feed stops (before this); what is left gets 2 s.
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError("dashboard.listen", f"cannot listen on {self.config.listen}: "
                              f"{exc.strerror or exc}", self.source) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("dashboard.started", url=self.url, token=self.config.token is not None,
                 allow_actions=self.config.allow_actions)

    @property
    def url(self) -> str:
        host, _ = self.config.listen_host_port
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"  # listening everywhere: this host's loopback works from here
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
