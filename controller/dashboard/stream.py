"""The feed on the wire: server-sent events for the browser (`GET /events` on the dashboard, resumable
with `Last-Event-ID`), and NDJSON on the admin API for `turnout status --watch` (`GET /v1/feed`),
beside `GET /v1/dashboard` (where the dashboard listens, for `turnout dashboard`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp_sse import sse_response

from .feed import Feed

if TYPE_CHECKING:
    from .app import DashboardServer

FEED_KEY = web.AppKey("feed", Feed)
SERVER_KEY = web.AppKey("dashboard", object)
PING_SECONDS = 15.0  # a comment line keeps idle connections (and proxies between) open
SEND_TIMEOUT = 30.0  # a reader that takes no data this long is cut (it reconnects and resumes)
RETRY_MS = 1000  # how soon a browser reconnects after the stream broke


async def get_events(request: web.Request) -> web.StreamResponse:
    feed = request.app[FEED_KEY]
    last_id = request.headers.get("Last-Event-ID")
    async with sse_response(request, ping_interval=PING_SECONDS, send_timeout=SEND_TIMEOUT) as sse:
        first = True
        try:
            async for event in feed.follow(last_id):
                await sse.send(event.data, id=event.id, event=event.kind, retry=RETRY_MS if first else None)
                first = False
        except (ConnectionResetError, TimeoutError):
            pass  # the reader left, or stalled past SEND_TIMEOUT (cut): it resumes with Last-Event-ID
    return sse


def add_feed_routes(app: web.Application, feed: Feed, dashboard: DashboardServer | None) -> None:
    """The admin API's side: the feed as NDJSON, and where the dashboard is."""
    app[FEED_KEY] = feed
    app[SERVER_KEY] = dashboard
    app.router.add_get("/v1/feed", get_feed)
    app.router.add_get("/v1/dashboard", get_dashboard)


async def get_feed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    try:
        async for event in request.app[FEED_KEY].follow(request.query.get("last_event_id")):
            await response.write(event.data.encode() + b"\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # `status --watch` ended
    return response


async def get_dashboard(request: web.Request) -> web.Response:
    server: Any = request.app[SERVER_KEY]
    if server is None:
        return web.json_response({"enabled": False})
    return web.json_response({"enabled": True, "url": server.url, "token": server.config.token,
                              "allow_actions": server.config.allow_actions})
