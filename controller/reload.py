"""`turnout reload` and SIGHUP: read turnout.toml again and apply, without a restart, what can change
while serving; say what cannot.

Live: the proxy's timeouts, limits, trusted proxies and retries (for connections accepted from then on),
`hold_timeout`/`drain_timeout` defaults, the access log (file, format, sampling), `allow_host_hooks`;
per service its routing settings (host, path, health, timeouts, rules, mirror, override, sticky,
strategy options, hooks: one table swap, journalled like apply's `~routing`), static upstreams, a new
static service, a new managed service's first deploy (as `turnout serve` makes at start); and the HTTPS
certificates are re-read. Needs a restart (reported, never silently dropped): the listen addresses, the
admin API, the state dir, `[proxy.tls]` settings, `[dashboard]`. Not by reload (reported): a service's
image, replicas or container definition, which are deploys (`turnout apply`).

All or nothing: the file is read and checked (and a deploy in progress of a changed service refused)
before anything changes; a bad file changes nothing and the error names the key and the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from proxy.config import ProxyConfig
from proxy.errors import ValidationError
from proxy.limits import files_for_proxy, raise_open_files_limit

from .apply.plan import SETTINGS, differences, show
from .apply.run import applier_for, reroute
from .apply.spec import CONTAINER_FIELDS
from .config.duration import format_duration
from .config.model import Config, ConfigError, ServiceConfig
from .config.reader import check_host_hooks
from .deployer import ActiveDeployment, check_version
from .errors import DeployInProgress, TurnoutError, UsageError
from .handover import config_facts
from .release import version_of
from .strategies import STRATEGIES

if TYPE_CHECKING:
    from .daemon import Daemon

log = structlog.get_logger("turnout.reload")

ORIGIN = "reload"  # journalled as the origin of the changes a reload makes
# [proxy] keys a running proxy takes from a reload; the others need a restart.
# The routing listener and its fleet (remote proxies) are made once, at the start.
RESTART_PROXY_KEYS = ("listen", "admin_socket", "admin_tcp", "admin_token", "tls", "extra", "routing_listen",
                      "routing_token", "proxy_ack_timeout", "proxy_unseen_timeout")
LIVE_PROXY_KEYS = tuple(f.name for f in fields(ProxyConfig) if f.name not in RESTART_PROXY_KEYS)
# A service's values that a reload does not change: a new release or scale is a deploy (turnout apply).
_DEPLOY_FIELDS = ("image", "replicas", *CONTAINER_FIELDS)


class ReloadRefused(UsageError):
    """The reload changed nothing; the message says why."""


@dataclass
class ReloadResult:
    file: str
    applied: list[str] = field(default_factory=list)
    needs_restart: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)  # changes that are deploys, services kept
    results: list[dict[str, Any]] = field(default_factory=list)  # each journalled change's outcome
    changed: bool = False  # the file changed something (the certificates are re-read anyway)

    @property
    def succeeded(self) -> bool:
        return all(r["status"] in ("succeeded", "running") for r in self.results)

    def describe(self) -> dict[str, Any]:
        return {"file": self.file, "changed": self.changed, "applied": self.applied,
                "needs_restart": self.needs_restart, "not_applied": self.not_applied,
                "results": self.results, "succeeded": self.succeeded}


class Reloader:
    def __init__(self, daemon: Daemon, read_config: Callable[[], Config]) -> None:
        self.daemon = daemon
        self.read_config = read_config  # the file with `turnout serve`'s flags applied, as at start
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_sighup(self) -> None:
        """SIGHUP's part after the log reopen: a reload, logged (nobody waits for its answer)."""
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        """SIGHUP always re-reads the certificates (as before reload existed), even when the file is
        refused, or there is none, or the daemon is still starting."""
        daemon = self.daemon
        if daemon.deployer is not None and daemon.config.source is not None:
            try:
                await self.reload()
                return
            except TurnoutError:  # logged by reload
                pass
        if daemon.https is not None:
            daemon.https.reload()

    async def reload(self) -> ReloadResult:
        source = self.daemon.config.source
        if source is None:
            raise ReloadRefused("`turnout serve` was started without --config: there is no file to read "
                                "again (the HTTPS certificates are re-read by `turnout certs reload`)")
        if self._lock.locked():
            raise ReloadRefused("another reload is running; try again when it ended")
        async with self._lock:
            try:
                return await self._reload(str(source))
            except TurnoutError as exc:
                log.error("config.reload_refused", file=str(source), error=str(exc))
                raise

    async def _reload(self, source: str) -> ReloadResult:
        daemon = self.daemon
        deployer = daemon.deployer
        assert deployer is not None
        handover = getattr(daemon, "handover", None)
        if handover is not None and handover.frozen:
            raise ReloadRefused("a hand-over to a new `turnout serve` is under way; that one reads the file")
        if applier_for(deployer)._lock.locked():
            raise ReloadRefused("a `turnout apply` (or `serve --watch`) is running; reload when it ended")
        new = await asyncio.to_thread(self.read_config)
        old = daemon.config
        result = ReloadResult(source)
        proxy = self._proxy_changes(old, new, result)
        services = self._service_changes(old, new, result)
        # Refusals, before anything changes.
        for config, kind in services:
            if config.name in deployer.active:
                raise DeployInProgress(config.name, deployer.active[config.name].id)
            if kind == "deploy":
                _check_first_deploy(config, source)
        if not new.allow_host_hooks:
            check_host_hooks([c for c, _ in services], f"{source} ([proxy] does not allow them)")
        # Applying: the proxy first (opening a new access-log file is the one step that may fail).
        servers = [daemon.proxy_server] + ([daemon.https.server] if daemon.https is not None else [])
        try:
            for server in servers:
                await server.reconfigure(replace(proxy, tls=server.config.tls, listen=server.config.listen))
        except ValidationError as exc:
            raise ConfigError(f"proxy.{exc.key}", exc.message, source) from None
        if proxy.max_connections > old.proxy.max_connections:
            raise_open_files_limit(files_for_proxy(proxy.max_connections))
        daemon.router.hold_timeout, daemon.router.drain_timeout = proxy.hold_timeout, proxy.drain_timeout
        deployer.allow_host_hooks = new.allow_host_hooks
        started = [(self._start(config, kind), config.name) for config, kind in services]
        result.changed = bool(result.applied)
        if daemon.https is not None:
            changed = daemon.https.reload()["changed"]
            result.applied.append(f"certificates re-read ({'changed' if changed else 'no change'})")
        daemon.config = replace(new, proxy=proxy, state_dir=old.state_dir, dashboard=old.dashboard)
        if handover is not None:  # a hand-over checks the file's bytes against what runs: this file now
            handover.facts = config_facts(daemon.config)
        for active, name in started:
            result.results.append(await _outcome(active, name))
        log.info("config.reloaded", file=source, applied=result.applied, needs_restart=result.needs_restart,
                 not_applied=result.not_applied, succeeded=result.succeeded)
        return result

    def _proxy_changes(self, old: Config, new: Config, result: ReloadResult) -> ProxyConfig:
        """The proxy config to run: the file's live keys, the running values of the others."""
        for key in LIVE_PROXY_KEYS:
            a, b = getattr(old.proxy, key), getattr(new.proxy, key)
            if a != b:
                shown = format_duration if key.endswith("_timeout") else show
                result.applied.append(f"proxy.{key} {shown(a)} -> {shown(b)}")
        for key in RESTART_PROXY_KEYS:
            a, b = getattr(old.proxy, key), getattr(new.proxy, key)
            if a == b:
                continue
            if key == "tls" and a is not None and b is not None:
                for sub in fields(a):
                    x, y = getattr(a, sub.name), getattr(b, sub.name)
                    if x != y:
                        result.needs_restart.append(f"proxy.tls.{sub.name} {show(x)} -> {show(y)}")
            elif key == "tls":
                result.needs_restart.append(f"proxy.tls {'added' if b is not None else 'removed'}")
            elif key in ("admin_token", "routing_token"):  # a secret: never shown
                result.needs_restart.append(f"proxy.{key} changed")
            else:
                result.needs_restart.append(f"proxy.{key} {show(a)} -> {show(b)}")
        if old.state_dir != new.state_dir:
            result.needs_restart.append(f"proxy.state_dir {old.state_dir} -> {new.state_dir}")
        if old.dashboard != new.dashboard:
            result.needs_restart.append("dashboard changed")
        if old.allow_host_hooks != new.allow_host_hooks:
            result.applied.append(f"proxy.allow_host_hooks {show(old.allow_host_hooks)} -> "
                                  f"{show(new.allow_host_hooks)}")
        running = {key: getattr(old.proxy, key) for key in RESTART_PROXY_KEYS}
        return replace(new.proxy, **running)

    def _service_changes(self, old: Config, new: Config,
                         result: ReloadResult) -> list[tuple[ServiceConfig, str]]:
        """What to do per service of the file: (config, "routing" or "deploy"); the rest reported."""
        deployer = self.daemon.deployer
        assert deployer is not None
        out: list[tuple[ServiceConfig, str]] = []
        for name, want in new.services.items():
            have = deployer.configs.get(name)
            if have is None:
                if not want.managed:
                    out.append((want, "routing"))
                    result.applied.append(f"services.{name}: new, routed to {', '.join(want.upstreams)}")
                elif want.image:
                    out.append((want, "deploy"))
                    result.applied.append(f"services.{name}: new, first deploy of {want.image} started")
                else:
                    out.append((want, "known"))
                    result.applied.append(f"services.{name}: new, no image: deploy it with `turnout deploy`")
                continue
            if want.managed != have.managed:
                result.not_applied.append(f"services.{name}: static upstreams <-> containers: remove the "
                                          "service and add it again (`turnout apply --prune`)")
                continue
            settings = differences(have, want, SETTINGS)
            if not want.managed and want.upstreams != have.upstreams:
                settings.insert(0, f"upstreams {show(have.upstreams)} -> {show(want.upstreams)}")
            if want.managed:
                deploys = differences(have, want, _DEPLOY_FIELDS)
                if deploys:
                    result.not_applied.append(f"services.{name}: {'; '.join(deploys)}: a deploy, not a "
                                              "reload (`turnout apply` makes it)")
            if settings:
                merged = replace(have, upstreams=want.upstreams,
                                 **{key: getattr(want, key) for key in SETTINGS})
                # Nothing of a managed service serves (its deploy failed): its next deploy takes them.
                routed = not want.managed or name in deployer.releases
                out.append((merged, "routing" if routed else "known"))
                result.applied.append(f"services.{name}: {'; '.join(settings)}")
        for name in old.services:
            if name not in new.services and name in deployer.configs:
                result.not_applied.append(f"services.{name}: no longer in the file; still served "
                                          "(`turnout apply --prune` removes what apply created)")
        return out

    def _start(self, config: ServiceConfig, kind: str) -> ActiveDeployment | None:
        deployer = self.daemon.deployer
        assert deployer is not None
        if kind == "deploy":
            assert config.image is not None
            return deployer.deploy(config, config.image, origin=ORIGIN)
        if kind == "known":
            deployer.configs[config.name] = config
            return None
        return deployer.change(config, "routing", reroute(deployer, config), ORIGIN)


def _check_first_deploy(config: ServiceConfig, source: str) -> None:
    """What `Deployer.deploy` would refuse, refused before the reload changed anything."""
    assert config.image is not None
    try:
        check_version(version_of(config.image))
    except ConfigError as exc:
        raise ConfigError(f"services.{config.name}.image", f"its tag names the version: {exc.problem}",
                          source) from None
    check = getattr(STRATEGIES[config.strategy], "check", None)
    if check is not None:
        try:
            check(config)
        except TurnoutError as exc:
            raise ConfigError(f"services.{config.name}.strategy", str(exc), source) from None


async def _outcome(active: ActiveDeployment | None, name: str) -> dict[str, Any]:
    """A routing change is waited for (the next request sees it); a first deploy is left running."""
    if active is None:
        return {"service": name, "status": "succeeded", "message": "config kept"}
    if active.strategy == "routing" and active.task is not None:
        await asyncio.wait([active.task])
    return {"service": name, "deployment": active.id, "status": active.status, "message": active.message}


RELOADER_KEY = web.AppKey("reloader", Reloader)


def add_reload_route(app: web.Application, reloader: Reloader) -> None:
    app[RELOADER_KEY] = reloader
    app.router.add_post("/v1/reload", post_reload)


async def post_reload(request: web.Request) -> web.Response:
    """Read the config file again and apply what can change live (errors: 400 naming key and file)."""
    result = await request.app[RELOADER_KEY].reload()
    return web.json_response(result.describe())
