"""Selection, matching and swaps of the routing snapshot, without sockets."""

import asyncio
import collections
import random

import pytest
from structlog.testing import capture_logs

from proxy.errors import UnknownService, ValidationError
from proxy.router import Router
from proxy.specs import ServiceSpec
from proxy.upstream import Health


def service(name="web", pools=(("blue", 1, ("127.0.0.1:9001",)),), **extra):
    return ServiceSpec.from_dict({
        "name": name,
        "pools": [{"name": n, "weight": w, "upstreams": list(u)} for n, w, u in pools],
        **extra,
    })


def draw(router, n=20000, seed=7, host="x", path="/"):
    rng = random.Random(seed)
    svc = router.table.match(host, path)
    return collections.Counter(svc.choose(rng.random).name for _ in range(n))


def test_weighted_selection_follows_weights():
    router = Router()
    router.set_service(service(pools=(("blue", 95, ("127.0.0.1:1",)), ("green", 5, ("127.0.0.1:2",)))))
    counts = draw(router)
    assert 0.04 < counts["green"] / 20000 < 0.06
    assert counts["blue"] + counts["green"] == 20000


def test_weight_zero_receives_nothing():
    router = Router()
    router.set_service(service(pools=(("blue", 0, ("127.0.0.1:1",)), ("green", 3, ("127.0.0.1:2",)))))
    assert draw(router) == {"green": 20000}


def test_unhealthy_pool_leaves_the_draw_and_returns():
    router = Router()
    router.set_service(service(pools=(("blue", 50, ("127.0.0.1:1",)), ("green", 50, ("127.0.0.1:2",)))))
    green = router.upstreams["127.0.0.1:2"]
    router.set_health(green, Health.UNHEALTHY)
    assert draw(router) == {"blue": 20000}
    router.set_health(green, Health.HEALTHY)
    assert set(draw(router)) == {"blue", "green"}


def test_service_without_eligible_upstream_is_not_routable():
    router = Router()
    router.set_service(service(pools=(("blue", 1, ("127.0.0.1:1",)),)))
    router.set_health(router.upstreams["127.0.0.1:1"], Health.UNHEALTHY)
    svc = router.table.match("x", "/")
    assert not svc.routable and svc.choose() is None


def test_round_robin_inside_a_pool():
    router = Router()
    router.set_service(service(pools=(("blue", 1, ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")),)))
    pool = router.table.match("x", "/").choose()
    picks = collections.Counter(pool.pick().address for _ in range(300))
    assert picks == {"127.0.0.1:1": 100, "127.0.0.1:2": 100, "127.0.0.1:3": 100}


def test_least_outstanding_prefers_the_idle_upstream():
    router = Router()
    router.set_service(service(pools=(("blue", 1, ("127.0.0.1:1", "127.0.0.1:2")),),
                               balance="least_outstanding"))
    busy = router.upstreams["127.0.0.1:1"]
    for _ in range(3):
        busy.begin(object())  # type: ignore[arg-type]
    pool = router.table.match("x", "/").choose()
    assert {pool.pick().address for _ in range(10)} == {"127.0.0.1:2"}
    assert pool.pick(avoid=router.upstreams["127.0.0.1:2"]).address == "127.0.0.1:1"


def test_host_and_prefix_matching():
    router = Router()
    router.set_service(service("api", hosts=["app.localhost"], path_prefix="/api"))
    router.set_service(service("web", hosts=["app.localhost"]))
    router.set_service(service("admin", hosts=["admin.localhost"]))
    assert router.table.match("app.localhost", "/api/x").name == "api"
    assert router.table.match("app.localhost", "/index").name == "web"
    assert router.table.match("admin.localhost", "/").name == "admin"
    assert router.table.match("other.localhost", "/") is None


def test_single_service_is_the_default_route():
    router = Router()
    router.set_service(service("web", hosts=["web.localhost"]))
    assert router.table.match("127.0.0.1", "/").name == "web"


def test_swap_is_a_new_snapshot_and_old_one_is_untouched():
    router = Router()
    router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1",)), ("green", 0, ("127.0.0.1:2",)))))
    before = router.table
    generation = router.generation
    router.set_weights("web", {"blue": 0, "green": 100})
    assert router.table is not before and router.generation == generation + 1
    assert [p.weight for p in before.services["web"].pools] == [100, 0]
    assert [p.weight for p in router.table.services["web"].pools] == [0, 100]
    # Upstream runtime state survives the swap (same object), so counters and pools carry over.
    assert router.table.services["web"].pools[0].upstreams[0] is before.services["web"].pools[0].upstreams[0]


def test_removed_upstreams_are_reported_and_marked_draining():
    router = Router()
    router.set_service(service(pools=(("blue", 1, ("127.0.0.1:1",)),)))
    old = router.upstreams["127.0.0.1:1"]
    removed = router.set_service(service(pools=(("green", 1, ("127.0.0.1:2",)),)))
    assert removed == [old] and old.draining
    assert "127.0.0.1:1" not in router.upstreams


def test_bad_weights_change_nothing():
    router = Router()
    router.set_service(service(pools=(("blue", 1, ("127.0.0.1:1",)),)))
    before = router.table
    with pytest.raises(ValidationError) as info:
        router.set_weights("web", {"purple": 1})
    assert info.value.field == "weights.purple"
    with pytest.raises(ValidationError):
        router.set_weights("web", {"blue": -5})
    with pytest.raises(UnknownService):
        router.set_weights("nope", {"blue": 1})
    assert router.table is before


def test_conflicting_route_is_refused():
    router = Router()
    router.set_service(service("a", hosts=["x.localhost"]))
    with pytest.raises(ValidationError) as info:
        router.set_service(service("b", hosts=["x.localhost"]))
    assert info.value.field == "hosts"


SECRET = "0123456789abcdef-secret"


def test_sticky_and_forced_pool_selection():
    router = Router()
    router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1",)), ("green", 0, ("127.0.0.1:2",))),
                               sticky=True, override="header-secret", override_secret=SECRET))
    svc = router.table.match("x", "/")
    assert svc.select(forced="green", sticky=None)[0].name == "green"  # testers reach weight 0
    pool, set_cookie = svc.select(forced=None, sticky=None)
    assert pool.name == "blue" and set_cookie
    router.set_weights("web", {"blue": 50, "green": 50})
    svc = router.table.match("x", "/")
    assert all(svc.select(None, "blue")[0].name == "blue" for _ in range(200))
    router.set_weights("web", {"blue": 0, "green": 100})
    svc = router.table.match("x", "/")
    assert svc.select(None, "blue")[0].name == "green"  # a pool that no longer gets traffic lets go


def test_a_change_to_one_service_keeps_the_other_services_snapshot_objects():
    router = Router()
    router.set_service(service("api", hosts=["api.localhost"]))
    router.set_service(service("web", pools=(("blue", 100, ("127.0.0.1:1",)),
                                             ("green", 0, ("127.0.0.1:2",)))))
    api, web = router.table.services["api"], router.table.services["web"]
    upstreams = router.upstreams
    router.set_weights("web", {"blue": 0, "green": 100})
    assert router.table.services["api"] is api  # untouched service: the same immutable object
    assert router.table.services["web"] is not web
    assert router.table.match("x", "/").choose().name == "green"
    assert router.upstreams is upstreams  # weights only: no upstream added or removed
    router.set_health(router.upstreams["127.0.0.1:9001"], Health.UNHEALTHY)
    assert router.table.services["api"] is not api  # a health change rebuilds every service
    assert not router.table.services["api"].routable


def test_removing_a_service_keeps_the_others_and_drops_its_upstreams():
    router = Router()
    router.set_service(service("api", hosts=["api.localhost"]))
    router.set_service(service("web", hosts=["web.localhost"], pools=(("blue", 1, ("127.0.0.1:1",)),)))
    api = router.table.services["api"]
    removed = router.remove_service("web")
    assert [u.address for u in removed] == ["127.0.0.1:1"]
    assert list(router.table.services) == ["api"] and router.table.services["api"] is api
    assert set(router.upstreams) == {"127.0.0.1:9001"}


async def test_with_a_loop_listeners_and_the_log_line_come_right_after_the_swap():
    router = Router()
    router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1",)), ("green", 0, ("127.0.0.1:2",)))))
    await asyncio.sleep(0)
    seen: list[dict[str, int]] = []

    def broken(_table):
        raise RuntimeError("listener bug")

    router.subscribe(broken)
    router.subscribe(lambda t: seen.append({p.name: p.weight for p in t.services["web"].pools}))
    waiter = asyncio.ensure_future(router.wait_for_change(5.0))
    await asyncio.sleep(0)
    with capture_logs() as logs:
        router.set_weights("web", {"blue": 0, "green": 100})
        router.set_weights("web", {"blue": 50, "green": 50})
        # The swap is done (the next request routes on it) before any listener or log line ran.
        assert router.table.match("x", "/").pools_by_name["green"].weight == 50
        assert seen == [] and logs == []
        await asyncio.sleep(0)
    assert await waiter is True
    # Each listener call gets its own swap's table, in swap order; the broken one stopped nothing.
    assert seen == [{"blue": 0, "green": 100}, {"blue": 50, "green": 50}]
    changes = [(e["generation"], e["reason"], e["services"]["web"])
               for e in logs if e["event"] == "table.changed"]
    g = router.generation
    assert changes == [(g - 1, "weights", {"blue": 0, "green": 100}),
                       (g, "weights", {"blue": 50, "green": 50})]
    failures = [e for e in logs if e["event"] == "table.listener_failed"]
    assert len(failures) == 2 and failures[0]["log_level"] == "error"


def test_the_log_line_names_the_upstreams_a_swap_added_and_removed():
    # What says, from a proxy's log, since when it could route to a slot (tests/swarm: a replacement
    # slot is routed only after the controller's readiness passed for it).
    router = Router()
    with capture_logs() as logs:
        router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1", "127.0.0.1:3")),)))
        router.set_weights("web", {"blue": 50})
        router.set_service(service(pools=(("blue", 100, ("127.0.0.1:3",)), ("green", 0, ("127.0.0.1:2",)))))
        router.set_health(router.upstreams["127.0.0.1:2"], Health.UNHEALTHY)
    changes = [(e["reason"], e["added"], e["removed"]) for e in logs if e["event"] == "table.changed"]
    assert changes == [("service.set", ["127.0.0.1:1", "127.0.0.1:3"], []), ("weights", [], []),
                       ("service.set", ["127.0.0.1:2"], ["127.0.0.1:1"]), ("health", [], [])]


def test_the_override_is_off_unless_the_service_opts_in():
    router = Router()
    router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1",)), ("green", 0, ("127.0.0.1:2",)))))
    svc = router.table.match("x", "/")
    assert svc.override is None and svc.allowed_pool("green", b"127.0.0.1") is None
    assert svc.select(forced="green", sticky=None)[0].name == "blue"  # even a name that got through


def test_header_secret_override_needs_the_secret():
    router = Router()
    router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1",)), ("green", 0, ("127.0.0.1:2",))),
                               override="header-secret", override_secret=SECRET))
    svc = router.table.match("x", "/")
    assert svc.allowed_pool(f"green:{SECRET}", b"203.0.113.9") == "green"
    for value in ("green", "green:", f"green:{SECRET[:-1]}", f"green:{SECRET}\n", f"{SECRET}:green"):
        assert svc.allowed_pool(value, b"127.0.0.1") is None, value
    assert svc.allowed_pool(None, b"127.0.0.1") is None


@pytest.mark.parametrize(("peer", "allowed"), [
    (b"10.1.2.3", True), (b"192.168.1.7", True), (b"192.168.1.8", False), (b"11.0.0.1", False),
    (b"::ffff:10.9.9.9", True), (b"2001:db8::1", True), (b"2001:db9::1", False), (b"", False),
])
def test_trusted_override_needs_a_client_in_the_networks(peer, allowed):
    router = Router()
    router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1",)), ("green", 0, ("127.0.0.1:2",))),
                               override="trusted",
                               override_networks=["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]))
    svc = router.table.match("x", "/")
    assert svc.allowed_pool("green", peer) == ("green" if allowed else None)
    assert svc.allowed_pool("green", peer) == ("green" if allowed else None)  # the cached verdict


def test_override_routed_requests_are_counted_apart():
    router = Router()
    router.set_service(service(pools=(("blue", 100, ("127.0.0.1:1",)), ("green", 0, ("127.0.0.1:2",))),
                               override="header-secret", override_secret=SECRET))
    svc = router.table.match("x", "/")
    forced, _ = svc.select(forced="green", sticky=None)
    green = svc.pools_by_name["green"]
    assert forced is not green and forced.upstreams == green.upstreams and forced.name == "green"
    forced.stats.observe(500, 0.001)
    assert forced.stats is router.metrics.pool("web", "green").overridden
    assert router.metrics.counters("web")["green"].requests == 0  # the analysis never sees it
