"""The controller's bookkeeping of remote proxies (controller/fleet.py): acknowledgements, drains,
liveness and the summed counters, without sockets."""

from __future__ import annotations

import asyncio

import pytest

from controller.fleet import ZERO, BadReport, Fleet, ProxiesLagging, Report
from controller.proxy_control import ProxyControl
from proxy.config import ProxyConfig
from proxy.errors import ValidationError
from proxy.metrics import PoolCounters
from proxy.router import Router
from proxy.specs import ServiceSpec


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counters(requests: int, errors: int = 0) -> dict:
    by_class = [0, 0, requests - errors, 0, 0, errors, 0]
    buckets = [0] * len(ZERO.buckets)
    buckets[0] = requests
    return {"by_class": by_class, "proxy_errors": errors, "buckets": buckets, "latency_sum": 0.001 * requests}


def report(proxy_id: str = "a", applied: int = 1, instance: str = "i1", in_flight: dict | None = None,
           pools: dict | None = None, failed: dict | None = None) -> Report:
    return Report.from_dict({"id": proxy_id, "instance": instance, "address": f"10.0.0.{ord(proxy_id[0])}:80",
                             "applied": applied, "in_flight": in_flight or {},
                             "counters": {"web": pools} if pools else {}, "failed": failed or {}})


async def test_with_no_proxy_nothing_waits():
    fleet = Fleet()
    await asyncio.wait_for(fleet.wait_acked(7), 0.5)  # returns at once, not after ack_timeout
    await asyncio.wait_for(fleet.wait_idle(["127.0.0.1:9"], 7, 30), 0.5)
    assert fleet.counters("web") == {} and fleet.in_flight(["127.0.0.1:9"]) == 0


async def test_a_change_is_done_when_every_proxy_acknowledged_it():
    fleet = Fleet(ack_timeout=30)
    fleet.report(report("a", applied=4))
    fleet.report(report("b", applied=4))
    waiting = asyncio.ensure_future(fleet.wait_acked(5))
    await asyncio.sleep(0)
    fleet.report(report("a", applied=5))
    await asyncio.sleep(0)
    assert not waiting.done()  # b has not applied it yet
    fleet.report(report("b", applied=5))
    await asyncio.wait_for(waiting, 1)


async def test_a_proxy_that_does_not_acknowledge_in_time_is_named():
    fleet = Fleet(ack_timeout=0.2, unseen_timeout=60)
    fleet.report(report("a", applied=5))
    fleet.report(report("b", applied=4))
    with pytest.raises(ProxiesLagging) as caught:
        await fleet.wait_acked(5)
    message = str(caught.value)
    assert "proxy b (10.0.0.98:80) acknowledged generation 4, not 5 after 0.2s" in message
    assert "proxy a" not in message


async def test_a_proxy_unseen_too_long_is_dropped_and_not_waited_for():
    clock = Clock()
    fleet = Fleet(ack_timeout=30, unseen_timeout=5, clock=clock)
    fleet.report(report("a", applied=3, pools={"v1": counters(10)}))
    fleet.report(report("b", applied=2, pools={"v1": counters(7)}))
    clock.now += 4
    fleet.report(report("a", applied=3, pools={"v1": counters(12)}))
    clock.now += 2  # b: 6 s without a pull
    await asyncio.wait_for(fleet.wait_acked(3), 1)
    assert set(fleet.proxies) == {"a"}
    assert fleet.counters("web")["v1"].requests == 19  # what b counted stays in the sum


async def test_a_held_pull_keeps_a_proxy_in_the_set():
    clock = Clock()
    fleet = Fleet(unseen_timeout=5, clock=clock)
    proxy = fleet.report(report("a"))
    fleet.pull_opened(proxy)
    clock.now += 60
    assert [p.id for p in fleet.live()] == ["a"]
    fleet.pull_closed(proxy)  # the pull ended now: seen now
    clock.now += 4
    assert [p.id for p in fleet.live()] == ["a"]
    clock.now += 2
    assert fleet.live() == []


async def test_a_drain_waits_for_the_acknowledgement_and_zero_in_flight_on_the_slot():
    fleet = Fleet()
    fleet.report(report("a", applied=4, in_flight={"10.1.1.1:80": 2, "10.1.1.2:80": 1}))
    waiting = asyncio.ensure_future(fleet.wait_idle(["10.1.1.1:80"], 5, 30))
    await asyncio.sleep(0)
    fleet.report(report("a", applied=5, in_flight={"10.1.1.1:80": 1, "10.1.1.2:80": 1}))
    await asyncio.sleep(0)
    assert not waiting.done()
    fleet.report(report("a", applied=5, in_flight={"10.1.1.2:80": 3}))  # another slot does not count
    await asyncio.wait_for(waiting, 1)


async def test_a_drain_not_done_in_time_names_the_slot():
    fleet = Fleet()
    fleet.report(report("a", applied=5, in_flight={"10.1.1.1:80": 2}))
    with pytest.raises(ProxiesLagging, match=r"proxy a .* still has requests in flight on 10.1.1.1:80 \(2\)"):
        await fleet.wait_idle(["10.1.1.1:80"], 5, 0.2)


def test_an_overtaken_older_pull_does_not_lower_the_acknowledgement():
    fleet = Fleet()
    fleet.report(report("a", applied=6))
    fleet.report(report("a", applied=5))  # sent before, arrived after
    assert fleet.proxies["a"].acked == 6


def test_a_generation_applied_under_another_controller_run_acknowledges_nothing():
    fleet = Fleet()
    stale = Report.from_dict({"id": "a", "applied": 57, "epoch": "a-previous-run"}, fleet.epoch)
    current = Report.from_dict({"id": "a", "applied": 3, "epoch": fleet.epoch}, fleet.epoch)
    assert stale.applied == -1 and current.applied == 3


def test_counters_sum_every_proxy_and_survive_a_restart():
    fleet = Fleet()
    fleet.report(report("a", pools={"v1": counters(10, errors=1), "v2": counters(4)}))
    fleet.report(report("b", pools={"v1": counters(5)}))
    total = fleet.counters("web")
    assert total["v1"].requests == 15 and total["v1"].errors == 1 and total["v2"].requests == 4
    fleet.report(report("a", instance="i2", applied=-1, pools={"v1": counters(1)}))  # a restarted
    assert fleet.counters("web")["v1"].requests == 16  # 10 before the restart + 1 + b's 5


def test_proxy_control_adds_the_proxies_to_the_local_counters_and_in_flight():
    router = Router()
    router.set_service(ServiceSpec.from_dict(
        {"name": "web", "pools": [{"name": "v1", "weight": 1, "upstreams": ["127.0.0.1:9"]}]}))
    router.metrics.pool("web", "v1").observe(200, 0.001)
    fleet = Fleet()
    control = ProxyControl(router, fleet)
    fleet.report(report("a", in_flight={"127.0.0.1:9": 3}, pools={"v1": counters(5), "v2": counters(2)},
                        failed={"web": 1}))
    assert {p: c.requests for p, c in control.counters("web").items()} == {"v1": 6, "v2": 2}
    assert control.in_flight(["127.0.0.1:9"]) == 3
    assert control.failed_requests("web") == 1


def test_an_upstream_a_remote_proxy_ejected_counts_as_ejected():
    router = Router()
    fleet = Fleet()
    control = ProxyControl(router, fleet)
    fleet.report(Report.from_dict({"id": "a", "unhealthy": ["10.1.1.1:80"]}))
    fleet.report(Report.from_dict({"id": "b", "unhealthy": []}))
    assert control.ejected(["10.1.1.1:80", "10.1.1.2:80"]) == ["10.1.1.1:80"]


def test_a_local_only_proxy_control_reads_only_its_router():
    router = Router()
    control = ProxyControl(router)
    assert control.fleet is None and control.counters("web") == {}


@pytest.mark.parametrize(("body", "key"), [
    ([], "body"),
    ({"applied": 1}, "id"),
    ({"id": "a\n", "applied": 1}, "id"),
    ({"id": "a", "applied": "1"}, "applied"),
    ({"id": "a", "in_flight": {"x": -1}}, "in_flight.x"),
    ({"id": "a", "unhealthy": "10.1.1.1:80"}, "unhealthy"),
    ({"id": "a", "counters": {"web": {"v1": {"by_class": [1]}}}}, "counters.web.v1.by_class"),
    ({"id": "a", "counters": {"web": {"v1": {**counters(1), "latency_sum": "x"}}}},
     "counters.web.v1.latency_sum"),
])
def test_a_report_it_cannot_read_is_refused_naming_the_key(body, key):
    with pytest.raises(BadReport) as caught:
        Report.from_dict(body)
    assert caught.value.key == key


def test_pool_counters_from_a_report_read_back():
    parsed = report(pools={"v1": counters(3, errors=1)}).counters["web"]["v1"]
    assert isinstance(parsed, PoolCounters) and parsed.requests == 3 and parsed.errors == 1


@pytest.mark.parametrize(("options", "key"), [
    ({"routing_listen": "0.0.0.0:8002"}, "routing_listen"),
    ({"routing_listen": "0.0.0.0:8002", "routing_token": "short"}, "routing_token"),
    ({"routing_token": "x" * 40, "admin_token": "x" * 40, "admin_tcp": "127.0.0.1:8001"}, "routing_token"),
])
def test_the_routing_listener_needs_a_token_of_its_own(options, key):
    with pytest.raises(ValidationError) as caught:
        ProxyConfig(**options)
    assert caught.value.field == key


def test_the_routing_listener_may_listen_beyond_loopback():
    config = ProxyConfig(routing_listen="0.0.0.0:8002", routing_token="r" * 40)
    assert config.routing_listen == "0.0.0.0:8002"
