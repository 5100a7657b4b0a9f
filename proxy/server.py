"""The listening side: accept client connections, sweep their deadlines, stop gracefully.

Lifecycle, top to bottom: `start()` opens the access log and listens; `stop(timeout)` stops accepting,
closes idle keep-alive connections at once and the others after their current answer, waits up to
`timeout`, then aborts what is left, hands the last access-log lines over (and closes a log file), and
returns how many it aborted. `reopen_logs()` reopens an access-log file (SIGHUP, `turnout logs reopen`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import structlog

from . import log_writer
from .accepting import stop_accepting
from .access_log import AccessLog
from .config import ProxyConfig
from .errors import ValidationError
from .forward import ClientConnection, logged, now
from .log_writer import LogWriter, open_file, stderr_writer
from .router import Router

log = structlog.get_logger("turnout.proxy.server")


class ProxyServer:
    """The plain-HTTP listener (`proxy/tls/listener.py` has the HTTPS one, built on this one)."""

    scheme = b"http"

    def __init__(self, router: Router, config: ProxyConfig, *, listen: str | None = None,
                 connection_class: type[ClientConnection] = ClientConnection,
                 answer_extra: bytes = b"", log_writer: LogWriter | None = None) -> None:
        """`log_writer`: where the access log goes instead of what `config.access_log` names (tests)."""
        self.router = router
        self.config = config
        self.log_writer = log_writer
        self.listen = listen or config.listen
        self.sock: socket.socket | None = None  # a listening socket to accept on instead of binding `listen`
        self.connection_class = connection_class  # a subclass on the plain listener of an HTTPS front door
        self.answer_extra = answer_extra  # header lines on every upstream answer (HSTS on HTTPS)
        self.forwarded_port = _port_of(self.listen)  # the bound port once started (X-Forwarded-Port)
        self.front_door = None  # proxy/tls/frontdoor.py's FrontDoor, on the plain listener of an HTTPS proxy
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.connections: set[ClientConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._empty: asyncio.Event | None = None
        self.access_log: AccessLog | None = None  # made by start() when the config turns it on
        self._log_file: LogWriter | None = None  # the access log's own file (stderr is the process's)
        self._quiet_log: AccessLog | None = None  # the log turned off by a reload (open connections hold it)
        # Deadlines are floats on each connection; one sweeper checks them (no timer per request).
        self.tick = _sweep_interval(config)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = self.config
        if config.access_log is not False:
            self.access_log = AccessLog(self._open_log(config.access_log), config.access_log_format,
                                        config.access_log_sample)
            self.connection_class = logged(self.connection_class)
        host, _, port = self.listen.rpartition(":")
        try:
            if self.sock is not None:  # handed over (proxy/handover.py) or systemd's (socket_activation.py)
                self._server = await self.loop.create_server(self._protocol, sock=self.sock, backlog=1024)
            else:
                self._server = await self.loop.create_server(
                    self._protocol, host.strip("[]"), int(port), backlog=1024, reuse_address=True)
        except BaseException:
            await self._close_log()
            raise
        self.forwarded_port = self.port
        self._tick_handle = self.loop.call_later(self.tick, self._tick)
        log.info("proxy.listening", listen=self.listen, port=self.port, scheme=self.scheme.decode())

    def _protocol(self) -> asyncio.Protocol:
        """The protocol of one accepted connection."""
        return self.connection_class(self)

    async def stop(self, timeout: float = 10.0) -> int:
        """Graceful stop; returns how many connections had to be aborted at the deadline."""
        if self._server is None:
            return 0
        await stop_accepting(self._server)
        self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            self._empty = asyncio.Event()
            try:
                await asyncio.wait_for(self._empty.wait(), timeout)
            except TimeoutError:
                pass
        aborted = len(self.connections)
        for connection in list(self.connections):
            connection.transport.abort()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for upstream in list(self.router.upstreams.values()) + list(self.router.draining.values()):
            upstream.close_idle()
        await self._server.wait_closed()
        self._server = None
        dropped = await self._close_log()  # the last requests' lines go out before "stopped"
        log.info("proxy.stopped", aborted=aborted, **({"log_lines_dropped": dropped} if dropped else {}))
        return aborted

    # ------------------------------------------------------------------ the access log's destination
    def _open_log(self, where: bool | str) -> LogWriter:
        if self.log_writer is not None:
            writer = self.log_writer
        elif where is True:
            writer = stderr_writer()
        else:
            try:
                writer = self._log_file = open_file(where)  # type: ignore[arg-type]
            except OSError as exc:
                raise ValidationError("access_log", f"cannot open {where}: {exc.strerror or exc}") from None
        sources = self.router.metrics.sources
        if log_writer.metrics_lines not in sources:  # every live writer's drops (stderr's too)
            sources.append(log_writer.metrics_lines)
        return writer

    async def _close_log(self) -> int:
        """Hand the access log's last lines over; a file of its own is closed once they are written.
        Returns the lines its writer has dropped in all."""
        alog = self.access_log or self._quiet_log
        if alog is None:
            return 0
        writer = alog.writer
        writer.flush()
        if writer is self._log_file:
            self._log_file = None
            await _release(writer)
        return writer.dropped

    async def reconfigure(self, config: ProxyConfig) -> None:
        """Settings that change live (`turnout reload`): connections accepted from now on take `config`
        (timeouts, limits, trusted proxies, retries; open ones keep theirs), and the access log moves to
        its new place, format and sampling for every connection at once. Raises ValidationError, having
        changed nothing, when the new log file cannot be opened."""
        old = self.config
        log_keys = ("access_log", "access_log_format", "access_log_sample")
        if self.log_writer is None and any(getattr(old, k) != getattr(config, k) for k in log_keys):
            await self._move_log(old, config)
        self.config = config
        self.tick = min(self.tick, _sweep_interval(config))  # only ever sooner: no deadline is missed

    async def _move_log(self, old: ProxyConfig, config: ProxyConfig) -> None:
        alog = self.access_log or self._quiet_log
        old_file, where = self._log_file, config.access_log
        if where is False:  # off: new connections get no log; open ones write to nowhere
            writer = self._open_log(os.devnull) if self.access_log is not None else None
        elif where == old.access_log and self.access_log is not None:
            writer = self.access_log.writer  # format or sampling only
        else:
            writer = self._open_log(where)  # raises ValidationError before anything changed
        if writer is None:
            return
        self._log_file = writer if writer.path is not None else None
        if alog is None:  # it was off since the start
            self.access_log = AccessLog(writer, config.access_log_format, config.access_log_sample)
        else:
            alog.retarget(writer, config.access_log_format, config.access_log_sample)
            for connection in self.connections:
                connection.lsame = None  # its last line's texts were made for the old format
            self.access_log, self._quiet_log = (None, alog) if where is False else (alog, None)
        if self.access_log is not None:
            self.connection_class = logged(self.connection_class)
        if old_file is not None and old_file is not writer:
            await _release(old_file)

    async def reopen_logs(self) -> str | None:
        """Reopen the access log's file after the lines written so far (logrotate moved it). Returns the
        path reopened, None when the log does not go to a file; raises OSError when it cannot be opened
        (the old file is kept)."""
        writer = self._log_file
        marker = writer.reopen() if writer is not None else None
        if marker is None:
            return None
        error = marker.error if await asyncio.to_thread(marker.done.wait, 10.0) else \
            "not done within 10 s: the log writer is stuck writing"
        if error:
            log.error("proxy.log_reopen_failed", path=writer.path, error=error)
            raise OSError(error)
        log.info("proxy.log_reopened", path=writer.path)
        return writer.path

    @property
    def sockets(self) -> tuple:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        return self.sockets[0].getsockname()[1] if self.sockets else 0

    # ------------------------------------------------------------------ called by connections
    def connection_opened(self, connection: ClientConnection) -> bool:
        if len(self.connections) >= self.config.max_connections:
            return False
        self.connections.add(connection)
        self.router.metrics.connections += 1
        return True

    def connection_closed(self, connection: ClientConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.router.metrics.connections -= 1
        if not self.connections and self._empty is not None:
            self._empty.set()

    def _tick(self) -> None:
        t = now()  # the connections' clock
        for connection in list(self.connections):
            if connection.dkind and t >= connection.deadline:
                try:
                    connection.on_deadline()
                except Exception:  # one bad connection must not stop the sweeper
                    log.exception("proxy.deadline_failed")
                    self.router.metrics.internal_errors += 1
                    connection.transport.abort()
        self._tick_handle = self.loop.call_later(self.tick, self._tick)


def reopen_on_sighup(server: ProxyServer, also: Callable[[], object] | None = None) -> Callable[[], None]:
    """A SIGHUP handler: reopen the access log's file (logrotate's `postrotate`), off the signal handler;
    then `also` (the HTTPS certificates' reload)."""
    tasks: set[asyncio.Task[None]] = set()

    async def reopen() -> None:
        try:
            await server.reopen_logs()
        except OSError:  # logged by reopen_logs; the old file is kept
            pass

    def handler() -> None:
        task = asyncio.get_running_loop().create_task(reopen())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if also is not None:
            also()

    return handler


async def _release(writer: LogWriter) -> None:
    """One listener stops logging to a file's writer; the last one closes it."""
    writer.users -= 1
    if not writer.users:
        await asyncio.to_thread(writer.close)


def _sweep_interval(config: ProxyConfig) -> float:
    shortest = min(config.header_timeout, config.body_idle_timeout, config.idle_timeout,
                   config.upstream_timeout)
    return min(0.5, max(0.005, shortest / 8))


def _port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])
