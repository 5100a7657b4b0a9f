"""A proxy that follows a controller (`turnout serve --role proxy`): the data plane only, its routing
table pulled from the controller's routing listener by generation number.

Each pull (`POST /v1/routing?after=GEN&wait=S`, controller/routing_api.py) acknowledges GEN, the
controller generation this proxy has applied, and reports its requests in flight per upstream and its
per-pool counters; the answer is the next table as soon as there is one, or "unchanged" after S seconds.
A finished local drain triggers one extra pull at once (`wait=0`), so the controller's drain does not
wait for the next quiet poll to learn the slot is empty. The proxy probes its upstreams' health itself
(proxy/health.py): it is on its own node, and what it can reach is what counts for its clients.

If the controller cannot be reached, the proxy keeps serving the last table it applied and retries with
a backoff (`follower.unreachable` logged once per outage, `follower.reconnected` after).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from typing import Any

import aiohttp
import structlog

from .admin import CLIENT_HEADER
from .errors import ProxyError, ValidationError
from .router import Router
from .specs import ServiceSpec
from .upstream import Health

log = structlog.get_logger("turnout.proxy.follower")

POLL_WAIT = 1.0  # seconds a quiet pull is held: the controller's view of counters is at most this old
RETRY_MIN, RETRY_MAX = 0.2, 5.0  # backoff while the controller cannot be reached


class FollowerRefused(ProxyError):
    """The controller refused the pull for good (wrong token, a report it cannot read)."""


class Follower:
    def __init__(self, router: Router, controller: str, token: str, proxy_id: str | None = None,
                 address: str = "", poll_wait: float = POLL_WAIT) -> None:
        self.router = router
        self.url = controller.rstrip("/") + "/v1/routing"
        self.token = token
        self.id = proxy_id or socket.gethostname()
        self.address = address
        self.poll_wait = poll_wait
        self.applied = -1  # the controller generation installed here
        self.epoch: str | None = None  # ... of this controller run (generations restart with it)
        self.instance = secrets.token_hex(8)  # a restart under the same id is a new instance
        self.applied_event = asyncio.Event()  # set on every applied table (tests, the first table)
        self._specs: dict[str, dict[str, Any]] = {}  # as last pulled, to install only what changed
        self._session: aiohttp.ClientSession | None = None
        self._report_now = asyncio.Event()
        self._watching: set[object] = set()  # drains whose end triggers a report

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}", CLIENT_HEADER: f"proxy {self.id}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=self.poll_wait + 30))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        """Pull and apply forever; returns only by cancellation or a FollowerRefused."""
        delay, down = RETRY_MIN, False
        reporter = asyncio.get_running_loop().create_task(self._report_drains())
        try:
            while True:
                try:
                    await self.pull(self.poll_wait)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    if not down:
                        log.warning("follower.unreachable", controller=self.url, error=str(exc) or repr(exc),
                                    hint="serving the last table applied; retrying")
                    down = True
                    await asyncio.sleep(delay)
                    delay = min(RETRY_MAX, delay * 2)
                    continue
                if down:
                    log.info("follower.reconnected", controller=self.url, generation=self.applied)
                down, delay = False, RETRY_MIN
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)

    async def pull(self, wait: float) -> None:
        """One pull: report, and apply the table it answers (if newer)."""
        assert self._session is not None
        params = {"after": str(self.applied), "wait": f"{wait:g}"}
        async with self._session.post(self.url, params=params, json=self.report()) as response:
            body = await response.json(content_type=None)
            if response.status in (401, 403, 400):
                said = body.get("error") if isinstance(body, dict) else body
                raise FollowerRefused(f"the controller at {self.url} refused this proxy "
                                      f"(HTTP {response.status}): {said}")
            if response.status != 200:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                  message=str(body))
        # A later generation, or any of a new controller run (its generations start again from 0).
        newer = body["generation"] > self.applied or body.get("epoch") != self.epoch
        if not body.get("unchanged") and newer:
            self.apply(body)

    def apply(self, table: dict[str, Any]) -> None:
        """Install what changed: each changed service in one swap; a service gone is removed."""
        generation, services = table["generation"], table["services"]
        drain = table.get("drain_timeouts", {})
        for name in [n for n in self.router.specs if n not in services]:
            self._watch(self.router.remove_service(name, drain.get(name)))
        for name, data in services.items():
            if self._specs.get(name) == data and name in self.router.specs:
                continue
            try:
                spec = ServiceSpec.from_dict(data, name=name)
                self._watch(self.router.set_service(spec, drain.get(name)))
            except ValidationError as exc:  # a table this proxy cannot take: keep the rest, say so
                log.error("follower.service_refused", service=name, field=exc.field, error=exc.message)
                continue
        self._specs = dict(services)
        self.applied, self.epoch = generation, table.get("epoch")
        log.info("follower.applied", generation=generation, services=sorted(services))
        self.applied_event.set()
        self.applied_event = asyncio.Event()

    def report(self) -> dict[str, Any]:
        in_flight: dict[str, int] = {}
        for upstreams in (self.router.upstreams, self.router.draining):
            for address, upstream in upstreams.items():
                if upstream.inflight:
                    in_flight[address] = in_flight.get(address, 0) + len(upstream.inflight)
        counters: dict[str, dict[str, Any]] = {}
        metrics = self.router.metrics
        for (service, pool), stats in metrics.pools.items():
            c = stats.snapshot()
            counters.setdefault(service, {})[pool] = {
                "by_class": list(c.by_class), "proxy_errors": c.proxy_errors, "buckets": list(c.buckets),
                "latency_sum": c.latency_sum}
        failed = {service: metrics.failed(service) for service in counters}
        for service, n in metrics.hold_timeouts.items():
            failed.setdefault(service, n)
        unhealthy = [a for a, u in self.router.upstreams.items() if u.health is Health.UNHEALTHY]
        return {"id": self.id, "instance": self.instance, "epoch": self.epoch, "address": self.address,
                "applied": self.applied, "unhealthy": unhealthy,
                "in_flight": in_flight,
                "counters": counters, "failed": failed}

    def _watch(self, removed: list[Any]) -> None:
        """When these removed upstreams finish draining, report at once."""
        if not removed:
            return

        async def drained() -> None:
            await self.router.wait_drained(removed)
            self._report_now.set()

        task = asyncio.get_running_loop().create_task(drained())
        self._watching.add(task)
        task.add_done_callback(self._watching.discard)

    async def _report_drains(self) -> None:
        """An extra pull with wait=0 when a drain ends (the slot is empty), so the controller need not
        wait for the held pull to come back. (A table applied is acknowledged by the next pull, which
        the main loop sends at once.)"""
        while True:
            await self._report_now.wait()
            self._report_now.clear()
            try:
                await self.pull(0)
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass  # the main loop reports the outage


async def wait_first_table(follower: Follower, timeout: float) -> bool:
    """Whether a table was applied within `timeout` seconds (a proxy starting up)."""
    if follower.applied >= 0:
        return True
    try:
        await asyncio.wait_for(follower.applied_event.wait(), timeout)
    except TimeoutError:
        return False
    return True
