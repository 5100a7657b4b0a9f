"""After a restart of `turnout serve`: rebuild routing from what Docker runs and the journal holds.

For each service: the journal's stable release is re-checked for health and routed again; a deploy
that was interrupted is finished forward if its switch had completed (and passed the post-switch
verification it owed), and rolled back otherwise — unless it had frozen, or the daemon died inside one
of its hooks: a hook is never run twice, so that deploy is frozen (what served keeps serving) and waits
for `promote` or `abort --force`; an interrupted repair is simply redone; containers
the journal recorded that no release holds are removed. A container with our labels that the journal
never recorded (made by hand, or by another daemon) is neither routed nor removed: it is reported, and
removed only with `turnout serve --prune-strays`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import structlog

from .config.model import Config, ServiceConfig
from .config.service_state import service_from_dict
from .deployer import Deployer
from .engine.base import Container
from .errors import TurnoutError
from .hooks import HOOK_POOL_PREFIX
from .journal import Deployment
from .readiness import wait_healthy
from .release import Release
from .schema import frozen_reason

log = structlog.get_logger("turnout.controller.recovery")


async def recover(deployer: Deployer, config: Config) -> dict[str, str]:
    """Returns what was done per service (for the log and for tests)."""
    journal, backend = deployer.journal, deployer.backend
    containers = await backend.list()
    recorded = journal.container_ids()
    journal.forget_containers({c.id for c in containers})  # records of containers gone for good
    strangers = [c for c in containers if c.id not in recorded]
    if strangers and deployer.prune_strays:
        await _remove(deployer, strangers)
    else:
        deployer._report_strangers(strangers)
    by_service: dict[str, list[Container]] = defaultdict(list)
    for container in containers:
        if container.id in recorded:
            by_service[container.service].append(container)
    states = journal.services()
    interrupted = {d.service: d for d in journal.unfinished()}
    outcome: dict[str, str] = {}
    frozen: list[tuple[ServiceConfig, Deployment, Release, str, Release | None]] = []
    for service in sorted(set(states) | set(by_service) | set(interrupted)):
        state = states.get(service) or {}
        service_config = config.services.get(service) or _config_from_state(state, deployer, service)
        if service_config is None:
            outcome[service] = "unknown service: removed its containers"
            await _remove(deployer, by_service.get(service, []))
            continue
        deployer.configs[service] = service_config
        stable = _release(state.get("stable"))
        previous = _release(state.get("previous"))
        record = interrupted.get(service)
        held: tuple[Deployment, Release, str] | None = None  # a frozen deploy: (record, new, reason)
        if record is not None:
            journal_steps = journal.steps(record.id)
            steps = [s.name for s in journal_steps]
            options = record.options or {}
            pool = options.get("pool", record.to_version)
            # A switch is final once the new release served 100% and, when the deploy owed a
            # post-switch verification, passed it: finishing an unverified one forward would keep a
            # version that may answer 5xx, which the verification was there to catch.
            unverified = options.get("verify", 0) > 0 and "verified" not in steps
            reason = frozen_reason([(s.name, s.detail) for s in journal_steps])
            if reason is not None:
                # Frozen, or cut inside a hook (never run twice): what served keeps serving (the new
                # release once switched), and the deploy waits again for promote or abort --force.
                new = Release(record.to_version, record.image, pool)
                if "switched" in steps and "restoring" not in steps:
                    if stable is None or stable.pool != pool:
                        previous, stable = stable, new
                    new = stable
                held = (record, new, reason)
                outcome[service] = f"deploy {record.id} frozen: {reason}"
            elif "switched" in steps and "restoring" not in steps and not unverified:
                # The new release already served 100%: finishing forward loses nothing. The deployer
                # saves the promoted state before its last step: then the journal already says so.
                if stable is None or stable.pool != pool:
                    previous, stable = stable, Release(record.to_version, record.image, pool)
                journal.finish(record.id, "succeeded", "completed after a daemon restart")
                outcome[service] = f"interrupted deploy {record.id} finished forward"
            elif "switched" in steps and "restoring" not in steps:
                journal.finish(record.id, "rolled_back", "interrupted by a daemon restart before the "
                               "post-switch verification passed; rolled back")
                outcome[service] = f"interrupted deploy {record.id} rolled back (unverified)"
            elif record.strategy == "repair":  # nothing to roll back: the checks below redo its work
                journal.finish(record.id, "interrupted",
                               "interrupted by a daemon restart; recovery makes the release whole again")
                outcome[service] = f"interrupted repair {record.id} taken over by recovery"
            else:
                journal.finish(record.id, "rolled_back", "interrupted by a daemon restart; rolled back")
                outcome[service] = f"interrupted deploy {record.id} rolled back"
        found = by_service.get(service, [])
        known = {r.pool: r for r in (stable, previous, held[1] if held else None) if r is not None}
        for release in known.values():
            release.containers = [c for c in found if c.pool == release.pool]
        # A frozen deploy's one-off hook containers are left for the operator (removed on resolve).
        await _remove(deployer, [c for c in found if c.pool not in known
                                 and not (held and c.pool.startswith(HOOK_POOL_PREFIX))])
        if held is not None:
            frozen.append((service_config, *held, stable if held[1] is not stable else previous))
        if not service_config.managed:  # a static service apply added: routed from its saved config
            deployer.proxy.install_static(service_config)
        if stable is None:
            outcome.setdefault(service, "nothing to route")
            continue
        healthy = await _healthy(deployer, service_config, stable)
        stable.containers = healthy
        deployer.releases[service] = stable
        if previous is not None:
            deployer.previous[service] = previous
        deployer.proxy.install(service_config, [stable.as_pool(100)], labels={"stable": stable.pool})
        missing = service_config.replicas - len(healthy) if service_config.managed else 0
        if missing > 0:  # e.g. a rolling update was cut after removing old containers
            if await deployer.repair(service_config, stable, missing):
                deployer.proxy.install(service_config, [stable.as_pool(100)], labels={"stable": stable.pool})
        if previous is not None:
            for container in previous.containers:
                if container.running:
                    await backend.stop(container.id, timeout=service_config.stop_timeout)
        deployer._save_state(service)
        outcome.setdefault(service, f"routed {stable.version} on {len(stable.containers)} container(s)")
        log.info("recovery.service", service=service, outcome=outcome[service])
    for service_config, record, new, reason, old in frozen:
        deployer.refreeze(record, service_config, new, old, reason)
        log.warning("recovery.frozen", service=service_config.name, deployment_id=record.id, reason=reason)
    return outcome


async def _healthy(deployer: Deployer, config: ServiceConfig, release: Release) -> list[Container]:
    """Start stopped containers of the release again; keep only those that pass a health check."""
    healthy = []
    for container in release.containers:
        try:
            if not container.running:
                container = await deployer.backend.restart(container.id)
            await wait_healthy(deployer.backend, container.id, container.address, path=config.health.path,
                               timeout=config.health.start_timeout, interval=0.2)
            healthy.append(await deployer.backend.inspect(container.id))
        except TurnoutError as exc:
            log.warning("recovery.unhealthy", service=config.name, container=container.short_id,
                        error=str(exc))
    return healthy


async def _remove(deployer: Deployer, containers: list[Container]) -> None:
    for container in containers:
        try:
            await deployer.backend.remove(container.id)
            log.info("recovery.removed_unknown", container=container.short_id, service=container.service,
                     pool=container.pool)
        except TurnoutError:
            pass


def _release(data: dict[str, Any] | None) -> Release | None:
    if not data:
        return None
    return Release(data["version"], data["image"], data["pool"])


def _config_from_state(state: dict[str, Any], deployer: Deployer, service: str) -> ServiceConfig | None:
    """The config saved with the service's state, read by the config reader (a bad row is a ConfigError
    naming the journal, the service and the key)."""
    data = state.get("config")
    source = f"{deployer.journal.path} (saved config of service {service!r})"
    return service_from_dict(data, source) if data else None

