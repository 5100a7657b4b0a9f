"""A service's config in the journal: written as the dataclass' fields, read back through the config
reader, so a bad row is refused with an error naming the key (controller/config/service_state.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller import recovery
from controller.config.model import Config, ConfigError
from controller.config.reader import load_config
from controller.config.service_state import service_from_dict, service_to_dict
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router

CONFIG = """
[services.web]
image = "app:v1"
port = 8080
replicas = 3
host = ["web.localhost", "www.localhost"]
path_prefix = "/app"
strategy = "canary"
env = { KEY = "value" }
command = ["httpd", "-f"]
volumes = ["/srv/data:/data:ro", "cache:/cache"]
labels = { team = "x" }
mem_limit = "64m"
cpus = 0.5
pids_limit = 100
cap_add = []
sticky = true
hold_timeout = "5s"
verify = 0
canary = { steps = [10, 100], step_pause = "manual", min_requests = 3, max_diff_rate = 0.01 }
rolling = { max_surge = 0, max_unavailable = 1 }
bluegreen = { keep_old = "1m", preview = true }
ab = { match = { cookie = { beta = "prefix:y" } }, duration = "5m", then = "canary" }

[[services.web.rules]]
name = "insiders"
match = { header = { "X-Canary" = "always" }, query = { beta = "prefix:y" } }
to = "canary"

[[services.web.rules]]
name = "beta-10pct"
match = { hash = { cookie = "account_id", percent = 12.5 } }
to = "v2"

[services.web.mirror]
to = "canary"
percent = 10
max_per_second = 50
methods = ["GET", "POST"]
max_body = "64KiB"
ignore = ["json:$.generated_at", "header:Date"]

[services.web.health]
path = "/up"
interval = "250ms"
timeout = "2s"
healthy = 1
unhealthy = 5
start_timeout = "30s"

[services.preset]
port = 80
host = "p.localhost"
canary = { preset = "linear25-10s" }

[services.api]
upstreams = ["127.0.0.1:9000"]
host = "api.localhost"
health = { path = "/ping" }
rules = [{ name = "old-clients", match = { header = { "User-Agent" = "regex:curl/7[.].*" } }, to = "stable" }]

[services.plain]
upstreams = ["127.0.0.1:9001"]
host = "plain.localhost"
"""


def services(tmp_path: Path) -> dict:
    path = tmp_path / "turnout.toml"
    path.write_text(CONFIG)
    return load_config(path).services


@pytest.mark.parametrize("name", ["web", "preset", "api", "plain"])
def test_a_service_round_trips_through_the_journal_as_json(tmp_path, name):
    config = services(tmp_path)[name]
    row = json.loads(json.dumps(service_to_dict(config)))
    assert service_from_dict(row) == config


def test_a_compose_origin_is_kept_but_the_compose_file_is_not_read_again(tmp_path):
    config = services(tmp_path)["web"]
    row = service_to_dict(config) | {"compose_file": str(tmp_path / "gone.yml"), "compose_service": "app"}
    read = service_from_dict(json.loads(json.dumps(row)))
    assert (read.compose_file, read.compose_service) == (tmp_path / "gone.yml", "app")
    assert read.image == config.image


def test_a_row_written_before_the_hardening_keys_gets_the_defaults(tmp_path):
    config = services(tmp_path)["preset"]
    row = service_to_dict(config)
    for key in ("pids_limit", "cap_drop", "cap_add", "security_opt"):
        del row[key]
    assert service_from_dict(json.loads(json.dumps(row))) == config


@pytest.mark.parametrize(("change", "key", "problem"), [
    ({"health": {"path": "/up", "interval": 0.001}}, "config.health.interval", "between 0.01 and 3600"),
    ({"health": {"healthy": 500}}, "config.health.healthy", "1-100"),
    ({"health": {"rise": 2}}, "config.health.rise", "unknown key"),
    ({"replicas": "2"}, "config.replicas", "whole number"),
    ({"replicas": 1_000_000_000}, "config.replicas", "at most 100"),
    ({"colour": "red"}, "config.colour", "unknown key"),
    ({"canary": {"steps": [50, 10, 100]}}, "config.canary.steps", "strictly increasing"),
    ({"volumes": [{"source": "/a", "target": "relative"}]}, "config.volumes", "absolute path"),
    ({"volumes": [3]}, "config.volumes", "list of 'source:target"),
    ({"cap_add": ["SYS_ADMIN"]}, "config.cap_add", "cannot be added"),
    ({"labels": {"turnout.owner": "someone"}}, "config.labels", "reserved"),
    ({"port": None}, "config.port", "required"),
    ({"name": "bad name"}, "config", "not a valid service name"),
])
def test_a_bad_row_is_refused_naming_the_key(tmp_path, change, key, problem):
    row = json.loads(json.dumps(service_to_dict(services(tmp_path)["web"]))) | change
    with pytest.raises(ConfigError) as info:
        service_from_dict(row, "journal.sqlite3 (service 'web')")
    assert (info.value.key, info.value.source) == (key, "journal.sqlite3 (service 'web')"), str(info.value)
    assert problem in info.value.problem, str(info.value)


async def test_recovery_refuses_a_bad_row_naming_the_journal_the_service_and_the_key(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    row = service_to_dict(services(tmp_path)["web"])
    row["health"]["interval"] = 0.001
    journal.set_service_state("web", {"stable": {"version": "v1", "image": "app:v1", "pool": "v1"},
                                      "config": row})
    deployer = Deployer(FakeBackend(), ProxyControl(Router()), journal)
    try:
        with pytest.raises(ConfigError) as info:
            await recovery.recover(deployer, Config())
    finally:
        journal.close()
    assert info.value.key == "config.health.interval"
    assert str(info.value).startswith(f"{tmp_path / 'journal.db'} (saved config of service 'web'): ")
