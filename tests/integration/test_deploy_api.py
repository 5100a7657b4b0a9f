"""The controller's `/v1/deploy` (controller/api.py) over a real unix socket: a body it cannot apply in
full is 400 naming the key, before anything starts. Every case refused here is refused before the
deployer touches Docker, so the backend (a real DockerBackend) is never called; the deploys that start
run on the fake backend (tests/helpers/fake_docker.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import controller.operations as operations
from controller.api import add_controller_routes
from controller.config.overrides import service_from_flags
from controller.deployer import Deployer
from controller.engine.docker import DockerBackend
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.admin import CLIENT_HEADER, create_admin_app
from proxy.router import Router


@contextlib.asynccontextmanager
async def controller_api(tmp_path: Path, backend: object = None
                         ) -> AsyncIterator[tuple[aiohttp.ClientSession, Deployer]]:
    router = Router()
    journal = Journal(tmp_path / "journal.db")
    backend = backend or DockerBackend(owner="test-deploy-api")
    deployer = Deployer(backend, ProxyControl(router), journal)  # type: ignore[arg-type]
    deployer.configs["web"] = service_from_flags("web", "app:v1", 8080)  # a service from the config
    app = create_admin_app(router)
    add_controller_routes(app, deployer, "127.0.0.1:0")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    path = tmp_path / "admin.sock"
    await web.UnixSite(runner, str(path)).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as session:
            yield session, deployer
    finally:
        await runner.cleanup()
        journal.close()


BASE = {"service": "new", "image": "app:v1", "flags": {"port": 8080}}


@pytest.mark.parametrize(("body", "field", "says"), [
    (BASE | {"privileged": True}, "privileged", "unknown key"),
    (BASE | {"volumes": ["/:/host"]}, "volumes", "unknown key"),
    (BASE | {"env": {"A": "1"}}, "env", "unknown key"),
    (BASE | {"flags": {"port": 8080, "privileged": True}}, "flags.privileged", "unknown key"),
    (BASE | {"flags": {"port": 8080, "cap_add": ["SYS_ADMIN"]}}, "flags.cap_add", "unknown key"),
    (BASE | {"flags": {"replicas": 2}}, "--port", "required"),
    (BASE | {"flags": {"port": 8080, "replicas": 1_000_000_000}}, "--replicas", "at most 100"),
    (BASE | {"flags": ["port"]}, "flags", "JSON object"),
    # Flags for a service that exists: --replicas is applied (below), the others must not be ignored.
    ({"service": "web", "image": "app:v2", "flags": {"port": 9090}}, "--port", "exists, with port 8080"),
    ({"service": "web", "image": "app:v2", "flags": {"health_path": "/up"}}, "--health-path",
     "exists, with health path /healthz"),
    ({"service": "web", "image": "app:v2", "flags": {"host": "other.test"}}, "--host", "exists, with host"),
    ({"service": "web", "image": "app:v2", "flags": {"replicas": 1_000_000_000}}, "--replicas",
     "at most 100"),
    # The ab strategy's options with another strategy: refused, not ignored.
    ({"service": "web", "image": "app:v2", "options": {"match": "header:X-Beta=1"}}, "--match",
     "only the ab strategy reads it, and this deploy's strategy is rolling"),
    ({"service": "web", "image": "app:v2", "strategy": "canary", "options": {"match": "header:X-Beta=1"}},
     "--match", "strategy is canary"),
    (BASE | {"options": {"duration": "1m"}}, "--duration", "only the ab strategy"),
    (BASE | {"options": {"volumes": ["/:/host"]}}, "--volumes", "unknown option"),
    (BASE | {"options": "fast"}, "options", "JSON object"),
    ({"service": "web", "image": "app:v2", "options": {"replicas": 1_000_000_000}}, "--replicas",
     "at most 100"),
    ({"service": "web", "image": "app:v2", "flags": {"colour": "red"}}, "flags.colour", "unknown key"),
])
async def test_a_deploy_it_cannot_apply_in_full_is_400_naming_the_key(tmp_path, body, field, says):
    async with controller_api(tmp_path) as (session, deployer):
        async with session.post("http://admin/v1/deploy", data=json.dumps(body),
                                headers={CLIENT_HEADER: "test"}) as response:
            answer = await response.json()
            assert response.status == 400, answer
        assert answer["field"] == field, answer
        assert says in answer["error"], answer
        assert deployer.active == {} and deployer.journal.history("new") == []


async def test_replicas_given_for_a_service_that_exists_scale_it(tmp_path, monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    async with controller_api(tmp_path, backend) as (session, deployer):
        body = {"service": "web", "image": "app:v2", "flags": {"port": 8080, "replicas": 3}}  # same port
        async with session.post("http://admin/v1/deploy", data=json.dumps(body),
                                headers={CLIENT_HEADER: "test"}) as response:
            assert response.status == 202, await response.text()
        await deployer.active["web"].task
        assert deployer.releases["web"].version == "v2"
        assert len(backend.running("v2")) == 3 and deployer.configs["web"].replicas == 3


async def test_match_with_the_ab_strategy_is_taken(tmp_path, monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(operations, "wait_healthy", backend.wait_healthy)
    async with controller_api(tmp_path, backend) as (session, deployer):
        body = {"service": "web", "image": "app:v1", "strategy": "ab",
                "options": {"match": "header:X-Beta=1"}}
        async with session.post("http://admin/v1/deploy", data=json.dumps(body),
                                headers={CLIENT_HEADER: "test"}) as response:
            assert response.status == 202, await response.text()
        await deployer.active["web"].task  # a first release: ab has nothing to compare it with
        assert deployer.releases["web"].version == "v1"
