"""The router owns the desired routing state and the effective snapshot derived from it.

Every mutation (set a service, change weights, pause, a health transition) rebuilds the snapshot and
installs it with one assignment, then wakes requests held for lack of an upstream. Upstreams that left the
table are returned to the caller, who drains them (`drain`) before stopping what is behind them.

The swap path is kept lean because the data plane shares its event loop: a change to one service rebuilds
only that service (the others' immutable `Service` objects are reused), and what correctness does not need
at the instant of the swap (the `table.changed` log line, the listeners) runs from `loop.call_soon` right
after it, so the next client request is routed before any of that work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import replace

import structlog

from .errors import UnknownService, ValidationError
from .metrics import Metrics
from .mirror import Mirror
from .specs import PoolSpec, RuleSpec, ServiceSpec
from .table import RoutingTable, build_table
from .upstream import DrainResult, Health, Upstream

log = structlog.get_logger("turnout.proxy.router")

TableListener = Callable[[RoutingTable], None]


class Router:
    def __init__(self, metrics: Metrics | None = None, hold_timeout: float = 10.0,
                 drain_timeout: float = 30.0) -> None:
        self.metrics = metrics or Metrics()
        self.hold_timeout = hold_timeout
        self.drain_timeout = drain_timeout
        self.specs: dict[str, ServiceSpec] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.table = RoutingTable(())
        self.generation = 0  # bumped on every swap; lets observers and tests see a change landed
        self.draining: dict[str, Upstream] = {}
        self._listeners: list[TableListener] = []
        self._changed: asyncio.Future[None] | None = None
        self._drains: dict[Upstream, asyncio.Task[DrainResult]] = {}
        self.mirrors: dict[str, Mirror] = {}  # shadow traffic per service, across swaps (proxy/mirror.py)

    # ------------------------------------------------------------------ reading
    def service_spec(self, name: str) -> ServiceSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownService(name) from None

    def subscribe(self, listener: TableListener) -> None:
        """Call `listener(table)` after every swap, in swap order, each with that swap's table.

        With a running loop the call comes from `loop.call_soon` just after the swap, not inside the
        mutation; without one (unit tests of the table) it is immediate."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ mutations
    def set_service(self, spec: ServiceSpec, drain_timeout: float | None = None) -> list[Upstream]:
        """Install or replace a service; returns the upstreams that left routing.

        Those start draining at once (in-flight requests get `drain_timeout`, default the router's);
        `await wait_drained(removed)` before stopping what is behind them."""
        for other in self.specs.values():
            if other.name != spec.name and other.path_prefix == spec.path_prefix and (
                set(other.hosts) & set(spec.hosts) or (not other.hosts and not spec.hosts)
            ):
                raise ValidationError("hosts", f"same host and path prefix as service {other.name!r}")
        return self._install_one(spec, reason="service.set", drain_timeout=drain_timeout)

    def remove_service(self, name: str, drain_timeout: float | None = None) -> list[Upstream]:
        self.service_spec(name)
        specs = {k: v for k, v in self.specs.items() if k != name}
        return self._install(specs, reason="service.removed", drain_timeout=drain_timeout, changed=name)

    def set_weights(self, name: str, weights: dict[str, int],
                    drain_timeout: float | None = None) -> list[Upstream]:
        """Change pool weights of a service in one swap; pools not named keep their weight."""
        spec = self.service_spec(name)
        known = {p.name for p in spec.pools}
        for pool, weight in weights.items():
            if pool not in known:
                raise ValidationError(f"weights.{pool}", f"service {name!r} has no such pool")
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1_000_000:
                raise ValidationError(f"weights.{pool}", "must be an integer 0-1000000")
        pools = tuple(PoolSpec(p.name, weights.get(p.name, p.weight), p.upstreams) for p in spec.pools)
        # Same name, hosts and prefix: no route conflict to check again.
        return self._install_one(_replace(spec, pools=pools), reason="weights", drain_timeout=drain_timeout)

    def set_state(self, name: str, state: str) -> None:
        """active / paused (requests are held) / stopped (maintenance answer)."""
        spec = self.service_spec(name)
        if state not in ("active", "paused", "stopped"):
            raise ValidationError("state", "must be active, paused or stopped")
        self._install_one(_replace(spec, state=state), reason="state")

    def set_rules(self, name: str, rules: tuple[RuleSpec, ...]) -> None:
        """Replace the service's routing rules (validated `RuleSpec`s) in one swap."""
        spec = self.service_spec(name)
        self._install_one(_replace(spec, rules=tuple(rules)), reason="rules")

    def set_health(self, upstream: Upstream, health: Health) -> None:
        """A health transition: rebuild the snapshot so the hot path never filters."""
        if upstream.health is health:
            return
        previous, upstream.health = upstream.health, health
        log.info("upstream.health_changed", upstream=upstream.address, health=health.value,
                 previous=previous.value)
        if self.upstreams.get(upstream.address) is upstream:
            self._install(dict(self.specs), reason="health", upstream=upstream.address)

    # ------------------------------------------------------------------ hold and drain
    async def wait_for_change(self, timeout: float) -> bool:
        """Wait until the next swap (True) or `timeout` (False). Used by held requests."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)
            return True
        except TimeoutError:
            return False

    async def wait_drained(self, upstreams: Iterable[Upstream]) -> list[DrainResult]:
        """Wait until these removed upstreams finished draining; returns what each one saw."""
        tasks = [self._drains[u] for u in upstreams if u in self._drains]
        return list(await asyncio.gather(*(asyncio.shield(t) for t in tasks)))

    def _start_drain(self, upstream: Upstream, timeout: float) -> None:
        upstream.draining = True  # connections released from now on are closed, not pooled
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests of the table): nothing can be in flight
            return
        self.draining[upstream.address] = upstream
        task = loop.create_task(upstream.drain(timeout))
        self._drains[upstream] = task
        task.add_done_callback(lambda t, u=upstream: self._drain_done(u, t))

    def _drain_done(self, upstream: Upstream, task: asyncio.Task[DrainResult]) -> None:
        if self.draining.get(upstream.address) is upstream:
            del self.draining[upstream.address]
        if task.cancelled():
            return
        result = task.result()
        self.metrics.drain_aborted += result.aborted
        self.metrics.drain_replayed += result.replayed
        log.info("upstream.drained", upstream=result.address, completed=result.completed,
                 aborted=result.aborted, replayed=result.replayed, seconds=round(result.seconds, 3))
        # Keep the finished task a little so wait_drained() right after still finds it.
        asyncio.get_running_loop().call_later(60, self._drains.pop, upstream, None)

    # ------------------------------------------------------------------ internals
    def _install_one(self, spec: ServiceSpec, reason: str,
                     drain_timeout: float | None = None) -> list[Upstream]:
        specs = dict(self.specs)
        specs[spec.name] = spec
        return self._install(specs, reason=reason, drain_timeout=drain_timeout, changed=spec.name)

    def _install(self, specs: dict[str, ServiceSpec], reason: str, drain_timeout: float | None = None,
                 changed: str | None = None, **context: str) -> list[Upstream]:
        """Build the snapshot for `specs` and swap it in. `changed` names the one service that differs
        from the current specs (None: anything may differ, e.g. a health transition)."""
        before = self.specs.get(changed) if changed is not None else None
        after = specs.get(changed) if changed is not None else None
        if before is not None and after is not None and before.upstream_addresses == after.upstream_addresses:
            upstreams, removed, added = self.upstreams, [], []  # weights or state only: the same upstreams
        else:
            wanted = {address for spec in specs.values() for address in spec.upstream_addresses}
            upstreams = {a: u for a, u in self.upstreams.items() if a in wanted}
            added = sorted(wanted - upstreams.keys())
            for address in added:
                upstreams[address] = Upstream(address)
            removed = [u for a, u in self.upstreams.items() if a not in wanted]
        table = self._build(specs, upstreams, changed)
        # The swap: three assignments with no await between them, so no request sees a mix.
        self.specs, self.upstreams, self.table = specs, upstreams, table
        self.generation += 1
        for upstream in removed:
            self._start_drain(upstream, self.drain_timeout if drain_timeout is None else drain_timeout)
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)  # held requests: their wake-ups are queued first
        if changed is not None:
            context = {"service": changed, **context}
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (unit tests of the table): nothing is waiting to be routed
            self._after_swap(table, self.generation, reason, added, removed, context)
        else:
            loop.call_soon(self._after_swap, table, self.generation, reason, added, removed, context)
        return removed

    def _build(self, specs: dict[str, ServiceSpec], upstreams: dict[str, Upstream],
               changed: str | None) -> RoutingTable:
        if changed is None:
            return build_table(specs, upstreams, self.metrics, self.hold_timeout, self.mirrors)
        # The other services have the same spec, the same upstream objects and no health change since
        # their Service was built (a health change rebuilds everything): keep their Service objects.
        fresh = build_table({changed: specs[changed]} if changed in specs else {}, upstreams, self.metrics,
                            self.hold_timeout, self.mirrors).services
        current = self.table.services
        return RoutingTable(tuple(fresh[n] if n == changed else current[n] for n in specs))

    def _after_swap(self, table: RoutingTable, generation: int, reason: str, added: list[str],
                    removed: list[Upstream], context: dict[str, str]) -> None:
        """What follows a swap but need not delay the next request: the log line, then the listeners.
        `added`: the upstreams routed from this swap on (a deploy's evidence that a slot got traffic only
        after its readiness passed)."""
        log.info("table.changed", reason=reason, generation=generation, **context,
                 services={s.name: {p.name: p.weight for p in s.pools} for s in table.services.values()},
                 added=added, removed=[u.address for u in removed])
        for listener in self._listeners:
            try:
                listener(table)
            except Exception:  # one failing listener must not starve the others of this swap
                log.exception("table.listener_failed", generation=generation, listener=repr(listener))


def _replace(spec: ServiceSpec, **changes: object) -> ServiceSpec:
    return replace(spec, **changes)  # type: ignore[arg-type]
