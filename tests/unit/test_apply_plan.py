"""The apply plan (controller/apply/plan.py): one action per service for every kind of difference between
the file and what runs, and its text (`~ web: image v1 -> v2 (canary 5,25,50,100 / 30s)`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.apply.plan import (
    NEW,
    PRUNE,
    RELEASE,
    ROUTING,
    SCALE,
    SETTINGS,
    UNCHANGED,
    Desired,
    Live,
    PlanError,
    plan,
)
from controller.apply.spec import CONTAINER_FIELDS, spec_hash
from controller.config.model import BlueGreenOptions, CanaryOptions, HealthCheck, RollingOptions, Volume
from controller.config.reader import parse_config


def service(**changes):
    data = {"image": "myapp:v1", "port": 8080, "replicas": 2, **changes}
    return parse_config({"services": {"web": data}}).services["web"]


def live(config, version="v1", image="myapp:v1", image_id="sha256:one", **kw):
    return Live(config, version, image, spec_hash(config, image_id), **kw)


def want(config, image_id="sha256:one"):
    return Desired(config, spec_hash(config, image_id) if config.managed else None)


def only(desired, current, prune=False):
    actions = plan({"web": desired} if desired else {}, {"web": current} if current else {}, prune=prune)
    assert len(actions.actions) == 1
    return actions.actions[0]


def test_the_same_file_twice_is_no_change():
    config = service()
    action = only(want(config), live(config))
    assert action.action == UNCHANGED and action.line() == "= web"
    assert not plan({"web": want(config)}, {"web": live(config)}).changed


def test_a_new_image_tag_is_a_release_described_with_its_strategy():
    old = service(strategy="canary", canary={"steps": [5, 25, 50, 100], "step_pause": "30s"})
    new = replace(old, image="myapp:v2")
    action = only(want(new, "sha256:two"), live(old))
    assert action.action == RELEASE and action.config is new
    assert action.line() == "~ web: image v1 -> v2 (canary 5,25,50,100 / 30s)"


def test_a_tag_rebuilt_is_a_release_and_says_so():
    config = service()
    action = only(want(config, "sha256:rebuilt"), live(config))
    assert action.action == RELEASE
    assert action.line() == ("~ web: image v1 rebuilt: a new image ID under the same tag "
                             "(rolling, max surge 1, max unavailable 0)")


def test_another_repository_shows_both_references():
    old = service()
    new = replace(old, image="registry.local/other:v2")
    assert only(want(new, "sha256:x"), live(old)).changes[0].startswith(
        "image myapp:v1 -> registry.local/other:v2")


def test_the_same_image_id_under_a_new_tag_is_a_release_with_a_new_version():
    old = service()
    new = replace(old, image="myapp:v1b")
    action = only(want(new), live(old))
    assert action.action == RELEASE and "same image ID: a new version name" in action.changes[0]


def test_containers_without_a_spec_hash_are_replaced_once():
    config = service()
    action = only(want(config), Live(config, "v1", "myapp:v1", None))
    assert action.action == RELEASE and "v1 deployed without a spec hash: replaced once" in action.changes[0]


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("env", {"A": "secret"}, "env changed (A)"),
    ("command", ["/bin/sh", "-c", "x"], "command - -> /bin/sh,-c,x"),
    ("volumes", ["data:/data"], "volumes - -> data:/data:rw"),
    ("labels", {"team": "a"}, "labels - -> team=a"),
    ("mem_limit", "64m", "mem_limit - -> 67108864"),
    ("cpus", 0.5, "cpus - -> 0.5"),
    ("pids_limit", 64, "pids_limit 512 -> 64"),
    ("port", 9090, "port 8080 -> 9090"),
])
def test_every_container_field_makes_a_release(key, value, shown):
    old = service()
    new = service(**{key: value})
    action = only(want(new), live(old))  # the hash differs: the definition did
    assert action.action == RELEASE, action
    assert shown in action.changes, action.changes
    assert "secret" not in action.line()  # env values are never printed


def test_the_container_fields_are_the_hashed_ones():
    """Every container field changes the hash, and nothing else does: a setting or the replica count
    touches no container."""
    base = service()
    base_hash = spec_hash(base, "sha256:one")
    for name in CONTAINER_FIELDS:
        changed = service(**{"port": 9090} if name == "port" else {name: {
            "env": {"A": "1"}, "command": ["x"], "volumes": ["v:/v"], "labels": {"a": "b"},
            "mem_limit": "64m", "cpus": 1, "pids_limit": 7, "cap_drop": ["NET_RAW"], "cap_add": ["CHOWN"],
            "security_opt": []}[name]})
        assert spec_hash(changed, "sha256:one") != base_hash, name
    assert spec_hash(base, "sha256:two") != base_hash
    for changed in (service(replicas=5), service(host="a.localhost"), service(strategy="canary"),
                    service(health={"path": "/up"}), service(drain_timeout="3s")):
        assert spec_hash(changed, "sha256:one") == base_hash


def test_replicas_alone_is_a_scale():
    old, new = service(), service(replicas=5)
    action = only(want(new), live(old))
    assert action.action == SCALE and action.line() == "~ web: replicas 2 -> 5"


def test_replicas_with_a_new_image_is_one_release():
    old, new = service(), service(image="myapp:v2", replicas=5)
    action = only(want(new, "sha256:two"), live(old))
    assert action.action == RELEASE and "replicas 2 -> 5" in action.changes


@pytest.mark.parametrize(("changes", "shown"), [
    ({"host": "web.localhost"}, "host - -> web.localhost"),
    ({"path_prefix": "/app"}, "path_prefix / -> /app"),
    ({"health": {"path": "/up"}}, "health.path /healthz -> /up"),
    ({"drain_timeout": "3s"}, "drain_timeout - -> 3.0"),
    ({"hold_timeout": "3s"}, "hold_timeout - -> 3.0"),
    ({"sticky": True}, "sticky false -> true"),
    ({"strategy": "canary"}, "strategy rolling -> canary"),
    ({"canary": {"steps": [10, 100]}}, "canary.steps 5,25,50,100 -> 10,100"),
    ({"rolling": {"max_surge": 2}}, "rolling.max_surge 1 -> 2"),
    ({"bluegreen": {"keep_old": "5m"}}, "bluegreen.keep_old 0.0 -> 300.0"),
    ({"verify": "5s"}, "verify 2.0 -> 5.0"),
    ({"hooks": {"migrate": {"oneoff": ["/app/migrate"]}}}, "hooks.migrate added"),
    ({"override": "header-secret", "override_secret": "a-secret-of-16-chars"}, "override_secret changed"),
])
def test_settings_alone_are_a_routing_change(changes, shown):
    old, new = service(), service(**changes)
    action = only(want(new), live(old))
    assert action.action == ROUTING, action
    assert shown in action.changes, action.changes
    assert "a-secret-of-16-chars" not in action.line()


def test_settings_ride_along_with_a_scale():
    old, new = service(), service(replicas=3, host="web.localhost")
    action = only(want(new), live(old))
    assert action.action == SCALE and action.changes == ("replicas 2 -> 3", "host - -> web.localhost")


def test_every_setting_is_compared():
    """No field of ServiceConfig escapes the plan: each is a container field, a setting, the replica
    count, or says where the service came from."""
    from dataclasses import fields

    from controller.config.model import ServiceConfig

    known = set(SETTINGS) | set(CONTAINER_FIELDS) | {"name", "image", "replicas", "upstreams",
                                                     "compose_file", "compose_service"}
    assert {f.name for f in fields(ServiceConfig)} == known
    assert not set(SETTINGS) & set(CONTAINER_FIELDS)
    for value in (HealthCheck(path="/x"), CanaryOptions(steps=(100,)), RollingOptions(max_surge=3),
                  BlueGreenOptions(preview=True)):
        assert type(value).__name__  # the nested options are dataclasses: compared field by field


def test_a_new_service_is_added():
    config = service()
    action = only(want(config), None)
    assert action.action == NEW
    assert action.line() == "+ web: image myapp:v1, 2 replica(s) (rolling, max surge 1, max unavailable 0)"


def test_a_configured_service_that_never_ran_is_added():
    config = service()
    assert only(want(config), Live(config)).action == NEW


def test_static_services_are_added_and_rerouted():
    config = parse_config({"services": {"web": {"upstreams": ["127.0.0.1:9000"]}}}).services["web"]
    assert only(want(config), None).line() == "+ web: upstreams 127.0.0.1:9000"
    assert only(want(config), Live(config)).action == UNCHANGED
    moved = replace(config, upstreams=("127.0.0.1:9001",))
    action = only(want(moved), Live(config))
    assert action.action == ROUTING and action.changes == ("upstreams 127.0.0.1:9000 -> 127.0.0.1:9001",)


def test_switching_between_static_and_containers_is_refused():
    static = parse_config({"services": {"web": {"upstreams": ["127.0.0.1:9000"]}}}).services["web"]
    with pytest.raises(PlanError, match=r"services\.web: cannot switch"):
        only(want(service()), Live(static))


@pytest.mark.parametrize(("by_apply", "prune", "action", "text"), [
    (False, False, UNCHANGED, "= web: not in the file; kept (apply did not create it)"),
    (False, True, UNCHANGED, "= web: not in the file; kept (apply did not create it)"),
    (True, False, UNCHANGED, "= web: not in the file; kept (--prune removes it)"),
    (True, True, PRUNE, "- web: prune: v1 drained, then its containers removed"),
])
def test_a_service_not_in_the_file_is_pruned_only_with_prune_when_apply_created_it(
        by_apply, prune, action, text):
    current = live(service(), by_apply=by_apply)
    got = only(None, current, prune=prune)
    assert (got.action, got.line()) == (action, text)
    assert got.changed == (action == PRUNE)


def test_the_plan_covers_every_service_in_name_order():
    a, b = service(), replace(service(), name="api")
    result = plan({"web": want(a), "new": want(replace(a, name="new"))},
                  {"web": live(a), "api": live(b, by_apply=True)}, prune=True)
    assert [(x.service, x.action) for x in result.actions] == [("api", PRUNE), ("new", NEW),
                                                                ("web", UNCHANGED)]
    assert result.describe()["changed"] is True
    assert result.describe()["actions"][2] == {"service": "web", "action": "=", "changes": [],
                                               "line": "= web"}


@pytest.mark.parametrize(("options", "text"), [
    ({"strategy": "bigbang"}, "bigbang"),
    ({"strategy": "bluegreen", "bluegreen": {"preview": True, "keep_old": "5m"}},
     "bluegreen, preview, keep old 5m"),
    ({"strategy": "canary", "canary": {"preset": "linear50-1m"}}, "canary 50,100 / 1m"),
    ({"strategy": "canary", "canary": {"step_pause": "manual"}}, "canary 5,25,50,100 / manual"),
])
def test_strategy_text(options, text):
    old, new = service(**options), service(**options, image="myapp:v2")
    assert only(want(new, "sha256:two"), live(old)).changes[0] == f"image v1 -> v2 ({text})"


def test_volumes_compare_as_binds():
    old = service(volumes=["data:/data"])
    assert old.volumes == (Volume("data", "/data"),)
    assert only(want(service(volumes=["data:/data:ro"])), live(old)).changes[1] == \
        "volumes data:/data:rw -> data:/data:ro"


def test_hook_changes_name_their_points():
    old = service(hooks={"migrate": {"oneoff": ["a"]}, "contract": {"oneoff": ["c"]}})
    new = service(hooks={"migrate": {"oneoff": ["b"]}, "post_deploy": {"http": "/x"}})
    assert only(want(new), live(old)).changes == ("hooks.contract removed", "hooks.migrate changed",
                                                  "hooks.post_deploy added")
