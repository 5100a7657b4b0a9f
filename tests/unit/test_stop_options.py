"""`stop_timeout` and `init` per service: read from turnout.toml and Compose (native keys and
x-turnout), validated with the key named, and passed to Docker."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from test_create_options import full_spec

import controller.operations as operations
from controller.config.model import ConfigError
from controller.config.overrides import service_from_flags
from controller.config.reader import load_config, parse_config
from controller.deployer import Deployer
from controller.engine.base import ContainerSpec
from controller.engine.docker import DockerBackend
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router


def web(**keys: object):
    return parse_config({"services": {"web": {"port": 8080, **keys}}}).services["web"]


def test_defaults_are_dockers():
    assert (web().stop_timeout, web().init) == (10.0, False)


def test_read_from_turnout_toml():
    assert (web(stop_timeout="2s").stop_timeout, web(stop_timeout=0).stop_timeout) == (2.0, 0.0)
    assert web(init=True).init is True


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("stop_timeout", "soon", "not a duration"),
    ("stop_timeout", -1, "not a duration"),
    ("init", "yes", "must be true or false"),
])
def test_bad_values_name_the_key(key, value, problem):
    with pytest.raises(ConfigError, match=problem) as info:
        web(**{key: value})
    assert info.value.key == f"services.web.{key}"


def test_not_allowed_with_static_upstreams():
    with pytest.raises(ConfigError, match="static upstreams") as info:
        parse_config({"services": {"api": {"upstreams": ["127.0.0.1:9000"], "init": True}}})
    assert info.value.key == "services.api.init"


def test_read_from_compose_native_keys_and_x_turnout(tmp_path):
    (tmp_path / "compose.yml").write_text(
        "services:\n"
        "  native:\n    image: a:v1\n    expose: [80]\n    init: true\n    stop_grace_period: 1m30s\n"
        "  extension:\n    image: a:v1\n    expose: [80]\n"
        "    x-turnout:\n      init: true\n      stop_timeout: 3s\n")
    (tmp_path / "turnout.toml").write_text(
        '[services.native]\ncompose = "compose.yml"\n'
        '[services.extension]\ncompose = "compose.yml"\nhost = "x.localhost"\n')
    services = load_config(tmp_path / "turnout.toml").services
    assert (services["native"].stop_timeout, services["native"].init) == (90.0, True)
    assert (services["extension"].stop_timeout, services["extension"].init) == (3.0, True)


def test_a_bad_compose_value_names_its_compose_key(tmp_path):
    compose = tmp_path / "compose.yml"
    compose.write_text("services:\n  web:\n    image: a:v1\n    expose: [80]\n    stop_grace_period: soon\n")
    (tmp_path / "turnout.toml").write_text('[services.web]\ncompose = "compose.yml"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "turnout.toml")
    assert (info.value.key, info.value.source) == ("services.web.stop_grace_period", compose)


def test_init_reaches_the_create_options():
    backend = DockerBackend(owner="o")
    assert backend._create_kwargs(full_spec(init=True), "n")["init"] is True
    assert "init" not in backend._create_kwargs(full_spec(), "n")


def test_stop_timeout_reaches_the_create_options_in_whole_seconds():
    backend = DockerBackend(owner="o")
    assert backend._create_kwargs(full_spec(stop_timeout=2.5), "n")["stop_timeout"] == 3
    assert backend._create_kwargs(full_spec(stop_timeout=0), "n")["stop_timeout"] == 0
    assert "stop_timeout" not in backend._create_kwargs(full_spec(), "n")
    with pytest.raises(ValueError, match="stop_timeout"):
        full_spec(stop_timeout=-1)


async def test_a_deploy_creates_its_containers_with_the_services_stop_timeout(tmp_path, monkeypatch):
    specs: list[ContainerSpec] = []

    class Recording(FakeBackend):
        async def start(self, spec):
            specs.append(spec)
            return await super().start(spec)

    backend = Recording()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    config = dataclasses.replace(service_from_flags("web", "app:v1", port=8080, replicas=2),
                                 stop_timeout=45.0)
    with Journal(tmp_path / "journal.db") as journal:
        active = Deployer(backend, ProxyControl(Router()), journal).deploy(config, "app:v1")
        await asyncio.wait_for(active.task, 10)
    assert active.status == "succeeded", active.message
    assert [spec.stop_timeout for spec in specs] == [45.0, 45.0]
