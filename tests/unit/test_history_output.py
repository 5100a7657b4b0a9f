"""`turnout history` (GET /v1/history) shows env keys, never their values (often secrets); the journal
itself keeps the values, which recovery needs to start the same containers again."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from controller.api import add_controller_routes, get_history
from controller.deployer import Deployer
from controller.journal import Journal
from controller.proxy_control import ProxyControl
from helpers.fake_docker import FakeBackend
from proxy.router import Router


async def history(deployer: Deployer, query: str = "steps=1") -> dict:
    app = web.Application()
    add_controller_routes(app, deployer, "127.0.0.1:8000")
    request = make_mocked_request("GET", f"/v1/history/web?{query}", match_info={"service": "web"}, app=app)
    response = await get_history(request)
    return json.loads(response.body)


async def test_history_shows_env_keys_with_values_redacted(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    record = journal.begin("web", "rolling", "v2", "app:v2", "v1",
                           {"pool": "v2", "env": {"DB_PASSWORD": "hunter2", "MODE": "prod"}})
    journal.step(record.id, "started", config={"env": {"API_KEY": "sk-live-123"}, "port": 8080},
                 environment=["TOKEN=abc"], env=["SECRET=s3cr3t", "PLAIN"])
    deployer = Deployer(FakeBackend(), ProxyControl(Router()), journal)
    body = await history(deployer)
    text = json.dumps(body)
    for secret in ("hunter2", "prod", "sk-live-123", "s3cr3t"):
        assert secret not in text
    (item,) = body["deployments"]
    assert item["options"] == {"pool": "v2", "env": {"DB_PASSWORD": "***", "MODE": "***"}}
    (step,) = item["steps"]
    assert step["detail"]["config"] == {"env": {"API_KEY": "***"}, "port": 8080}
    assert step["detail"]["env"] == ["SECRET=***", "PLAIN=***"]
    # what is not an env is shown as it was; the journal keeps the values for recovery
    assert step["detail"]["environment"] == ["TOKEN=abc"]
    assert journal.get(record.id).options["env"]["DB_PASSWORD"] == "hunter2"
    journal.close()


def test_redacted_leaves_everything_else_alone():
    from controller.journal import redacted

    data = {"id": "d-000001", "options": {"pool": "v2", "verify": 2.0}, "steps": [{"name": "healthy"}]}
    assert redacted(data) == data
    assert redacted({"env": "KEY=value"}) == {"env": "***"}


async def test_history_redacts_the_override_secret_of_a_saved_config(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    record = journal.begin("web", "bluegreen", "v2", "app:v2", "v1", {"pool": "v2"})
    journal.step(record.id, "started", config={"override": "header-secret",
                                               "override_secret": "abcdefghijklmnopqrstuvwxyz"})
    deployer = Deployer(FakeBackend(), ProxyControl(Router()), journal)
    body = await history(deployer)
    assert "abcdefghijklmnopqrstuvwxyz" not in json.dumps(body)
    (step,) = body["deployments"][0]["steps"]
    assert step["detail"]["config"] == {"override": "header-secret", "override_secret": "***"}
