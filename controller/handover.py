"""Hand-over on upgrade: `turnout serve --takeover` replaces the running daemon without closing the front
door, as HAProxy's `-x` does: the new process fetches the listening sockets over the old one's admin
socket (SCM_RIGHTS), rebuilds the routing table from the journal, starts accepting, and only then tells
the old one to stop accepting, finish what is in flight and exit.

The conversation, on the admin unix socket (never on the TCP one: descriptors do not cross TCP):
1. `POST /v1/handover/begin` with the new process's facts (state dir, listeners, config file digest).
   The old one refuses a different config or a deploy in progress (409, saying which); else it freezes
   (no deploy, apply, rollback or repair starts; the freeze lapses after FREEZE_LEASE s without a
   commit) and writes one frame carrying its listening sockets (plain, HTTPS, the routing listener the
   remote proxies pull from) and the state dir's lock, then a JSON answer with its routing table.
2. The new process reads the journal and the engine, installs the same pools and weights (no container
   started or stopped), checks the table equals the old one's, and starts accepting on the sockets.
3. `POST /v1/handover/commit`: the old one stops accepting, closes the journal and its copy of the lock,
   stops its dashboard and TCP admin listeners, answers the remote proxies' pulls at once on connections
   it closes (their next pull waits in the shared routing socket for the new one), and answers; then it
   retires its connections (each ends between requests, up to `drain_timeout`) and exits. Its answer
   carries its request counters as they were when it stopped accepting: the new one adds them to its own
   (proxy/carried_totals.py), so the totals go on. The new one then binds the admin socket and runs.
   Any failure before the commit: `POST /v1/handover/abort`, and the old one serves on as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from proxy.admin import ApiError, read_json
from proxy.carried_totals import TotalsRefused, add_totals, read_totals
from proxy.handover import HandoverProtocolError, recv_fds, retire, send_fds, stop_accepting
from proxy.router import Router

from .config.model import Config, ServiceConfig
from .config.service_state import service_from_dict
from .deployer import Deployer
from .engine.base import Container
from .errors import UsageError
from .release import Release
from .state_lock import StateLock

if TYPE_CHECKING:
    from .daemon import Daemon

log = structlog.get_logger("turnout.handover")

PROTOCOL = 1
FREEZE_LEASE = 60.0  # seconds the old daemon stays frozen waiting for the commit
CONNECT_TIMEOUT = 5.0
ANSWER_TIMEOUT = 30.0


class HandoverError(UsageError):
    """A hand-over cannot happen (or was refused); the message says why and what to do."""


# ------------------------------------------------------------------ what both sides compare
def config_facts(config: Config) -> dict[str, Any]:
    """What must be the same on both sides: the state dir, the listeners, and the config file's bytes (a
    hand-over keeps the running configuration: changes go through `turnout apply`, or a restart)."""
    source = config.source
    digest = None
    if source is not None:
        try:
            digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        except OSError:
            digest = "unreadable"
    tls = config.proxy.tls
    return {"state_dir": str(Path(config.state_dir).resolve()), "listen": config.proxy.listen,
            "tls_listen": tls.listen if tls is not None else None,
            "config_file": str(Path(source).resolve()) if source is not None else None,
            "config_sha256": digest}


def differences(ours: dict[str, Any], theirs: dict[str, Any], pid: Any) -> list[str]:
    """Each fact that differs, as a sentence: `ours` are the running daemon's, `theirs` the new one's."""
    out = []
    for key, what in (("state_dir", "state dir"), ("listen", "proxy.listen"),
                      ("tls_listen", "proxy.tls.listen"), ("config_file", "config file")):
        if ours.get(key) != theirs.get(key):
            out.append(f"{what}: {ours.get(key) or '(none)'} in the running daemon (pid {pid}), "
                       f"{theirs.get(key) or '(none)'} here")
    if not out and ours.get("config_sha256") != theirs.get("config_sha256"):
        out.append(f"config file {ours.get('config_file')} changed since the running daemon (pid {pid}) "
                   "read it")
    return out


def describe_routes(router: Router) -> dict[str, Any]:
    """The routing table as both sides must agree on it: per service its state, hosts, path and pools
    (name, weight, upstream addresses)."""
    return {name: {"state": spec.state, "hosts": sorted(spec.hosts), "path_prefix": spec.path_prefix,
                   "pools": sorted([p.name, p.weight, sorted(p.upstreams)] for p in spec.pools)}
            for name, spec in sorted(router.specs.items())}


def route_differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    out = []
    for name in sorted(set(ours) | set(theirs)):
        if ours.get(name) != theirs.get(name):
            out.append(f"service {name}: {json.dumps(theirs.get(name))} in the running daemon, "
                       f"{json.dumps(ours.get(name))} rebuilt here")
    return out


# ------------------------------------------------------------------ the running daemon's side
class Handover:
    """The old daemon's side: the admin routes, the freeze, and the retirement after the commit."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.facts = config_facts(daemon.config)  # as the file was when this daemon read it
        self.state = "serving"  # → "frozen" (begin) → "handed" (commit); abort or the lease: "serving"
        self.to_pid: int | None = None
        self._lease: asyncio.TimerHandle | None = None
        self.retired: asyncio.Task[None] | None = None

    @property
    def frozen(self) -> bool:
        return self.state != "serving"

    def add_routes(self, app: web.Application) -> None:
        """The hand-over endpoints (the unix admin app only) and the guard (every admin app)."""
        app.router.add_post("/v1/handover/begin", self.begin)
        app.router.add_post("/v1/handover/commit", self.commit)
        app.router.add_post("/v1/handover/abort", self.abort)
        self.add_guard(app)

    def add_guard(self, app: web.Application) -> None:
        app.middlewares.append(self._guard)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """While frozen or handed over, changes are refused with the reason; reads still answer."""
        if (self.state != "serving" and request.method not in ("GET", "HEAD")
                and not request.path.startswith("/v1/handover/")):
            if self.state == "frozen":
                raise ApiError(503, f"a hand-over to a new turnout serve (pid {self.to_pid}) is under way; "
                               "try again in a moment", headers={"Retry-After": "1"})
            raise ApiError(503, f"this daemon handed over to pid {self.to_pid} and is finishing its last "
                           "requests; try again: the admin socket now leads to the new daemon",
                           headers={"Retry-After": "1"})
        return await handler(request)

    def busy(self) -> str | None:
        """Why a hand-over must wait, or None. A deploy (or repair) in progress, a frozen one, or a
        finished one's work still running (stopping its drained old set, a kept-warm old set) is not
        handed over: the new process rebuilds routing from the journal and would not finish it."""
        deployer = self.daemon.deployer
        if deployer is None:
            return "the daemon is still starting"
        for service, active in sorted(deployer.active.items()):
            what = "frozen deploy" if active.frozen else (
                "repair" if active.strategy == "repair" else f"{active.strategy} deploy")
            return (f"a {what} of {service!r} is in progress ({active.id}, to {active.version}); a hand-over "
                    f"waits until no deploy runs: let it finish (turnout status {service}), then try again")
        for service, task in sorted(deployer._settling.items()):
            if not task.done():
                return (f"the last deploy of {service!r} is still draining and stopping its old containers; "
                        "try again in a moment")
        if deployer._background:
            return ("a finished deploy still has work scheduled (a kept-warm old set waiting for its "
                    "keep_old window to end, or containers being removed); try again once it is done")
        return None

    async def begin(self, request: web.Request) -> web.StreamResponse:
        hello = await read_json(request)
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
            theirs = hello.get("protocol") if isinstance(hello, dict) else "?"
            raise ApiError(400, f"hand-over protocol {theirs} not understood (this daemon speaks {PROTOCOL})")
        pid = hello.get("pid")
        if self.state != "serving":
            raise ApiError(409, f"a hand-over to pid {self.to_pid} is already under way")
        mismatch = differences(self.facts, hello.get("facts") or {}, os.getpid())
        if mismatch:
            raise ApiError(409, "different config: " + "; ".join(mismatch) + ". A hand-over keeps the "
                           "running configuration: start the new process with the same options and file")
        reason = self.busy()
        if reason is not None:
            raise ApiError(409, f"hand-over refused: {reason}")
        daemon = self.daemon
        names, fds = ["http"], [daemon.proxy_server.sockets[0].fileno()]
        if daemon.https is not None:
            names.append("https")
            fds.append(daemon.https.server.sockets[0].fileno())
        routing = daemon.routing_socket
        takes = hello.get("takes")
        if routing is not None and isinstance(takes, list) and "routing" in takes:
            names.append("routing")
            fds.append(routing.fileno())
        names.append("lock")
        fds.append(daemon.state_lock.fd)  # type: ignore[union-attr]
        self._freeze(pid)
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is None:
            self._thaw("no socket to pass descriptors on")
            raise ApiError(500, "no socket to pass descriptors on")
        try:
            send_fds(sock.fileno(), {"names": names}, fds)
        except OSError as exc:
            self._thaw(f"could not pass the sockets: {exc}")
            raise ApiError(500, f"could not pass the sockets: {exc}") from None
        log.info("handover.begun", to_pid=pid, passed=names)
        return web.json_response({"pid": os.getpid(), "facts": self.facts, "names": names,
                                  "routes": describe_routes(daemon.router),
                                  "drain_timeout": daemon.config.proxy.drain_timeout})

    def _freeze(self, pid: Any) -> None:
        self.state = "frozen"
        self.to_pid = pid
        self._lease = asyncio.get_running_loop().call_later(
            FREEZE_LEASE, self._thaw, f"no commit within {FREEZE_LEASE:.0f} s")

    def _thaw(self, reason: str) -> None:
        if self.state == "frozen":
            log.warning("handover.abandoned", to_pid=self.to_pid, reason=reason)
            self.state, self.to_pid = "serving", None
        if self._lease is not None:
            self._lease.cancel()
            self._lease = None

    async def abort(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        reason = body.get("reason", "aborted by the new process") if isinstance(body, dict) else "aborted"
        if self.state == "frozen":
            self._thaw(str(reason))
        return web.json_response({"state": self.state})

    async def commit(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        pid = body.get("pid") if isinstance(body, dict) else None
        if self.state != "frozen" or pid != self.to_pid:
            raise ApiError(409, f"no hand-over to pid {pid} is under way (it lapsed after "
                           f"{FREEZE_LEASE:.0f} s, or was aborted); the running daemon serves on")
        reason = self.busy()  # e.g. a dashboard action started a deploy meanwhile
        if reason is not None:
            self._thaw(reason)
            raise ApiError(409, f"hand-over refused: {reason}")
        if self._lease is not None:
            self._lease.cancel()
            self._lease = None
        self.state = "handed"
        daemon = self.daemon
        stop_accepting(daemon.proxy_server)
        if daemon.https is not None:
            stop_accepting(daemon.https.server)
        totals = read_totals(daemon.router.metrics, daemon.https.server if daemon.https is not None else None,
                             daemon.proxy_server.front_door)  # what finishes from here is ours only
        await daemon.release_for_handover()  # journal, lock, dashboard and TCP admin listeners
        connections = len(daemon.proxy_server.connections) + (
            len(daemon.https.server.connections) if daemon.https is not None else 0)
        self.retired = asyncio.get_running_loop().create_task(self._retire_and_exit())
        log.info("handover.committed", to_pid=pid, connections=connections)
        return web.json_response({"pid": os.getpid(), "connections": connections, "totals": totals})

    async def _retire_and_exit(self) -> None:
        daemon = self.daemon
        timeout = daemon.config.proxy.drain_timeout
        servers = [daemon.proxy_server] + ([daemon.https.server] if daemon.https is not None else [])
        try:
            aborted = sum(await asyncio.gather(*(retire(s, timeout) for s in servers)))
            log.info("handover.retired", to_pid=self.to_pid, aborted=aborted)
        finally:
            daemon.request_exit()


# ------------------------------------------------------------------ the new process's side
def carry_totals(daemon: Daemon, totals: Any) -> None:
    """Add the old daemon's counters (its commit answer's) to ours; counters that do not fit (another
    Turnout's layout) are left out with a warning: they restart at zero."""
    if totals is None:  # a daemon from before carried totals
        return
    https = daemon.https.server if daemon.https is not None else None
    try:
        add_totals(totals, daemon.router.metrics, https, daemon.proxy_server.front_door)
    except TotalsRefused as exc:
        log.warning("handover.totals_not_carried", error=str(exc))


@dataclass
class Received:
    pid: int
    routes: dict[str, Any]
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    lock_fd: int = -1


class Takeover:
    """The new daemon's side: fetch the sockets, then commit or abort."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.admin_socket = Path(config.proxy.admin_socket)
        self.received: Received | None = None
        self.committed = False

    async def begin(self) -> Received:
        self.received = await asyncio.to_thread(self._begin)
        return self.received

    def _begin(self) -> Received:
        holder = StateLock.held(self.state_dir)
        if holder is None:
            if _answers(self.admin_socket):  # a daemon from before the state dir's lock (and hand-overs)
                raise HandoverError(f"--takeover: the daemon on {self.admin_socket} does not know hand-overs "
                                    "(an older Turnout): stop it, then start this one")
            raise HandoverError(f"--takeover: no daemon to take over: no turnout serve holds the state dir "
                                f"{self.state_dir}; start it without --takeover")
        # "takes": the optional sockets this version serves (an older one would leave them unused, bound).
        hello = {"protocol": PROTOCOL, "pid": os.getpid(), "facts": config_facts(self.config),
                 "takes": ["routing"]}
        sock = self._connect(holder)
        try:
            _send_request(sock, "/v1/handover/begin", hello)
            try:
                frame, fds, rest = recv_fds(sock)
            except HandoverProtocolError as exc:
                status, body = _read_answer(sock, exc.data)  # no frame: an error answer (or an old daemon)
                raise HandoverError(_refusal(status, body, holder)) from None
            try:
                status, body = _read_answer(sock, rest)
                if status != 200 or len(fds) != len(frame.get("names", ())):
                    raise HandoverError(_refusal(status, body, holder))
                received = Received(int(body["pid"]), body["routes"])
                for name, fd in zip(frame["names"], fds, strict=True):
                    if name == "lock":
                        received.lock_fd = fd
                    else:
                        received.sockets[name] = socket.socket(fileno=fd)
                fds = []
                return received
            finally:
                for fd in fds:
                    os.close(fd)
        except OSError as exc:
            raise HandoverError(f"--takeover: the running daemon (pid {holder}) stopped answering on "
                                f"{self.admin_socket}: {exc}") from None
        finally:
            sock.close()

    def _connect(self, holder: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(self.admin_socket))
        except OSError as exc:
            sock.close()
            raise HandoverError(f"--takeover: cannot reach the running daemon (pid {holder or '?'}) on its "
                                f"admin socket {self.admin_socket}: {exc.strerror or exc}") from None
        sock.settimeout(ANSWER_TIMEOUT)
        return sock

    async def commit(self) -> dict[str, Any]:
        assert self.received is not None
        status, body = await asyncio.to_thread(self._post, "/v1/handover/commit", {"pid": os.getpid()})
        if status != 200:
            raise HandoverError(_refusal(status, body, str(self.received.pid)))
        self.committed = True
        return body

    async def abort(self, reason: str) -> None:
        """Tell the old daemon to serve on (best effort: its freeze lapses by itself anyway)."""
        if self.received is None or self.committed:
            return
        try:
            await asyncio.to_thread(self._post, "/v1/handover/abort", {"pid": os.getpid(), "reason": reason})
        except (OSError, HandoverError) as exc:
            log.warning("handover.abort_unsent", error=str(exc))
        finally:
            self.close()

    def close(self) -> None:
        """Our copies of what we received, when the hand-over did not happen (the old one keeps its own)."""
        received = self.received
        if received is None or self.committed:
            return
        for sock in received.sockets.values():
            sock.close()
        if received.lock_fd >= 0:
            os.close(received.lock_fd)
            received.lock_fd = -1

    def _post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        sock = self._connect(str(self.received.pid if self.received else "?"))
        try:
            _send_request(sock, path, body)
            return _read_answer(sock, b"")
        finally:
            sock.close()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def _send_request(sock: socket.socket, path: str, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: turnout\r\nX-Turnout-Client: takeover\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (path.encode(), len(data), data))


def _read_answer(sock: socket.socket, data: bytes) -> tuple[int, Any]:
    """A whole HTTP answer (the admin API's are JSON with a Content-Length): (status, JSON body)."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise HandoverError("--takeover: the running daemon closed the connection without an answer")
        data += chunk
    head, _, data = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(data) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    try:
        return status, json.loads(data[:length]) if length else None
    except ValueError:
        return status, data[:length].decode(errors="replace")


def _refusal(status: int, body: Any, holder: str) -> str:
    message = body.get("error") if isinstance(body, dict) else body
    if status == 404:
        message = "it does not know hand-overs (an older Turnout): stop it, then start this one"
    return f"--takeover: the running daemon (pid {holder}) refused: {message or f'HTTP {status}'}"


# ------------------------------------------------------------------ rebuilding routing, read-only
async def adopt(deployer: Deployer, config: Config, received: Received) -> dict[str, str]:
    """Routing from the journal and the engine, as recovery would, but touching nothing: no container is
    started, stopped or removed and the journal is not written. Raises HandoverError when the table
    differs from the running daemon's (then the hand-over is aborted and the old one serves on)."""
    journal = deployer.journal
    running = journal.unfinished()
    if running:
        d = running[0]
        raise HandoverError(f"--takeover: the journal has deployment {d.id} of {d.service!r} still running; "
                            "the running daemon keeps serving")
    recorded = journal.container_ids()
    by_service: dict[str, list[Container]] = defaultdict(list)
    for container in await deployer.backend.list():
        if container.id in recorded:
            by_service[container.service].append(container)
    outcome: dict[str, str] = {}
    for service, state in sorted(journal.services().items()):
        service_config = config.services.get(service) or _saved_config(state, deployer, service)
        if service_config is None:
            continue
        deployer.configs[service] = service_config
        if not service_config.managed:
            deployer.proxy.install_static(service_config)
            outcome[service] = "static"
            continue
        stable, previous = _release(state.get("stable")), _release(state.get("previous"))
        if stable is None:
            continue
        found = by_service.get(service, [])
        for release in (stable, previous):
            if release is not None:
                release.containers = [c for c in found if c.pool == release.pool and c.state == "running"]
        deployer.releases[service] = stable
        if previous is not None:
            deployer.previous[service] = previous
        deployer.proxy.install(service_config, [stable.as_pool(100)], labels={"stable": stable.pool})
        outcome[service] = f"routed {stable.version} on {len(stable.containers)} container(s)"
    # A traffic pause (`pause --traffic`) is the running daemon's, not the journal's: carried over.
    for service, theirs in received.routes.items():
        spec = deployer.proxy.router.specs.get(service)
        if spec is not None and spec.state != theirs["state"]:
            deployer.proxy.set_state(service, theirs["state"])
    mismatch = route_differences(describe_routes(deployer.proxy.router), received.routes)
    if mismatch:
        raise HandoverError("--takeover: the routing table rebuilt from the journal differs from the "
                            "running daemon's, which keeps serving: " + "; ".join(mismatch))
    return outcome


def _release(data: dict[str, Any] | None) -> Release | None:
    return Release(data["version"], data["image"], data["pool"]) if data else None


def _saved_config(state: dict[str, Any], deployer: Deployer, service: str) -> ServiceConfig | None:
    data = state.get("config")
    source = f"{deployer.journal.path} (saved config of service {service!r})"
    return service_from_dict(data, source) if data else None
