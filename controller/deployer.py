"""The deployer: runs one deployment per service at a time, and on any failure puts the old release
back in front of traffic before it says the deploy failed.

It owns the controller's picture of what serves each service (`releases`) and what is kept for a
fast rollback (`previous`); the journal holds the same picture so a restarted daemon can rebuild it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from proxy.specs import NAME_RE, RuleSpec

from .config.model import ConfigError, ServiceConfig
from .config.reader import check_host_hooks
from .config.service_state import service_to_dict
from .engine.base import Container, Engine
from .errors import (
    AnalysisFailed,
    ContainerFailed,
    ContainerNotFound,
    DeployAborted,
    DeployFailed,
    DeployInProgress,
    DockerError,
    ImageNotFound,
    TurnoutError,
    UsageError,
)
from .events import EventLog
from .hooks import HOOK_POOL_PREFIX
from .journal import Deployment, DeploymentFinished, Journal, JournalError
from .operations import Operations
from .proxy_control import ProxyControl
from .release import Release, version_of
from .schema import LABEL as SCHEMA_LABEL
from .schema import SchemaRefused, SchemaState, read_range
from .signals import Signals
from .strategies import STRATEGIES

log = structlog.get_logger("turnout.controller")

ENGINE_SHUTDOWN_GRACE = 3.0  # seconds a failed restore waits for a failing engine to stop answering
# What a deploy's options change for that deploy only (`--preview`, `--keep-old`, `--steps`,
# `--max-surge`, `--verify`, ...): afterwards the service keeps the values its config gives. (The image
# and replicas a deploy asks for describe what then runs: those stay.)
PER_DEPLOY = ("canary", "rolling", "bluegreen", "ab", "verify", "hold_timeout", "drain_timeout")
STATIC_VERSION = "static"  # what a change of a static service (no release) is journalled as
# A version names its pool (`<version>` or `<version>-<n>`, n < 100000): a pool name is at most 63.
MAX_VERSION = 57


@dataclass
class ActiveDeployment:
    id: str
    service: str
    strategy: str
    version: str
    image: str
    events: EventLog
    signals: Signals
    started: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None
    status: str = "running"
    message: str = ""
    journal_errors: list[str] = field(default_factory=list)  # writes the journal refused as it ended
    # While frozen (status "frozen"): whether `promote` has a new release to keep.
    promotable: bool = False

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "strategy": self.strategy,
                "version": self.version, "image": self.image, "status": self.status,
                "message": self.message, "paused": self.signals.paused,
                **({"journal_errors": self.journal_errors} if self.journal_errors else {})}

    @property
    def frozen(self) -> bool:
        return self.status == "frozen"


class Deployer:
    def __init__(self, backend: Engine, proxy: ProxyControl, journal: Journal,
                 extra_labels: dict[str, str] | None = None) -> None:
        self.backend = backend
        self.proxy = proxy
        self.journal = journal
        self.extra_labels = extra_labels or {}
        self.configs: dict[str, ServiceConfig] = {}
        self.releases: dict[str, Release] = {}
        self.previous: dict[str, Release] = {}
        self.active: dict[str, ActiveDeployment] = {}
        self.finished: dict[str, ActiveDeployment] = {}  # the last one per service, for followers
        self._background: set[asyncio.Task[None]] = set()
        self._settling: dict[str, asyncio.Task[None]] = {}  # post-deploy work a next deploy waits for
        self._removing: set[str] = set()  # ids of dropped containers being removed in the background
        # Journal writes refused as a deploy ended, per service: made before its next deploy begins.
        self._unjournalled: dict[str, dict[str, Callable[[], None]]] = {}
        # Containers with our labels that the journal never recorded are someone else's: left alone
        # (and reported once) unless the operator asked `turnout serve --prune-strays`.
        self.prune_strays = False
        self._strangers_reported: set[str] = set()
        self.allow_host_hooks = False  # [proxy] allow_host_hooks: `run` hooks may run host commands

    # ------------------------------------------------------------ commands
    def deploy(self, config: ServiceConfig, image: str, strategy: str | None = None,
               version: str | None = None, origin: str | None = None,
               rollback: bool = False, force_past_migration: bool = False) -> ActiveDeployment:
        """Start a deployment in the background; follow it through `.events`. `origin`: what asked for
        it, journalled in its options (`apply`: the service is apply's to prune, Journal.created).
        `rollback`: an older version back, so the service's hooks (its new version's) do not run;
        `force_past_migration`: it gets traffic even if it cannot read the schema."""
        if config.name in self.active:
            raise DeployInProgress(config.name, self.active[config.name].id)
        if not config.managed:
            raise UsageError(f"service {config.name!r} has static upstreams; there is nothing to deploy")
        if not self.allow_host_hooks and not rollback:
            check_host_hooks([config], "the daemon's config")
        strategy = strategy or config.strategy
        if strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
        check = getattr(STRATEGIES[strategy], "check", None)  # what it needs of the config (ab: a match)
        if check is not None:
            check(config)  # refused before anything starts
        old = self.releases.get(config.name)
        version = check_version(version or version_of(image))
        pool = version if old is None or old.pool != version else f"{version}-{int(time.time()) % 100000}"
        # `verify`: seconds of post-switch verification this deploy owes (recovery reads it).
        verify = config.verify if old is not None and STRATEGIES[strategy].verifies else 0.0
        record = self._begin(config.name, strategy, version, image, old.version if old else None,
                             {"pool": pool, "verify": verify, **({"origin": origin} if origin else {})})
        self.configs[config.name] = _lasting(config, self.configs.get(config.name))
        active = ActiveDeployment(record.id, config.name, strategy, version, image, EventLog(), Signals())
        self.active[config.name] = active
        new = Release(version, image, pool)
        active.task = asyncio.get_running_loop().create_task(
            self._run(active, config, new, old, hooks=not rollback, force=force_past_migration))
        return active

    async def settle(self, service: str) -> None:
        """Wait for the work a finished deploy left running (e.g. stopping its drained old set)."""
        task = self._settling.get(service)
        if task is not None:
            await asyncio.wait([task])

    def signals_of(self, service: str) -> ActiveDeployment:
        active = self.active.get(service)
        if active is None:
            raise UsageError(f"no deployment of {service!r} is in progress")
        return active

    async def rollback(self, service: str, to_version: str | None = None,
                       force_past_migration: bool = False) -> ActiveDeployment:
        """Put the previous release back: reuse its kept containers when present, else redeploy it.
        A version older than the service's schema floor is refused unless `force_past_migration`."""
        if service in self.active:
            active = self.active[service]
            if active.frozen and not force_past_migration:
                raise SchemaRefused(f"deployment {active.id} of {service!r} is frozen ({active.message}); "
                                    "`--force-past-migration` rolls it back anyway")
            active.signals.abort("rolled back by operator", force=force_past_migration)
            task = active.task
            if task is not None:
                await asyncio.wait([task])
            return self.finished[service]
        config = self._config(service)
        previous = self.previous.get(service)
        schema = self.schema(service)
        if to_version is not None and (previous is None or previous.version != to_version):
            schema.check_rollback(to_version, force_past_migration)
            image = self._image_of_version(service, to_version)
            return self.deploy(config, image, "bluegreen", to_version, rollback=True,
                               force_past_migration=force_past_migration)
        if previous is None:
            raise UsageError(f"{service!r} has no previous release to roll back to; "
                             "use --to VERSION or deploy an image")
        schema.check_rollback(previous.version, force_past_migration)
        if not await self._all_exist(previous.containers):
            # Its containers were replaced (rolling, canary): bring the version back side by side.
            return self.deploy(config, previous.image, "bluegreen", previous.version, rollback=True,
                               force_past_migration=force_past_migration)
        current = self.releases[service]
        record = self._begin(service, "rollback", previous.version, previous.image,
                             current.version, {"pool": previous.pool})
        active = ActiveDeployment(record.id, service, "rollback", previous.version, previous.image,
                                  EventLog(), Signals())
        self.active[service] = active
        active.task = asyncio.get_running_loop().create_task(
            self._run(active, config, previous, current, reuse=True, hooks=False,
                      force=force_past_migration))
        return active

    def schema(self, service: str) -> SchemaState:
        """The service's schema state (controller/schema.py), as the journal holds it."""
        return SchemaState.from_dict(self.journal.schema(service))

    async def readable(self, image: str) -> tuple[int, int] | None:
        """The schema versions `image` reads (its turnout.schema label); None without one."""
        return read_range((await self.backend.image_labels(image)).get(SCHEMA_LABEL), image)
    def set_rules(self, service: str, rules: tuple[RuleSpec, ...]) -> None:
        """Routing rules changed live (`turnout rules set|clear`, the admin API): kept in the service's
        config and its journal state (so a daemon restarted without a config file naming the service keeps
        them), then installed in one swap. Refused while a deploy of the service runs: its routing (an
        `ab` deploy's own rule first) comes from the config it started with."""
        if service in self.active:
            raise DeployInProgress(service, self.active[service].id)
        self.proxy.router.service_spec(service)  # an unknown service changes nothing
        config = self.configs.get(service)
        if config is not None:
            self.configs[service] = replace(config, rules=tuple(rules))
            if service in self.releases:
                try:
                    self._save_state(service)
                except Exception:
                    self.configs[service] = config  # refused by the journal: nothing changed
                    raise
        self.proxy.router.set_rules(service, tuple(rules))

    async def _all_exist(self, containers: list[Container]) -> bool:
        if not containers:
            return False
        for container in containers:
            try:
                await self.backend.inspect(container.id)
            except TurnoutError:
                return False
        return True

    async def repair(self, config: ServiceConfig, release: Release, missing: int) -> bool:
        """Start `missing` containers of the serving release (after recovery found it short)."""
        record = self._begin(config.name, "repair", release.version, release.image, release.version,
                             {"pool": release.pool})
        ops = Operations(backend=self.backend, proxy=self.proxy, journal=self.journal,
                         deployment_id=record.id, config=config, new=release, old=None,
                         events=EventLog(), signals=Signals(), extra_labels=self.extra_labels)
        try:
            await ops.start(release, missing)
        except TurnoutError as exc:
            self.journal.finish(record.id, "failed", str(exc))
            return False
        self.journal.finish(record.id, "succeeded",
                            f"started {missing} container(s) to restore {config.replicas} replica(s)")
        return True

    async def reconcile(self, service: str) -> ActiveDeployment | None:
        """Make the serving release whole again when its containers stopped or vanished behind our back
        (a Docker engine restart stops every container without a restart policy, and Turnout sets none),
        and remove containers of the service that we created but no release holds (e.g. what a deploy
        failing while the engine was down could not remove). Only containers the journal recorded are
        routed, kept or removed: one made by hand with our labels is never given traffic. Called
        periodically by the daemon; a no-op (None) while a deploy runs, when all is well, or while the
        engine does not answer. Journalled as a `repair`."""
        config, release = self.configs.get(service), self.releases.get(service)
        if (config is None or release is None or not config.managed or service in self.active
                or (service in self._settling and not self._settling[service].done())):
            return None
        try:
            found = await self.backend.list(service)
        except TurnoutError:
            return None  # the engine does not answer (yet): the next round tries again
        if service in self.active or self.releases.get(service) is not release:
            return None  # a deploy began meanwhile
        previous = self.previous.get(service)
        known = {release.pool} | ({previous.pool} if previous else set())
        recorded = self.journal.container_ids(service)
        strangers = [c for c in found if c.id not in recorded and c.id not in self._removing]
        found = [c for c in found if c.id in recorded]
        strays = [c for c in found if c.pool not in known and c.id not in self._removing]
        if self.prune_strays:
            strays += strangers
        else:
            self._report_strangers(strangers)
        serving = {c.id for c in release.containers}
        # The release's own containers first, running ones first: they keep their traffic.
        mine = sorted((c for c in found if c.pool == release.pool),
                      key=lambda c: (c.id not in serving, not c.running))
        by_id = {c.id: c for c in mine}
        if (not strays and len(mine) == len(release.containers) == config.replicas
                and all(c.id in by_id and by_id[c.id].running for c in release.containers)):
            return None
        record = self._begin(service, "repair", release.version, release.image, release.version,
                             {"pool": release.pool})
        active = ActiveDeployment(record.id, service, "repair", release.version, release.image,
                                  EventLog(), Signals())
        self.active[service] = active
        active.task = asyncio.get_running_loop().create_task(
            self._repair_run(active, config, release, mine[:config.replicas],
                             mine[config.replicas:] + strays))
        await asyncio.wait([active.task])
        return active

    def change(self, config: ServiceConfig, kind: str, work: Callable[[Operations], Awaitable[str]],
               origin: str | None = None) -> ActiveDeployment:
        """Run `work` on the service as a journalled deployment of its own (`kind`: apply's `routing`,
        `scale` and `prune`): one per service at a time like any deploy, after the work its last deploy
        left. `work` returns the message; when it raises, it has undone what it did. The service's
        state is saved after it unless the work forgot the service."""
        if config.name in self.active:
            raise DeployInProgress(config.name, self.active[config.name].id)
        release = self.releases.get(config.name) or Release(STATIC_VERSION, "-", STATIC_VERSION)
        record = self._begin(config.name, kind, release.version, release.image, release.version,
                             {"pool": release.pool, **({"origin": origin} if origin else {})})
        active = ActiveDeployment(record.id, config.name, kind, release.version, release.image,
                                  EventLog(), Signals())
        self.active[config.name] = active
        active.task = asyncio.get_running_loop().create_task(self._change_run(active, config, release, work))
        return active

    async def _change_run(self, active: ActiveDeployment, config: ServiceConfig, release: Release,
                          work: Callable[[Operations], Awaitable[str]]) -> None:
        ops = Operations(backend=self.backend, proxy=self.proxy, journal=self.journal,
                         deployment_id=active.id, config=config, new=release, old=None,
                         events=active.events, signals=active.signals, extra_labels=self.extra_labels)
        started = time.monotonic()
        try:
            settling = self._settling.pop(config.name, None)
            if settling is not None:
                await asyncio.wait([settling])
            ops.step("started", strategy=active.strategy)
            message = await work(ops)
            ops.ending = True
            if config.name in self.configs:
                self._save_state_quietly(ops)
            ops.step("completed")
            status = "succeeded"
        except Exception as exc:
            if not isinstance(exc, TurnoutError | sqlite3.Error):
                ops.log.exception("deploy.internal_error")
            status, message = "failed", _describe(exc)
        await self._finish(active, status, message, ops, started)

    def forget(self, service: str) -> None:
        """The service is gone (pruned): no config, release or saved state left of it."""
        for known in (self.configs, self.releases, self.previous, self.finished):
            known.pop(service, None)
        self.journal.forget_service(service)

    def _report_strangers(self, strangers: list[Container]) -> None:
        for container in strangers:
            if container.id not in self._strangers_reported:
                self._strangers_reported.add(container.id)
                log.warning("controller.stranger_left", service=container.service,
                            container=container.short_id, pool=container.pool,
                            reason="carries our owner label but the journal never recorded it; "
                            "`turnout serve --prune-strays` removes such containers")

    async def _repair_run(self, active: ActiveDeployment, config: ServiceConfig, release: Release,
                          keep: list[Container], extra: list[Container]) -> None:
        ops = Operations(backend=self.backend, proxy=self.proxy, journal=self.journal,
                         deployment_id=active.id, config=config, new=release, old=None,
                         events=active.events, signals=active.signals, extra_labels=self.extra_labels)
        started = time.monotonic()
        stopped = [c for c in keep if not c.running]
        try:
            ops.step("started", strategy="repair", stopped=[c.short_id for c in stopped],
                     missing=config.replicas - len(keep), unknown=[c.short_id for c in extra])
            kept = Release(release.version, release.image, release.pool, stopped)
            if stopped:
                await ops.restart(kept)  # new host ports: routed below
            release.containers = [c for c in keep if c.running] + kept.containers
            missing = config.replicas - len(release.containers)
            if missing > 0:
                await ops.start(release, missing)
            await ops.drain(ops.route([(release, 100)]))
            ops.step("routed", weights={release.pool: 100}, addresses=list(release.addresses))
            await ops.remove(extra)
        except Exception as exc:
            message = str(exc) if isinstance(exc, TurnoutError) else f"internal error: {exc!r}"
            await self._finish(active, "failed", f"repair of {release.version}: {message}", ops, started)
            return
        self._save_state_quietly(ops)
        parts = [f"{n} {what}" for n, what in ((len(stopped), "stopped container(s) restarted"),
                                               (max(0, missing), "missing container(s) started"),
                                               (len(extra), "unknown container(s) removed")) if n]
        await self._finish(active, "succeeded", f"{release.version} made whole again: {', '.join(parts)}",
                           ops, started)

    # ------------------------------------------------------------ the run
    async def _run(self, active: ActiveDeployment, config: ServiceConfig, new: Release,
                   old: Release | None, reuse: bool = False, hooks: bool = True, force: bool = False) -> None:
        ops = Operations(backend=self.backend, proxy=self.proxy, journal=self.journal,
                         deployment_id=active.id, config=config, new=new, old=old,
                         events=active.events, signals=active.signals, extra_labels=self.extra_labels,
                         allow_host_hooks=self.allow_host_hooks, hooks=hooks)
        ops.force_past_migration = force
        started = time.monotonic()
        try:
            settling = self._settling.pop(config.name, None)
            if settling is not None:  # work the service's last deploy left (e.g. stopping its old set)
                await asyncio.wait([settling])
            status, message = await self._attempt(active, ops, reuse)
        except Exception as exc:  # the deployer's own bookkeeping failed: the deploy still ends below
            ops.log.exception("deploy.internal_error")
            status, message = "failed", f"internal error: {exc!r}"
        # Only a BaseException skips the end: the daemon cancelling its tasks at shutdown (or a SIGKILL,
        # as the fault tests simulate one) leaves the journal saying `running`, for recovery to finish.
        if status == "succeeded" and ops.after_success:
            self._hold(config.name, lambda: _run_all(ops.after_success))  # a next deploy waits for it
        await self._finish(active, status, message, ops, started)
        if (status == "succeeded" and old is not None and config.bluegreen.keep_old > 0
                and active.strategy == "bluegreen" and not ops.contract_started):  # else: stopped already
            self._later(self._retire_warm(config, old, config.bluegreen.keep_old))

    async def _attempt(self, active: ActiveDeployment, ops: Operations, reuse: bool) -> tuple[str, str]:
        """Run the strategy (or the switch back to kept containers) and promote the new release; on a
        failure put the old release back. Returns (status, message). From the failure or the promotion
        on, the deploy is ending: a journal write that fails is reported, not raised (`ops.record`)."""
        new, old = ops.new, ops.old
        try:
            ops.step("started", strategy=active.strategy, image=new.image,
                     from_version=old.version if old else None)
            if reuse:
                if not ops.force_past_migration:
                    self.schema(ops.config.name).check_image(new.image, await self.readable(new.image))
                await self._switch_back(ops)
            else:
                if not await self.backend.image_exists(new.image):
                    raise DeployFailed(f"image {new.image!r} is not on this Docker host "
                                       "(Turnout never pulls; build or load it first)")
                ops.new_schema = await self.readable(new.image)
                await ops.hook("pre_deploy")
                if await ops.hook("migrate") is not None:
                    self._schema_moved(ops, "migrate")
                # Before the new version gets any traffic: can it read the schema as it now is?
                if not ops.force_past_migration:
                    self.schema(ops.config.name).check_image(new.image, ops.new_schema)
                await STRATEGIES[active.strategy]().run(ops)
                await self._contract(ops, active)
                await ops.hook("post_deploy")
        except (DeployAborted, AnalysisFailed, TurnoutError, Exception) as exc:
            ops.ending = True  # the old release must come back whatever the journal does
            status = ("aborted" if isinstance(exc, DeployAborted)
                      else "rolled_back" if isinstance(exc, AnalysisFailed) else "failed")
            message = _describe(exc)
            if not isinstance(exc, TurnoutError | sqlite3.Error):
                ops.log.exception("deploy.internal_error")
            reason = await self._freeze_reason(ops)
            if reason is not None:
                return await self._freeze(active, ops, reuse, reason, message)
            restore_error = await self._restore(ops, reuse)
            await self._on_failure(ops)
            # An engine going away shows first as a Docker call failing, or as the new version's
            # containers dying (a canary's analysis sees them ejected) and the restore failing after:
            # then say so, rather than blame the version.
            if (_engine_error(exc) or restore_error is not None) and await self._engine_gone(
                    ENGINE_SHUTDOWN_GRACE if restore_error is not None and _engine_error(restore_error)
                    else 0.0):
                status = "failed"
                message = (f"the Docker engine stopped answering during the deploy ({message}); "
                           + (f"{old.version} is started again once the engine is back" if old else
                              "nothing was serving before it"))
            return status, message
        ops.ending = True  # the new release serves: what follows is bookkeeping
        self._promote(ops.config.name, new, old, reuse)
        self._save_state_quietly(ops)
        ops.step("completed", timings=ops.timings)
        return "succeeded", ""

    # ------------------------------------------------------------ hooks and the schema gate
    def _schema_moved(self, ops: Operations, point: str) -> None:
        """Record what a finished migrate/contract hook did to the schema (and, for contract, the
        floor), before anything else happens: a daemon killed next still knows it."""
        result = ops.hook_results[-1]
        if not result.ok:
            return
        name = ops.config.name
        schema = self.schema(name)
        readable = ops.new_schema
        if point == "migrate":
            schema.migrated(ops.deployment_id, readable)
        else:
            before = {d.to_version for d in self.journal.history(name, limit=10_000)
                      if d.status == "succeeded"} | ({ops.old.version} if ops.old else set())
            schema.contracted(ops.deployment_id, ops.new.version, readable, sorted(before))
            ops.contracted = True
        self.journal.set_schema(name, schema.describe())
        ops.step("schema", point=point, current=schema.current,
                 **({"floor": ops.deployment_id} if point == "contract" else {}))

    async def _contract(self, ops: Operations, active: ActiveDeployment) -> None:
        """The contract hook, once the old release stopped and any keep_old window ended."""
        if not ops.hooks_enabled or "contract" not in ops.config.hooks:
            return
        old, new = ops.old, ops.new
        ops.new_schema = await self.readable(new.image)
        if old is not None:
            await _run_all(ops.after_success, raising=True)  # e.g. blue-green stopping the old set now
            ops.after_success.clear()
            keep = ops.config.bluegreen.keep_old if active.strategy == "bluegreen" else 0.0
            if keep > 0:  # blue-green kept the old set warm: the window ends first (promote ends it now)
                ops.step("keep_old_window", version=old.version, seconds=keep)
                await ops.wait_step(keep)
                await ops.drain(ops.route([(new, 100)]))
                await ops.stop(old.containers)
                ops.step("old_stopped", version=old.version, kept_for_rollback=True)
        ops.contract_started = True
        if await ops.hook("contract") is not None:
            self._schema_moved(ops, "contract")

    async def _on_failure(self, ops: Operations) -> None:
        try:
            await ops.hook("on_failure")
        except Exception:  # reported in its step; a failing on_failure hook changes nothing
            ops.log.exception("deploy.on_failure_hook_failed")

    async def _freeze_reason(self, ops: Operations) -> str | None:
        """Why this failure must freeze the deploy instead of rolling back: its contract ran (or began),
        or the old release cannot read the schema as it now is. None: roll back as usual."""
        if ops.signals.forced or ops.force_past_migration:
            return None  # `abort --force` / `rollback --force-past-migration`: back past the floor
        if ops.contracted:
            return (f"the contract hook of {ops.new.version} finished (schema floor, {ops.deployment_id}): "
                    f"{ops.old.version if ops.old else 'the old version'} may not read the schema any more")
        if ops.contract_started:
            return "the contract hook failed: the schema may be partly contracted"
        if ops.old is None:
            return None
        try:
            self.schema(ops.config.name).check_image(ops.old.image, await self.readable(ops.old.image))
        except SchemaRefused as exc:
            return f"rolling back would route {ops.old.version}, and {exc}"
        except TurnoutError:
            return None
        return None

    async def _freeze(self, active: ActiveDeployment, ops: Operations, reuse: bool, reason: str,
                      failure: str) -> tuple[str, str]:
        """What serves keeps serving; the deploy waits for `promote` (keep the new version) or
        `abort --force` (roll back past the floor). The CLI following it exits 3."""
        name, new, old = ops.config.name, ops.new, ops.old
        routed = {p.name: p.weight for p in self.proxy.pools(name).values()}
        if routed.get(new.pool) == 100 or (new.containers and set(routed) == {new.pool}):
            self._promote(name, new, old, reuse)  # recovery routes what serves: the new release
            self._save_state_quietly(ops)
        active.promotable = bool(new.containers)
        active.signals.freeze()
        serving = ", ".join(f"{pool} {w}%" for pool, w in routed.items()) or "nothing"
        active.status, active.message = "frozen", f"{failure}; frozen: {reason}"
        ops.step("frozen", reason=reason, failure=failure, serving=serving)
        ops.log.warning("deploy.frozen", reason=reason, failure=failure)
        await self._on_failure(ops)
        return await self._resolve(active, ops, reuse)

    async def _resolve(self, active: ActiveDeployment, ops: Operations, reuse: bool) -> tuple[str, str]:
        name, new, old = ops.config.name, ops.new, ops.old
        outcome = await active.signals.wait_resolved()
        ops.ending = True
        active.status = "running"
        ops.step("resolved", by="promote" if outcome == "promoted" else "abort --force")
        hooks = [c for c in await self.backend.list(name) if c.pool.startswith(HOOK_POOL_PREFIX)
                 and c.id in self.journal.container_ids(name)]
        await ops.remove(hooks)  # one-off containers kept for the operator to inspect
        if outcome == "promoted":
            await ops.drain(ops.route([(new, 100)]))
            if old is not None and self.releases.get(name) is not new:
                running = [c for c in old.containers if (await self.backend.inspect(c.id)).running]
                await ops.stop(running)
                self._promote(name, new, old, reuse)
            self._save_state_quietly(ops)
            return "succeeded", f"frozen ({active.message}), then promoted: {new.version} serves"
        if self.releases.get(name) is new:  # the freeze had promoted it: the old one comes back
            if old is not None:
                self.releases[name] = old
            else:
                self.releases.pop(name, None)
            self.previous.pop(name, None)
        ops.signals.aborted.clear()
        restore_error = await self._restore(ops, reuse)
        if old is not None:
            self._save_state_quietly(ops)
        message = (f"frozen ({active.message}), then ended by abort --force: "
                   f"{old.version if old else 'nothing'} serves")
        if restore_error is not None:
            return "failed", f"{message}; the restore failed: {restore_error}"
        return "aborted", message

    def refreeze(self, record: Deployment, config: ServiceConfig, new: Release, old: Release | None,
                 reason: str) -> ActiveDeployment:
        """After a restart: a deploy recovery found frozen, or cut inside a hook (never run twice),
        waits again for `promote` or `abort --force` (recovery already routed what served)."""
        active = ActiveDeployment(record.id, record.service, record.strategy, record.to_version,
                                  record.image, EventLog(), Signals(), status="frozen",
                                  message=f"frozen: {reason}", promotable=bool(new.containers))
        self.active[record.service] = active
        ops = Operations(backend=self.backend, proxy=self.proxy, journal=self.journal,
                         deployment_id=record.id, config=config, new=new, old=old, events=active.events,
                         signals=active.signals, extra_labels=self.extra_labels, hooks=False)

        async def wait() -> None:
            started = time.monotonic()
            try:
                ops.step("frozen", reason=reason, recovered=True)
                status, message = await self._resolve(active, ops, reuse=False)
            except Exception as exc:
                ops.log.exception("deploy.internal_error")
                status, message = "failed", f"internal error: {exc!r}"
            await self._finish(active, status, message, ops, started)

        active.task = asyncio.get_running_loop().create_task(wait())
        return active

    async def _engine_gone(self, grace: float) -> bool:
        """Whether the engine stopped answering, within `grace` seconds: one shutting down already
        failed our calls and stopped our containers but may answer a ping for a moment longer."""
        deadline = time.monotonic() + grace
        while await self.backend.ping():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def _switch_back(self, ops: Operations) -> None:
        """Rollback onto kept containers: start them if stopped, one swap, drain; the current set is
        stopped after the rollback reported success (held by the service, as blue-green does)."""
        previous, current = ops.new, ops.old
        assert current is not None
        running = [c for c in previous.containers if (await self.backend.inspect(c.id)).running]
        if len(running) < len(previous.containers):
            await ops.restart(previous)
            ops.step("healthy", version=previous.version, addresses=list(previous.addresses))
        removed = ops.route([(previous, 100)])
        await ops.switched(weights={previous.pool: 100})
        await ops.drain(removed)

        async def stop_current() -> None:  # out of routing and drained: the rollback need not wait for it
            await ops.stop(current.containers)
            ops.step("old_stopped", version=current.version, kept_for_rollback=True)

        ops.after_success.append(stop_current)  # held by the service: a next deploy waits for it

    async def _restore(self, ops: Operations, reuse: bool) -> Exception | None:
        """After a failure: the old release serves again, the new one's containers are gone.
        Returns what made the restore fail (journalled as `restore_failed`), None when it worked."""
        old, new = ops.old, ops.new
        ops.step("restoring", version=old.version if old else None)
        try:
            if old is not None:
                await self._ensure_serving(ops, old)
                removed = ops.route([(old, 100)])
            else:
                removed = ops.route([])
            await ops.drain(removed)
            if reuse:
                await ops.stop([c for c in new.containers if await self._all_exist([c])])
            else:
                await ops.remove(new.containers)
                new.containers = []
            ops.step("restored", version=old.version if old else None)
        except Exception as exc:  # the restore must say what it could not do, not hide it
            ops.log.exception("deploy.restore_failed")
            ops.step("restore_failed", error=str(exc))
            return exc
        return None

    async def _ensure_serving(self, ops: Operations, old: Release) -> None:
        """Make the old release whole again: restart stopped containers, replace removed ones."""
        config = ops.config
        states = []
        for container in old.containers:
            try:
                states.append(await self.backend.inspect(container.id))
            except ContainerNotFound:
                continue  # removed (rolling) or gone; an unreachable engine raises instead of
                # making the old release look empty (the reconcile loop finishes the job later)
        stopped = [c for c in states if not c.running]
        old.containers = [c for c in states if c.running]
        if stopped:
            kept = Release(old.version, old.image, old.pool, stopped)
            await ops.restart(kept)
            old.containers.extend(kept.containers)
        missing = config.replicas - len(old.containers)
        if missing > 0:
            await ops.start(old, missing)

    def _promote(self, service: str, new: Release, old: Release | None, reuse: bool) -> None:
        """The new release serves: remember it, keep the old one for rollback, forget the one before."""
        dropped = self.previous.get(service)
        self.releases[service] = new
        if old is not None:
            self.previous[service] = old
        if dropped is not None and dropped is not new and (old is None or dropped.pool != old.pool):
            self._later(self._remove_quietly(dropped.containers))

    def _save_state(self, service: str) -> None:
        if service not in self.releases:  # a static service: its config only
            self.journal.set_service_state(service, {"config": service_to_dict(self.configs[service])})
            return
        state: dict[str, Any] = {"stable": self.releases[service].describe()}
        if service in self.previous:
            state["previous"] = self.previous[service].describe()
        config = self.configs.get(service)
        if config is not None:
            state["config"] = service_to_dict(config)
        self.journal.set_service_state(service, state)

    def _save_state_quietly(self, ops: Operations) -> None:
        """`_save_state` as a deploy ends: if the journal refuses, the next deploy saves it first."""
        service = ops.config.name
        ops.ending = True
        if not ops.record("service state", self._save_state, service):
            self._unjournalled.setdefault(service, {})["state"] = lambda: self._save_state(service)

    def _begin(self, service: str, strategy: str, version: str, image: str, from_version: str | None,
               options: dict[str, Any]) -> Deployment:
        """Journal a new deploy of `service`, after the writes the journal refused as its last deploy
        ended (it holds one running deploy per service). A journal that still refuses refuses the new
        deploy, saying why, before anything started."""
        pending = self._unjournalled.get(service, {})
        try:
            for key, write in list(pending.items()):
                write()
                del pending[key]
            return self.journal.begin(service, strategy, version, image, from_version, options)
        except sqlite3.Error as exc:
            raise JournalError(f"the journal refused a write ({exc}); nothing was started") from exc

    def _record_end(self, active: ActiveDeployment, result: dict[str, Any]) -> None:
        try:
            self.journal.finish(active.id, active.status, active.message, result=result)
        except DeploymentFinished:
            pass  # the write that seemed to fail had been kept

    async def _finish(self, active: ActiveDeployment, status: str, message: str, ops: Operations,
                      started: float) -> None:
        """The end of every run: record the outcome (best-effort: what the journal refused is logged,
        shown in the result and written before the service's next deploy), tell the followers and
        close their stream, and leave `active` so the service takes the next deploy."""
        ops.ending = True
        result = ops.result()  # requests the proxy failed during the deploy, notes (why the gap was long)
        active.status, active.message = status, _noting(message, ops.journal_errors)
        if not ops.record("finish", self._record_end, active, result):
            pending = self._unjournalled.setdefault(active.service, {})
            pending[active.id] = lambda: self._record_end(active, result)
        message = active.message = _noting(message, ops.journal_errors)
        active.journal_errors = list(ops.journal_errors)
        seconds = round(time.monotonic() - started, 3)
        event = "deploy.finished" if status == "succeeded" else "deploy.failed"
        ops.log.info(event, status=status, message=message, seconds=seconds, timings=ops.timings, **result)
        active.events.emit("finished", status=status, message=message, seconds=seconds,
                           timings=ops.timings, **result,
                           **({"journal_errors": active.journal_errors} if active.journal_errors else {}))
        self.finished[active.service] = active
        self.active.pop(active.service, None)
        await active.events.close()

    async def _retire_warm(self, config: ServiceConfig, old: Release, after: float) -> None:
        await asyncio.sleep(after)
        current = self.releases.get(config.name)
        if current is None or config.name in self.active or self.previous.get(config.name) is not old:
            return
        # Checked and held in one step (nothing awaited in between): a deploy or rollback beginning from
        # here on waits until the old set is stopped, so none routes to containers about to be stopped.
        self._hold(config.name, lambda: self._stop_warm(config, current, old))

    async def _stop_warm(self, config: ServiceConfig, current: Release, old: Release) -> None:
        if self.releases.get(config.name) is not current or self.previous.get(config.name) is not old:
            return  # work held before this one changed what serves
        # The service's routing settings as they are now (rules may have changed since the deploy).
        removed = self.proxy.install(self.configs.get(config.name, config), [current.as_pool(100)],
                                     labels={"stable": current.pool})
        await self.proxy.wait_drained(removed)
        for container in old.containers:
            try:
                await self.backend.stop(container.id, timeout=config.stop_timeout)
            except TurnoutError as exc:
                log.warning("deploy.retire_failed", container=container.short_id, error=str(exc))

    async def _remove_quietly(self, containers: list[Container]) -> None:
        self._removing.update(c.id for c in containers)  # not strays for reconcile() meanwhile
        try:
            for container in containers:
                try:
                    await self.backend.remove(container.id)
                except TurnoutError:
                    pass
        finally:
            self._removing.difference_update(c.id for c in containers)

    def _later(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _hold(self, service: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` in the background, holding the service: a deploy or rollback of it that begins
        meanwhile waits for it (`_run` awaits `_settling`), and so does the reconcile loop. Work held
        before it still running goes first."""
        before = self._settling.get(service)

        async def held() -> None:
            if before is not None:
                await asyncio.wait([before])
            await work()

        self._settling[service] = self._later(held())

    # ------------------------------------------------------------ helpers
    def _config(self, service: str) -> ServiceConfig:
        try:
            return self.configs[service]
        except KeyError:
            raise UsageError(f"unknown service {service!r}") from None

    def _image_of_version(self, service: str, version: str) -> str:
        for record in self.journal.history(service, limit=200):
            if record.to_version == version and record.status == "succeeded":
                return record.image
        raise UsageError(f"{service!r} never ran version {version!r} successfully; nothing to roll back to")

    def status(self, service: str) -> dict[str, Any]:
        config = self._config(service)
        release = self.releases.get(service)
        previous = self.previous.get(service)
        return {
            "service": service,
            "strategy": config.strategy,
            "stable": release.describe() if release else None,
            "previous": previous.describe() if previous else None,
            "deployment": self.active[service].describe() if service in self.active else None,
            "pools": {name: {"weight": p.weight, "upstreams": list(p.upstreams)}
                      for name, p in self.proxy.pools(service).items()},
        }

    async def close(self) -> None:
        for active in list(self.active.values()):
            if active.task is not None:
                active.task.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*[a.task for a in self.active.values() if a.task], *self._background,
                             return_exceptions=True)



def _lasting(config: ServiceConfig, known: ServiceConfig | None) -> ServiceConfig:
    """What to keep of the service after a deploy with `config`: its per-deploy values from the
    service's own config (`known`), or the defaults for a service this deploy's flags created."""
    base = known or ServiceConfig(config.name)
    return replace(config, **{key: getattr(base, key) for key in PER_DEPLOY})


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TurnoutError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return f"the journal refused a write ({exc}), so the deploy stopped"
    return f"internal error: {exc!r}"


def _noting(message: str, journal_errors: list[str]) -> str:
    if not journal_errors:
        return message
    note = f"the journal could not record: {'; '.join(journal_errors)}"
    return f"{message}; {note}" if message else note


def check_version(version: Any) -> str:
    """A deploy's version (`--version`, the API's `version`, or the image tag) names its pool, which
    ends up in cookies, headers, labels and /metrics: letters, digits and `_ . -` only, matched whole."""
    if (not isinstance(version, str) or not NAME_RE.fullmatch(version)
            or len(version) > MAX_VERSION):
        raise ConfigError("version", f"{version!r} is not a valid version: 1-{MAX_VERSION} letters, digits, "
                          "'_', '.' or '-', starting with a letter or digit (give another with --version)")
    return version


async def _run_all(steps: list[Any], raising: bool = False) -> None:
    for step in steps:
        try:
            await step()
        except TurnoutError as exc:
            if raising:
                raise
            log.warning("deploy.after_success_failed", error=str(exc))


def _engine_error(exc: BaseException) -> bool:
    """Whether a Docker call failed somewhere in `exc`'s causes (not a container's own failure or a
    missing container/image): then the engine itself may be gone."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DockerError) and not isinstance(seen, ContainerFailed | ContainerNotFound
                                                             | ImageNotFound):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
