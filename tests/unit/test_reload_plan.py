"""What a reload does with each difference between the running config and the file (controller/reload.py):
live keys applied, restart keys said (and kept at their running values), deploys left to `turnout apply`."""

from __future__ import annotations

from types import SimpleNamespace

from controller.config.reader import parse_config
from controller.reload import Reloader, ReloadResult

BASE = {"proxy": {"listen": "127.0.0.1:8000", "idle_timeout": "60s"},
        "services": {"web": {"image": "app:v1", "port": 8080, "host": "web.localhost"},
                     "api": {"upstreams": ["127.0.0.1:9000"], "host": "api.localhost"}}}


def reloader(old) -> Reloader:
    deployer = SimpleNamespace(configs=dict(old.services), releases={"web": object()})
    return Reloader(SimpleNamespace(deployer=deployer, config=old), lambda: old)  # type: ignore[arg-type]


def changed(**sections) -> dict:
    data = {"proxy": dict(BASE["proxy"]), "services": {k: dict(v) for k, v in BASE["services"].items()}}
    for section, values in sections.items():
        for key, value in values.items():
            if section == "proxy":
                data["proxy"][key] = value
            else:
                data["services"].setdefault(section, {})[key] = value
    return data


def test_live_proxy_keys_are_applied_and_restart_keys_kept_at_their_running_values():
    old = parse_config(BASE)
    new = parse_config(changed(proxy={"listen": "0.0.0.0:80", "idle_timeout": "5s"}))
    result = ReloadResult("turnout.toml")
    proxy = reloader(old)._proxy_changes(old, new, result)
    assert result.applied == ["proxy.idle_timeout 1m -> 5s"]
    assert result.needs_restart == ["proxy.listen 127.0.0.1:8000 -> 0.0.0.0:80"]
    assert proxy.listen == "127.0.0.1:8000" and proxy.idle_timeout == 5.0


def test_routing_settings_are_applied_and_release_changes_left_to_apply():
    old = parse_config(BASE)
    new = parse_config(changed(web={"image": "app:v2", "replicas": 3, "path_prefix": "/shop"},
                               api={"upstreams": ["127.0.0.1:9001"]},
                               extra={"upstreams": ["127.0.0.1:9002"], "host": "extra.localhost"}))
    result = ReloadResult("turnout.toml")
    actions = reloader(old)._service_changes(old, new, result)
    kinds = {config.name: kind for config, kind in actions}
    assert kinds == {"web": "routing", "api": "routing", "extra": "routing"}
    web = next(config for config, _ in actions if config.name == "web")
    assert (web.path_prefix, web.image, web.replicas) == ("/shop", "app:v1", 1)  # the release untouched
    assert any("image app:v1 -> app:v2" in line and "replicas 1 -> 3" in line and "turnout apply" in line
               for line in result.not_applied), result.not_applied
    assert "services.api: upstreams 127.0.0.1:9000 -> 127.0.0.1:9001" in result.applied


def test_a_service_gone_from_the_file_is_kept_and_said():
    old = parse_config(BASE)
    data = changed()
    del data["services"]["api"]
    result = ReloadResult("turnout.toml")
    assert reloader(old)._service_changes(old, parse_config(data), result) == []
    assert result.not_applied == ["services.api: no longer in the file; still served (`turnout apply "
                                  "--prune` removes what apply created)"]
