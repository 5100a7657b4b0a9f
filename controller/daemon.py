"""`turnout serve`: the proxy and the controller in one process, so one owner both routes traffic and
stops containers — a container always leaves routing and drains before it is stopped.

Lifecycle, top to bottom: state dir → router + proxy listener + health checks → journal + Docker →
recovery → admin API → first deploys → serve until SIGTERM → stop accepting, finish in flight, close.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path

import structlog
from aiohttp import web

from proxy.__main__ import raise_open_files_limit
from proxy.admin import create_admin_app
from proxy.health import HealthChecker
from proxy.metrics import Metrics
from proxy.router import Router
from proxy.server import ProxyServer

from .api import add_controller_routes
from .config.model import Config
from .dashboard.app import DashboardServer
from .dashboard.feed import Feed
from .dashboard.stream import add_feed_routes
from .deployer import Deployer
from .docker_backend import DockerBackend
from .journal import Journal
from .proxy_control import ProxyControl
from .recovery import recover
from .testing import faults

log = structlog.get_logger("turnout.daemon")

RECONCILE_INTERVAL = 2.0  # seconds between checks that each serving release is whole (Deployer.reconcile)
RECONCILE_BACKOFF = 30.0  # seconds before a service whose repair failed is tried again


def owner_for(state_dir: Path) -> str:
    """A stable owner id per state dir: two daemons on one engine never touch each other's containers."""
    return "turnout-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]


class Daemon:
    def __init__(self, config: Config, extra_labels: dict[str, str] | None = None) -> None:
        self.config = config
        self.state_dir = config.state_dir
        self.extra_labels = extra_labels or {}
        self.router = Router(Metrics(), hold_timeout=config.proxy.hold_timeout,
                             drain_timeout=config.proxy.drain_timeout)
        self.proxy_server = ProxyServer(self.router, config.proxy)
        self.health = HealthChecker(self.router)
        self.journal: Journal | None = None
        self.backend: DockerBackend | None = None
        self.deployer: Deployer | None = None
        self._admin_runner: web.AppRunner | None = None
        self.admin_socket = Path(config.proxy.admin_socket)
        self._reconciler: asyncio.Task[None] | None = None
        self.feed: Feed | None = None  # the live picture: `status --watch` and the dashboard
        self.dashboard: DashboardServer | None = None

    async def start(self) -> None:
        faults.install_from_env()  # test-only fault hook; unset in any real deployment
        raise_open_files_limit(self.config.proxy.max_connections)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        await self.proxy_server.start()
        await self.health.start()
        self.journal = Journal(self.config.journal_path)
        self.backend = DockerBackend(owner=owner_for(self.state_dir), extra_labels=self.extra_labels)
        self.deployer = Deployer(self.backend, ProxyControl(self.router), self.journal, self.extra_labels)
        for service in self.config.services.values():
            self.deployer.configs[service.name] = service
            if not service.managed:
                self.deployer.proxy.install_static(service)
        outcome = await recover(self.deployer, self.config)
        await self._start_dashboard()
        await self._start_admin()
        for service in self.config.services.values():
            if service.managed and service.image and service.name not in self.deployer.releases:
                self.deployer.deploy(service, service.image)
        self._reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())
        log.info("daemon.started", listen=self.config.proxy.listen, admin=str(self.admin_socket),
                 state_dir=str(self.state_dir), recovered=outcome)

    @property
    def listen(self) -> str:
        """The proxy's address as bound (port 0 in the config becomes the real port)."""
        host, _ = self.config.proxy.listen_host_port
        return f"{host}:{self.proxy_server.port}"

    async def _start_dashboard(self) -> None:
        assert self.deployer is not None
        self.feed = Feed(self.router, self.deployer)
        self.feed.start()
        if self.config.dashboard is not None:
            self.dashboard = DashboardServer(self.config.dashboard, self.feed, self.deployer,
                                             self.config.source)
            await self.dashboard.start()

    async def _start_admin(self) -> None:
        app = create_admin_app(self.router)
        assert self.deployer is not None
        add_controller_routes(app, self.deployer, self.listen)
        add_feed_routes(app, self.feed, self.dashboard)  # type: ignore[arg-type]
        self._admin_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._admin_runner.setup()
        self.admin_socket.parent.mkdir(parents=True, exist_ok=True)
        if self.admin_socket.exists():
            self.admin_socket.unlink()
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            await web.UnixSite(self._admin_runner, str(self.admin_socket)).start()
        finally:
            os.umask(old_umask)
        os.chmod(self.admin_socket, 0o600)
        proxy = self.config.proxy
        if proxy.admin_tcp:
            tcp_app = create_admin_app(self.router, token=proxy.admin_token)
            add_controller_routes(tcp_app, self.deployer, self.listen)
            add_feed_routes(tcp_app, self.feed, self.dashboard)  # type: ignore[arg-type]
            tcp_runner = web.AppRunner(tcp_app, access_log=None, handle_signals=False)
            await tcp_runner.setup()
            host, _, port = proxy.admin_tcp.rpartition(":")
            await web.TCPSite(tcp_runner, host.strip("[]"), int(port)).start()
            self._tcp_runner = tcp_runner

    async def _reconcile_forever(self) -> None:
        """Notice serving containers that stopped or vanished behind our back (e.g. the Docker engine
        restarted) and repair them; see `Deployer.reconcile`."""
        assert self.deployer is not None
        loop = asyncio.get_running_loop()
        retry_at: dict[str, float] = {}
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            for service in list(self.deployer.releases):
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
        log.info("daemon.stopping")
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
        if self.feed is not None:
            await self.feed.stop()  # ends the streams that follow it first
        if self.dashboard is not None:
            await self.dashboard.stop()
        if self.deployer is not None:
            await self.deployer.close()
        await self.proxy_server.stop(timeout)
        await self.health.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if getattr(self, "_tcp_runner", None) is not None:
            await self._tcp_runner.cleanup()
        if self.backend is not None:
            await self.backend.close()
        if self.journal is not None:
            self.journal.close()
        log.info("daemon.stopped")

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        await self.start()
        try:
            await stop
        finally:
            await self.stop()
