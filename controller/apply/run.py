"""Carrying out `turnout apply`: gather the live state and the desired spec hashes, plan (plan.py), and
make each change through the deployer, so every one is journalled like a deploy and one service never
has two changes at once.

Refusals come before anything changed: a file with no services (unless `allow_empty`), an image that is
not on the host, a deploy in progress (unless `wait`), another apply running.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ..config.model import ConfigError, ServiceConfig
from ..config.reader import check_host_hooks
from ..deployer import ActiveDeployment, Deployer, check_version
from ..errors import DeployInProgress, ImageNotFound, UsageError
from ..events import EventLog
from ..labels import SPEC_HASH
from ..operations import Operations
from ..release import version_of
from .plan import NEW, PRUNE, RELEASE, ROUTING, SCALE, Action, Desired, Live, Plan, plan
from .spec import spec_hash

ORIGIN = "apply"  # journalled as the origin of the deploys apply starts (Journal.created)

log = structlog.get_logger("turnout.apply")


class ApplyBusy(UsageError):
    """Another apply is running (one at a time: two would plan against the same live state)."""

    def __init__(self) -> None:
        super().__init__("another `turnout apply` is running; wait for it (or use --wait)")


@dataclass(frozen=True)
class ApplyOptions:
    dry_run: bool = False
    prune: bool = False
    allow_empty: bool = False
    wait: bool = False  # wait for deploys in progress (and another apply) instead of refusing


@dataclass
class Outcome:
    action: Action
    status: str = "unchanged"  # unchanged, running, succeeded, failed, ...
    message: str = ""
    deployment: ActiveDeployment | None = None

    def describe(self) -> dict[str, Any]:
        return {**self.action.describe(), "status": self.status, "message": self.message,
                **({"deployment": self.deployment.id} if self.deployment else {})}


@dataclass
class ApplyRun:
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    events: EventLog = field(default_factory=EventLog)

    @property
    def succeeded(self) -> bool:
        return all(o.status in ("unchanged", "succeeded") for o in self.outcomes)

    def describe(self) -> dict[str, Any]:
        return {**self.plan.describe(), "results": [o.describe() for o in self.outcomes],
                "succeeded": self.succeeded}


class Applier:
    """Plans and applies files against one deployer (the daemon keeps one: the admin API and
    `serve --watch` share its lock)."""

    def __init__(self, deployer: Deployer) -> None:
        self.deployer = deployer
        self._lock = asyncio.Lock()
        self._following: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ planning
    async def plan(self, services: Mapping[str, ServiceConfig], options: ApplyOptions,
                   source: Path | str | None = None) -> Plan:
        """The plan for `services` now; refuses what apply must not start (see the module)."""
        if not services and not options.allow_empty:
            raise UsageError(f"{source or 'the file'}: no services: applying it would change nothing, or "
                             "with --prune remove every service apply created; say --allow-empty if meant")
        for name, config in services.items():
            if not config.managed:
                continue
            if not config.image:
                raise ConfigError(f"services.{name}.image", "required by apply (the release to run)", source)
            try:
                check_version(version_of(config.image))
            except ConfigError as exc:
                raise ConfigError(f"services.{name}.image", f"its tag names the version: {exc.problem}",
                                  source) from None
        if not self.deployer.allow_host_hooks:
            check_host_hooks(services.values(), f"{source or 'the file'} (the daemon's [proxy] does not "
                             "allow them)")
        await self._ready(options.wait)
        desired = {name: Desired(config, await self._spec_hash(config, source))
                   for name, config in services.items()}
        await self._ready(options.wait)  # looking images up awaited: a deploy may have begun
        return plan(desired, self._live(), prune=options.prune)

    async def _spec_hash(self, config: ServiceConfig, source: Path | str | None) -> str | None:
        if not config.managed:
            return None
        assert config.image is not None
        try:
            return spec_hash(config, await self.deployer.backend.image_id(config.image))
        except ImageNotFound:
            raise ConfigError(f"services.{config.name}.image", f"image {config.image!r} is not on this "
                              "Docker host (Turnout never pulls; build or load it first)", source) from None

    async def _ready(self, wait: bool) -> None:
        """No deploy may run while apply plans (the daemon's own repairs are short: waited for)."""
        while True:
            running = [a for a in self.deployer.active.values() if a.task is not None]
            if not running:
                return
            mine = [a for a in running if a.strategy == "repair"]
            if not wait and len(mine) < len(running):
                other = next(a for a in running if a.strategy != "repair")
                raise DeployInProgress(other.service, other.id)
            await asyncio.wait([a.task for a in running if a.task is not None])

    def _live(self) -> dict[str, Live]:
        deployer = self.deployer
        live = {}
        for name, config in deployer.configs.items():
            release = deployer.releases.get(name)
            created = deployer.journal.created(name)
            by_apply = created is not None and created.options.get("origin") == ORIGIN
            if release is None:
                live[name] = Live(config, by_apply=by_apply)
                continue
            hashes = {c.labels.get(SPEC_HASH) for c in release.containers}
            live[name] = Live(config, release.version, release.image,
                              hashes.pop() if len(hashes) == 1 else None, by_apply)
        return live

    # ------------------------------------------------------------ applying
    async def apply(self, services: Mapping[str, ServiceConfig], options: ApplyOptions,
                    source: Path | str | None = None) -> ApplyRun:
        """Plan, then start every change; returns at once (follow `run.events`, or `await finish(run)`)."""
        if self._lock.locked() and not options.wait:
            raise ApplyBusy()
        await self._lock.acquire()
        try:
            the_plan = await self.plan(services, options, source)
            run = ApplyRun(the_plan)
            run.events.emit("plan", **the_plan.describe())
            if options.dry_run:
                await run.events.close()
                self._lock.release()
                return run
            for action in the_plan.actions:
                run.outcomes.append(self._start(action))
        except BaseException:
            if self._lock.locked():
                self._lock.release()
            raise
        task = asyncio.get_running_loop().create_task(self._follow(run))
        self._following.add(task)  # a reference until done: the loop keeps only weak ones
        task.add_done_callback(self._following.discard)
        return run

    def _start(self, action: Action) -> Outcome:
        deployer, config = self.deployer, action.config
        outcome = Outcome(action)
        if action.action in (NEW, RELEASE) and config is not None and config.managed:
            assert config.image is not None
            outcome.deployment = deployer.deploy(config, config.image, origin=ORIGIN)
            deployer.configs[config.name] = config  # the file's values last (not the previous ones)
        elif action.action in (NEW, ROUTING) and config is not None:
            outcome.deployment = deployer.change(config, "routing", reroute(deployer, config), ORIGIN)
        elif action.action == SCALE and config is not None:
            outcome.deployment = deployer.change(config, "scale", _rescale(deployer, config), ORIGIN)
        elif action.action == PRUNE:
            outcome.deployment = deployer.change(deployer.configs[action.service], "prune",
                                                 _prune(deployer, action.service), ORIGIN)
        if outcome.deployment is not None:
            outcome.status = "running"
        return outcome

    async def _follow(self, run: ApplyRun) -> None:
        """Relay each change's events (tagged with its service), then the results."""
        try:
            relays = [self._relay(run.events, o) for o in run.outcomes if o.deployment is not None]
            for outcome, failed in zip([o for o in run.outcomes if o.deployment is not None],
                                       await asyncio.gather(*relays, return_exceptions=True), strict=True):
                if isinstance(failed, Exception):  # the change itself goes on in the deployer
                    log.error("apply.relay_failed", service=outcome.action.service, error=repr(failed))
                    outcome.status, outcome.message = "unknown", f"internal error following it: {failed!r}"
            run.events.emit("applied", **run.describe())
            log.info("apply.finished", succeeded=run.succeeded,
                     results={o.action.service: o.status for o in run.outcomes})
        finally:
            await run.events.close()
            self._lock.release()

    async def _relay(self, events: EventLog, outcome: Outcome) -> None:
        active = outcome.deployment
        assert active is not None
        async for event in active.events.follow():
            events.emit("service", service=active.service, deployment=active.id,
                        of={k: v for k, v in event.items() if k != "time"})
            if event.get("event") == "finished":
                outcome.status, outcome.message = event.get("status", "failed"), event.get("message", "")
            elif event.get("step") == "frozen":  # it waits for promote or abort --force: apply ends here
                outcome.status, outcome.message = "frozen", active.message
                return
        if outcome.status == "running":  # its stream closed without a result
            outcome.status, outcome.message = active.status, active.message


_APPLIERS: weakref.WeakKeyDictionary[Deployer, Applier] = weakref.WeakKeyDictionary()


def applier_for(deployer: Deployer) -> Applier:
    """The one Applier of a deployer (its admin APIs and `serve --watch` share its lock)."""
    if deployer not in _APPLIERS:
        _APPLIERS[deployer] = Applier(deployer)
    return _APPLIERS[deployer]


async def finish(run: ApplyRun) -> ApplyRun:
    """Wait until every change of `run` ended."""
    async for _ in run.events.follow():
        pass
    return run


# ---------------------------------------------------------------- the changes that are not deploys
def reroute(deployer: Deployer, config: ServiceConfig) -> Any:
    """The work of a change that only re-installs routing (apply's and reload's settings changes)."""
    async def work(ops: Operations) -> str:
        deployer.configs[config.name] = config
        if not config.managed:
            deployer.proxy.install_static(config)
            return f"routed to {', '.join(config.upstreams)}"
        spec = deployer.proxy.router.specs.get(config.name)
        pools = list(deployer.proxy.pools(config.name).values())
        await ops.drain(deployer.proxy.install(config, pools, labels=spec.labels if spec else None))
        ops.step("routed", weights={p.name: p.weight for p in pools})
        return "settings changed; no container touched"
    return work


def _rescale(deployer: Deployer, config: ServiceConfig) -> Any:
    async def work(ops: Operations) -> str:
        release = deployer.releases[config.name]
        before = len(release.containers)
        ops.config = config
        if config.replicas > before:
            await ops.start(release, config.replicas - before)  # all or nothing
            ops.route([(release, 100)])
        elif config.replicas < before:
            await ops.retire(release, release.containers[config.replicas:], lambda: [(release, 100)],
                             remove=True)
        else:
            ops.route([(release, 100)])
        ops.step("scaled", version=release.version, replicas=config.replicas, before=before)
        deployer.configs[config.name] = config
        return f"{release.version}: {before} -> {config.replicas} container(s)"
    return work


def _prune(deployer: Deployer, service: str) -> Any:
    async def work(ops: Operations) -> str:
        release = deployer.releases.get(service)
        if service in deployer.proxy.router.specs:
            await ops.drain(deployer.proxy.router.remove_service(service,
                                                                 drain_timeout=ops.config.drain_timeout))
        ops.step("unrouted")
        recorded = deployer.journal.container_ids(service)
        containers = [c for c in await deployer.backend.list(service) if c.id in recorded]
        await ops.remove(containers)
        ops.step("removed", containers=[c.short_id for c in containers])
        deployer.forget(service)
        return f"pruned{' ' + release.version if release else ''}: {len(containers)} container(s) removed"
    return work


