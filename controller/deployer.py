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

from proxy.specs import NAME_RE

from .config.model import ConfigError, ServiceConfig
from .config.service_state import service_to_dict
from .docker_backend import Container, DockerBackend
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
from .journal import Deployment, DeploymentFinished, Journal, JournalError
from .operations import STOP_TIMEOUT, Operations
from .proxy_control import ProxyControl
from .release import Release, version_of
from .signals import Signals
from .strategies import STRATEGIES

log = structlog.get_logger("turnout.controller")

ENGINE_SHUTDOWN_GRACE = 3.0  # seconds a failed restore waits for a failing engine to stop answering
# What a deploy's options change for that deploy only (`--preview`, `--keep-old`, `--steps`,
# `--max-surge`, `--verify`, ...): afterwards the service keeps the values its config gives. (The image
# and replicas a deploy asks for describe what then runs: those stay.)
PER_DEPLOY = ("canary", "rolling", "bluegreen", "verify", "hold_timeout", "drain_timeout")
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

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "service": self.service, "strategy": self.strategy,
                "version": self.version, "image": self.image, "status": self.status,
                "message": self.message, "paused": self.signals.paused,
                **({"journal_errors": self.journal_errors} if self.journal_errors else {})}


class Deployer:
    def __init__(self, backend: DockerBackend, proxy: ProxyControl, journal: Journal,
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

    # ------------------------------------------------------------ commands
    def deploy(self, config: ServiceConfig, image: str, strategy: str | None = None,
               version: str | None = None) -> ActiveDeployment:
        """Start a deployment in the background; follow it through `.events`."""
        if config.name in self.active:
            raise DeployInProgress(config.name, self.active[config.name].id)
        if not config.managed:
            raise UsageError(f"service {config.name!r} has static upstreams; there is nothing to deploy")
        strategy = strategy or config.strategy
        if strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {strategy!r} (choose from {', '.join(STRATEGIES)})")
        old = self.releases.get(config.name)
        version = check_version(version or version_of(image))
        pool = version if old is None or old.pool != version else f"{version}-{int(time.time()) % 100000}"
        # `verify`: seconds of post-switch verification this deploy owes (recovery reads it).
        verify = config.verify if old is not None and STRATEGIES[strategy].verifies else 0.0
        record = self._begin(config.name, strategy, version, image,
                             old.version if old else None, {"pool": pool, "verify": verify})
        self.configs[config.name] = _lasting(config, self.configs.get(config.name))
        active = ActiveDeployment(record.id, config.name, strategy, version, image, EventLog(), Signals())
        self.active[config.name] = active
        new = Release(version, image, pool)
        active.task = asyncio.get_running_loop().create_task(self._run(active, config, new, old))
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

    async def rollback(self, service: str, to_version: str | None = None) -> ActiveDeployment:
        """Put the previous release back: reuse its kept containers when present, else redeploy it."""
        if service in self.active:
            self.active[service].signals.abort("rolled back by operator")
            task = self.active[service].task
            if task is not None:
                await asyncio.wait([task])
            return self.finished[service]
        config = self._config(service)
        previous = self.previous.get(service)
        if to_version is not None and (previous is None or previous.version != to_version):
            image = self._image_of_version(service, to_version)
            return self.deploy(config, image, "bluegreen", to_version)
        if previous is None:
            raise UsageError(f"{service!r} has no previous release to roll back to; "
                             "use --to VERSION or deploy an image")
        if not await self._all_exist(previous.containers):
            # Its containers were replaced (rolling, canary): bring the version back side by side.
            return self.deploy(config, previous.image, "bluegreen", previous.version)
        current = self.releases[service]
        record = self._begin(service, "rollback", previous.version, previous.image,
                             current.version, {"pool": previous.pool})
        active = ActiveDeployment(record.id, service, "rollback", previous.version, previous.image,
                                  EventLog(), Signals())
        self.active[service] = active
        active.task = asyncio.get_running_loop().create_task(
            self._run(active, config, previous, current, reuse=True))
        return active

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
                   old: Release | None, reuse: bool = False) -> None:
        ops = Operations(backend=self.backend, proxy=self.proxy, journal=self.journal,
                         deployment_id=active.id, config=config, new=new, old=old,
                         events=active.events, signals=active.signals, extra_labels=self.extra_labels)
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
                and active.strategy == "bluegreen"):
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
                await self._switch_back(ops)
            else:
                if not await self.backend.image_exists(new.image):
                    raise DeployFailed(f"image {new.image!r} is not on this Docker host "
                                       "(Turnout never pulls; build or load it first)")
                await STRATEGIES[active.strategy]().run(ops)
        except (DeployAborted, AnalysisFailed, TurnoutError, Exception) as exc:
            ops.ending = True  # the old release must come back whatever the journal does
            status = ("aborted" if isinstance(exc, DeployAborted)
                      else "rolled_back" if isinstance(exc, AnalysisFailed) else "failed")
            message = _describe(exc)
            if not isinstance(exc, TurnoutError | sqlite3.Error):
                ops.log.exception("deploy.internal_error")
            restore_error = await self._restore(ops, reuse)
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

    def _record_end(self, active: ActiveDeployment) -> None:
        try:
            self.journal.finish(active.id, active.status, active.message)
        except DeploymentFinished:
            pass  # the write that seemed to fail had been kept

    async def _finish(self, active: ActiveDeployment, status: str, message: str, ops: Operations,
                      started: float) -> None:
        """The end of every run: record the outcome (best-effort: what the journal refused is logged,
        shown in the result and written before the service's next deploy), tell the followers and
        close their stream, and leave `active` so the service takes the next deploy."""
        ops.ending = True
        active.status, active.message = status, _noting(message, ops.journal_errors)
        if not ops.record("finish", self._record_end, active):
            self._unjournalled.setdefault(active.service, {})[active.id] = lambda: self._record_end(active)
        message = active.message = _noting(message, ops.journal_errors)
        active.journal_errors = list(ops.journal_errors)
        seconds = round(time.monotonic() - started, 3)
        event = "deploy.finished" if status == "succeeded" else "deploy.failed"
        ops.log.info(event, status=status, message=message, seconds=seconds, timings=ops.timings)
        active.events.emit("finished", status=status, message=message, seconds=seconds,
                           timings=ops.timings,
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
        removed = self.proxy.install(config, [current.as_pool(100)],
                                     labels={"stable": current.pool})
        await self.proxy.wait_drained(removed)
        for container in old.containers:
            try:
                await self.backend.stop(container.id, timeout=STOP_TIMEOUT)
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


async def _run_all(steps: list[Any]) -> None:
    for step in steps:
        try:
            await step()
        except TurnoutError as exc:
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
