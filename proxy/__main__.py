"""A standalone proxy with one static service (used by the benchmark).

    python -m proxy --listen 127.0.0.1:8000 --upstream 127.0.0.1:9000 [--upstream ...] [--loop uvloop]

One service named "default" with one pool "main" (weight 1). SIGTERM/SIGINT stop it gracefully; SIGHUP
reopens an access-log file.
The access log (one JSON `http.access` event per request on stderr) is OFF here unless `--access-log`
is given, so the benchmark compares with nginx running `access_log off`; `turnout serve` logs by default.
The admin API is not started here; `serve(..., on_started=...)` is the hook for whoever adds it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable

from .config import ProxyConfig
from .limits import files_for_proxy, raise_open_files_limit
from .log import configure
from .router import Router
from .server import ProxyServer, reopen_on_sighup
from .specs import ServiceSpec

StartHook = Callable[[Router, ProxyServer], Awaitable[None]]


def static_router(config: ProxyConfig, upstreams: list[str]) -> Router:
    router = Router(hold_timeout=config.hold_timeout, drain_timeout=config.drain_timeout)
    spec = ServiceSpec.from_dict({"name": "default",
                                  "pools": [{"name": "main", "weight": 1, "upstreams": upstreams}]})
    router.set_service(spec)
    return router


async def serve(config: ProxyConfig, router: Router, on_started: StartHook | None = None) -> int:
    """Run until SIGTERM/SIGINT, then stop gracefully; returns how many connections were aborted."""
    loop = asyncio.get_running_loop()
    server = ProxyServer(router, config)
    await server.start()
    if on_started is not None:  # e.g. the admin API (added elsewhere)
        await on_started(router, server)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGHUP, reopen_on_sighup(server))
    await stop
    return await server.stop(config.drain_timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--upstream", action="append", required=True, help="host:port (repeatable)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--max-connections", type=int, default=ProxyConfig().max_connections,
                        help="client connections held at once; beyond it new ones get 503 [10000]")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=False,
                        help="log one JSON `http.access` event per request to stderr (default: off, "
                             "to compare with nginx's `access_log off`)")
    args = parser.parse_args(argv)
    configure()
    config = ProxyConfig(listen=args.listen, access_log=args.access_log, max_connections=args.max_connections)
    raise_open_files_limit(files_for_proxy(config.max_connections))

    async def run() -> None:
        await serve(config, static_router(config, args.upstream))

    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run())
    else:
        asyncio.run(run())


if __name__ == "__main__":
    main()
