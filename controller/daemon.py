"""`turnout serve`: the proxy and the controller in one process, so one owner both routes traffic and
stops containers — a container always leaves routing and drains before it is stopped.

Lifecycle, top to bottom: state dir → router + proxy listener + health checks → journal + Docker →
recovery → admin API → first deploys → serve until SIGTERM → stop accepting, finish in flight, close.
Each start step registers its own stop on one `AsyncExitStack` (like aiohttp's cleanup contexts): a
start that fails halfway undoes exactly what it did, and `stop` undoes it all in reverse order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import structlog
from aiohttp import web

from proxy.admin import create_admin_app
from proxy.errors import ValidationError
from proxy.health import HealthChecker
from proxy.limits import files_for_proxy, raise_open_files_limit
from proxy.metrics import Metrics
from proxy.router import Router
from proxy.server import ProxyServer, reopen_on_sighup
from proxy.tls.admin import add_tls_routes
from proxy.tls.manager import Https

from .api import add_controller_routes
from .apply.run import applier_for
from .apply.watch import watch
from .config.model import Config, ConfigError, EngineConfig
from .config.reader import load_config
from .dashboard.app import DashboardServer
from .dashboard.feed import Feed
from .dashboard.stream import add_feed_routes
from .deployer import Deployer
from .engine.base import Engine, make_engine
from .errors import UsageError
from .fleet import Fleet
from .handover import Handover, Takeover, adopt, carry_totals
from .journal import Journal, read_owner
from .proxy_control import ProxyControl
from .recovery import recover
from .reload import Reloader, add_reload_route
from .routing_api import add_fleet_routes, create_routing_app
from .state_dir import FILE_MODE, StateDirError, prepare_state_dir
from .state_lock import StateLock
from .testing import faults

log = structlog.get_logger("turnout.daemon")

RECONCILE_INTERVAL = 2.0  # seconds between checks that each serving release is whole (Deployer.reconcile)
RECONCILE_BACKOFF = 30.0  # seconds before a service whose repair failed is tried again


def owner_of(state_dir: Path) -> str | None:
    """The owner id the daemon with this state dir labels its containers with (it lives in the
    journal, random and created once); None before that daemon first started."""
    return read_owner(Config(state_dir=state_dir).journal_path)


async def remove_containers_of(state_dir: Path, engine: EngineConfig | None = None) -> int:
    """Remove every container (slot) of the daemon with this state dir (by its owner label) on
    `engine` (default: Docker on this host), e.g. after it stopped (the demo's and the test plugin's
    cleanup). Returns how many were removed."""
    owner = owner_of(state_dir)
    if owner is None:  # the daemon never got as far as its journal: it started nothing
        return 0
    backend = make_engine(engine or EngineConfig(), owner)
    try:
        containers = await backend.list()
        for container in containers:
            await backend.remove(container.id)
    finally:
        await backend.close()
    return len(containers)


class Daemon:
    def __init__(self, config: Config, extra_labels: dict[str, str] | None = None,
                 prune_strays: bool = False, watch: bool = False, takeover: bool = False,
                 sockets: Mapping[str, socket.socket] | None = None,
                 read_config: Callable[[], Config] | None = None) -> None:
        """`sockets`: listening sockets passed by systemd, by name (proxy/socket_activation.py), served
        instead of binding `config`'s addresses; `read_config`: the config as `turnout serve` read it
        (its flags applied), read again by `turnout reload` and SIGHUP (controller/reload.py)."""
        self.config = config
        self.watch = watch  # apply config.source again whenever it changes (controller/apply/watch.py)
        self.state_dir = config.state_dir
        self.extra_labels = extra_labels or {}
        self.prune_strays = prune_strays
        self.router = Router(Metrics(), hold_timeout=config.proxy.hold_timeout,
                             drain_timeout=config.proxy.drain_timeout)
        self.proxy_server = ProxyServer(self.router, config.proxy)
        # The HTTPS listener ([proxy.tls]); it also makes the plain listener its front door.
        self.https = Https(self.router, config.proxy, self.proxy_server) if config.proxy.tls else None
        sockets = sockets or {}
        self.proxy_server.sock = sockets.get("http")
        if self.https is not None:
            self.https.server.sock = sockets.get("https")
        self.reloader = Reloader(self, read_config or (lambda: load_config(config.source)))
        self.health = HealthChecker(self.router)
        self.journal: Journal | None = None
        self.backend: Engine | None = None
        self.deployer: Deployer | None = None
        self.admin_socket = Path(config.proxy.admin_socket)
        self._stack = AsyncExitStack()  # the stops of the start steps done so far
        self._stop_timeout = 30.0  # seconds the proxy gives requests in flight when stopping
        self.feed: Feed | None = None  # the live picture: `status --watch` and the dashboard
        # Remote proxies following this controller ([proxy] routing_listen); None: this proxy only.
        proxy = config.proxy
        self.fleet = Fleet(proxy.proxy_ack_timeout, proxy.proxy_unseen_timeout) if proxy.routing_listen \
            else None
        self.routing_port: int | None = None  # the routing listener's port as bound
        self.routing_sock: socket.socket | None = None  # a routing socket handed over (serve --takeover)
        self._routing_site: web.BaseSite | None = None
        self.dashboard: DashboardServer | None = None
        self.state_lock: StateLock | None = None  # held for the daemon's life (controller/state_lock.py)
        self.handover = Handover(self)  # a later `serve --takeover` replacing this one (handover.py)
        self.takeover = Takeover(config) if takeover else None  # this one replacing a running daemon
        self._tasks: list[asyncio.Task[None]] = []  # the reconciler and the watcher
        self._admin_tcp: web.TCPSite | None = None
        self._exit: asyncio.Future[None] | None = None  # set: serve_forever returns (after a hand-over)

    async def start(self) -> None:
        stack = AsyncExitStack()
        try:
            await self._start(stack)
        except BaseException as exc:
            log.error("daemon.start_failed", error=str(exc) or type(exc).__name__)
            await stack.aclose()
            raise
        self._stack = stack

    async def _start(self, stack: AsyncExitStack) -> None:
        faults.install_from_env()  # test-only fault hook; unset in any real deployment
        raise_open_files_limit(files_for_proxy(self.config.proxy.max_connections))
        prepare_state_dir(self.state_dir)
        takeover = self.takeover
        if takeover is None:
            self.state_lock = StateLock.acquire(self.state_dir)
            stack.callback(self.state_lock.release)
            await self._start_listeners(stack)
        else:  # the listeners start once the routing table is rebuilt, on the running daemon's sockets
            received = await takeover.begin()
            stack.push_async_callback(takeover.abort, "the new daemon failed to start")
            self.state_lock = StateLock.inherited(received.lock_fd, self.state_dir)
            self.proxy_server.sock = received.sockets["http"]
            if self.https is not None:
                self.https.server.sock = received.sockets.get("https")
            self.routing_sock = received.sockets.get("routing")  # None: the old one had none, or is older
        await self.health.start()
        stack.push_async_callback(self.health.stop)
        self.journal = Journal(self.config.journal_path)
        stack.callback(self.journal.close)
        self.backend = make_engine(self.config.engine, self.journal.owner, self.extra_labels)
        stack.push_async_callback(self.backend.close)
        self.deployer = Deployer(self.backend, ProxyControl(self.router, self.fleet), self.journal,
                                 self.extra_labels)
        self.deployer.prune_strays = self.prune_strays
        self.deployer.allow_host_hooks = self.config.allow_host_hooks
        self.deployer.proxy.listen = self.listen  # http hooks go through the proxy's preview route
        for service in self.config.services.values():
            self.deployer.configs[service.name] = service
            if not service.managed:
                self.deployer.proxy.install_static(service)
        if takeover is None:
            outcome = await recover(self.deployer, self.config)
        else:
            outcome = await adopt(self.deployer, self.config, received)
            await self._start_listeners(stack)
            self.deployer.proxy.listen = self.listen
            committed = await takeover.commit()  # the old one stops accepting and lets go of the journal
            carry_totals(self, committed.get("totals"))  # before the feed's first reading
            stack.callback(self.state_lock.release)
            self.state_lock.write_pid()
            log.info("daemon.took_over", from_pid=received.pid, its_connections=committed["connections"])
        await self._start_dashboard(stack)
        await self._start_admin(stack)
        await self._start_routing(stack)
        assert self.feed is not None
        stack.push_async_callback(self.feed.stop)  # its streams end before the listeners stop
        # From here on deploys run (the API's and the first ones): stopping cancels them first.
        stack.push_async_callback(self.deployer.close)
        for service in self.config.services.values():
            if (takeover is None and service.managed and service.image
                    and service.name not in self.deployer.releases):
                self.deployer.deploy(service, service.image)
        reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())
        stack.push_async_callback(_cancel, reconciler)
        self._tasks.append(reconciler)
        if self.watch and self.config.source is not None:
            watcher = asyncio.get_running_loop().create_task(
                watch(self.config.source, applier_for(self.deployer)))
            stack.push_async_callback(_cancel, watcher)
            self._tasks.append(watcher)
        log.info("daemon.started", listen=self.config.proxy.listen, admin=str(self.admin_socket),
                 state_dir=str(self.state_dir), owner=self.journal.owner, recovered=outcome)

    async def _start_listeners(self, stack: AsyncExitStack) -> None:
        try:
            await self.proxy_server.start()
        except ValidationError as exc:  # the access log's file could not be opened
            raise ConfigError(f"proxy.{exc.key}", exc.message, self.config.source) from None
        except OSError as exc:  # in use, or not an address of this host
            raise UsageError(f"cannot listen on {self.config.proxy.listen}: {exc.strerror or exc}") from None
        stack.push_async_callback(self._stop_proxy)
        if self.https is not None:
            await self.https.start(acme_hosts=tuple(dict.fromkeys(
                host for s in self.config.services.values() for host in s.hosts if "*" not in host)))
            stack.push_async_callback(self._stop_https)

    async def release_for_handover(self) -> None:
        """The new daemon took over (controller/handover.py): let go of what it needs, keep serving the
        connections we have. No deploy starts here any more: the reconciler and the watcher stop, the
        journal closes, our copy of the state dir's lock closes (the new daemon holds the same lock)."""
        for task in self._tasks:
            await _cancel(task)
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self._admin_tcp is not None:
            await self._admin_tcp.stop()
        if self._routing_site is not None:  # the proxies pull from the new daemon (a new epoch)
            if self.fleet is not None:
                self.fleet.handed_over()  # held pulls answer now, on connections that close
            await self._routing_site.stop()  # our copy of the socket: the new daemon holds it
        if self.journal is not None:
            self.journal.close()
        if self.state_lock is not None:
            self.state_lock.release()

    def request_exit(self) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(None)

    async def _stop_proxy(self) -> None:
        await self.proxy_server.stop(self._stop_timeout)

    async def _stop_https(self) -> None:
        assert self.https is not None
        await self.https.stop(self._stop_timeout)

    @property
    def routing_socket(self) -> socket.socket | None:
        """The routing listener's listening socket (passed on by a hand-over), or None."""
        server = getattr(self._routing_site, "_server", None)
        sockets = getattr(server, "sockets", None)
        return sockets[0] if sockets else None

    @property
    def tls_listen(self) -> str | None:
        """The HTTPS listener's address as bound, or None without [proxy.tls]."""
        if self.https is None:
            return None
        return f"{self.https.tls.listen.rpartition(':')[0]}:{self.https.server.port}"

    @property
    def listen(self) -> str:
        """The proxy's address as bound (port 0 in the config becomes the real port)."""
        host, _ = self.config.proxy.listen_host_port
        return f"{host}:{self.proxy_server.port}"

    async def _start_dashboard(self, stack: AsyncExitStack) -> None:
        assert self.deployer is not None
        https = self.https
        self.feed = Feed(self.router, self.deployer,
                         certificates=https.describe if https is not None else None)
        self.feed.start()
        stack.push_async_callback(self.feed.stop)
        if self.config.dashboard is not None:
            self.dashboard = DashboardServer(self.config.dashboard, self.feed, self.deployer,
                                             self.config.source)
            await self.dashboard.start()
            stack.push_async_callback(self.dashboard.stop)

    async def _start_admin(self, stack: AsyncExitStack) -> None:
        app = create_admin_app(self.router, reopen_logs=self.proxy_server.reopen_logs)
        assert self.deployer is not None
        add_controller_routes(app, self.deployer, self.listen)
        add_feed_routes(app, self.feed, self.dashboard)  # type: ignore[arg-type]
        add_tls_routes(app, self.https)
        add_fleet_routes(app, self.fleet)
        add_reload_route(app, self.reloader)
        self.handover.add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        self.admin_socket.parent.mkdir(parents=True, exist_ok=True)
        self.admin_socket.unlink(missing_ok=True)  # a stale socket (a link is removed, never followed)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            await web.UnixSite(runner, str(self.admin_socket)).start()
        finally:
            os.umask(old_umask)
        info = os.lstat(self.admin_socket)
        if not stat.S_ISSOCK(info.st_mode) or stat.S_IMODE(info.st_mode) != FILE_MODE:
            raise StateDirError(f"admin socket {self.admin_socket}: not a socket of mode 0600 after bind")
        proxy = self.config.proxy
        if proxy.admin_tcp:
            tcp_app = create_admin_app(self.router, token=proxy.admin_token,
                                       reopen_logs=self.proxy_server.reopen_logs)
            add_controller_routes(tcp_app, self.deployer, self.listen)
            add_feed_routes(tcp_app, self.feed, self.dashboard)  # type: ignore[arg-type]
            add_tls_routes(tcp_app, self.https)
            add_fleet_routes(tcp_app, self.fleet)
            add_reload_route(tcp_app, self.reloader)
            self.handover.add_guard(tcp_app)
            tcp_runner = web.AppRunner(tcp_app, access_log=None, handle_signals=False)
            await tcp_runner.setup()
            stack.push_async_callback(tcp_runner.cleanup)
            host, _, port = proxy.admin_tcp.rpartition(":")
            self._admin_tcp = web.TCPSite(tcp_runner, host.strip("[]"), int(port))
            await self._admin_tcp.start()

    async def _start_routing(self, stack: AsyncExitStack) -> None:
        """The routing listener remote proxies pull the table from (controller/routing_api.py)."""
        proxy, fleet = self.config.proxy, self.fleet
        if fleet is None or not proxy.routing_listen or not proxy.routing_token:
            return
        assert self.deployer is not None
        self.router.subscribe(lambda table: fleet.published(self.router.generation))
        app = create_routing_app(self.router, fleet, proxy.routing_token, self.deployer.proxy.drain_timeouts)
        # Held pulls end at once on stop (the proxies retry), not after aiohttp's 60 s default.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        host, _, port = proxy.routing_listen.rpartition(":")
        site: web.BaseSite
        if self.routing_sock is not None:  # handed over: pulls queued meanwhile are answered now
            site = web.SockSite(runner, self.routing_sock)
        else:
            site = web.TCPSite(runner, host.strip("[]"), int(port))
        self._routing_site = site
        await site.start()
        self.routing_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        fleet.listen = f"{host}:{self.routing_port}"
        log.info("daemon.routing_listening", listen=fleet.listen)

    async def _reconcile_forever(self) -> None:
        """Notice serving containers that stopped or vanished behind our back (e.g. the Docker engine
        restarted) and repair them; see `Deployer.reconcile`."""
        assert self.deployer is not None
        loop = asyncio.get_running_loop()
        retry_at: dict[str, float] = {}
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            for service in list(self.deployer.releases):
                if self.handover.frozen:  # a hand-over under way: nothing may change what runs
                    break
                if loop.time() < retry_at.get(service, 0.0):
                    continue
                try:
                    repair = await self.deployer.reconcile(service)
                except Exception:  # the loop must outlive any one bad round
                    log.exception("daemon.reconcile_failed", service=service)
                    continue
                if repair is not None:
                    log.info("daemon.reconciled", service=service, status=repair.status,
                             message=repair.message)
                    if repair.status != "succeeded":
                        retry_at[service] = loop.time() + RECONCILE_BACKOFF

    async def stop(self, timeout: float = 30.0) -> None:
        """Undo every start step in reverse: the reconciler, deploys in progress, the admin API, Docker,
        the journal, health checks, and last the proxy (in-flight requests get `timeout` seconds)."""
        log.info("daemon.stopping")
        self._stop_timeout = timeout
        stack, self._stack = self._stack, AsyncExitStack()
        await stack.aclose()
        log.info("daemon.stopped")

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = self._exit = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        # SIGHUP: reopen the access log's file (logrotate), then read the config again and apply it
        # (controller/reload.py), which re-reads the HTTPS certificates too.
        loop.add_signal_handler(signal.SIGHUP, reopen_on_sighup(self.proxy_server, self.reloader.on_sighup))
        await self.start()
        try:
            await stop
        finally:
            await self.stop()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
