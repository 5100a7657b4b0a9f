"""`turnout reload` and SIGHUP on a running daemon: the config file is read again and what can change
live is applied; a file with an error changes nothing and says why; what needs a restart is said."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from aiohttp import web

from helpers.daemon import Daemon
from helpers.live import CONFIG, owner_containers, wait_for_version
from helpers.upstreams import fetch

pytestmark = pytest.mark.docker


async def named_upstream(name: str) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"{name}\n")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def config(a: int, extra: str = "", access_log: str = "false") -> str:
    return f"""
[proxy]
access_log = {access_log}
idle_timeout = "60s"
[services.api]
upstreams = ["127.0.0.1:{a}"]
host = "api.localhost"
{extra}"""


async def answer(serve: Daemon, host: str) -> tuple[int, str]:
    response = await fetch(serve.port, host=host)
    return response.status, response.body.decode()


async def test_reload_applies_a_new_route_and_a_broken_file_changes_nothing(tmp_path, test_run_labels):
    (runner_a, a), (runner_b, b), (runner_c, c) = [await named_upstream(n) for n in "abc"]
    serve = Daemon(tmp_path, test_run_labels, config(a))
    try:
        serve.start()
        assert await answer(serve, "api.localhost") == (200, "a\n")
        unrouted = await answer(serve, "web.localhost")  # the single service is the default route

        # A broken file: a new route, a changed timeout and one bad value. Nothing of it is applied.
        assert serve.config_path is not None
        serve.config_path.write_text(config(b, f"""
[services.web]
upstreams = ["127.0.0.1:{b}"]
host = "web.localhost"
hold_timeout = "soon"
""").replace('idle_timeout = "60s"', 'idle_timeout = "5s"'))
        code, out = await serve.acli("reload")
        assert code == 2, out
        assert "services.web.hold_timeout" in out and str(serve.config_path) in out, out
        assert await answer(serve, "api.localhost") == (200, "a\n")  # upstreams unchanged
        assert await answer(serve, "web.localhost") == unrouted  # the new route not added
        assert "config.reload_refused" in serve.log()

        # The same file fixed: the new route serves on the very next request; api moves to c.
        serve.config_path.write_text(config(c, f"""
[services.web]
upstreams = ["127.0.0.1:{b}"]
host = "web.localhost"
[dashboard]
listen = "127.0.0.1:0"
"""))
        code, out = await serve.acli("reload", "--json")
        assert code == 0, out
        result = json.loads(out)
        assert await answer(serve, "web.localhost") == (200, "b\n")
        assert await answer(serve, "api.localhost") == (200, "c\n")
        assert any(line.startswith("services.web: new, routed to") for line in result["applied"]), result
        assert any(line.startswith("services.api: upstreams") for line in result["applied"]), result
        assert result["needs_restart"] == ["dashboard changed"], result  # said, not dropped
        history = serve.cli("history", "api", "--json")
        assert json.loads(history.stdout)["deployments"][0]["strategy"] == "routing"  # journalled

        # SIGHUP does the same (and still reopens the access log): api back to a, the log to a file.
        serve.config_path.write_text(config(a, access_log='"access.log"'))
        assert serve.process is not None
        serve.process.send_signal(signal.SIGHUP)
        await _until(lambda: _answers(serve, "api.localhost", "a\n"))
        # SIGHUP's reload is done when the route moved; the next request is logged to the new file
        assert await answer(serve, "api.localhost") == (200, "a\n")
        await _until(lambda: _logged(tmp_path / "access.log"))
    finally:
        if serve.process is not None:
            serve.stop()
        await runner_a.cleanup()
        await runner_b.cleanup()
        await runner_c.cleanup()


async def test_a_reload_during_a_deploy_of_a_changed_service_is_refused_and_changes_nothing(
        tmp_path, docker_client, test_run_labels):
    serve = Daemon(tmp_path, test_run_labels, CONFIG + '[proxy]\naccess_log = false\n')
    try:
        serve.start()
        wait_for_version(serve, "v1")
        started = serve.cli("deploy", "web", "--image", "turnout-testapp:v2", "--step-pause", "manual",
                            "--detach", "--json")
        assert started.returncode == 0, started.stderr
        deployment = json.loads(started.stdout)["id"]
        assert serve.config_path is not None
        serve.config_path.write_text(serve.config_path.read_text().replace(
            "access_log = false", 'access_log = "access.log"').replace(
            "[services.web]\n", '[services.web]\npath_prefix = "/shop"\n', 1))
        code, out = await serve.acli("reload")
        assert code == 2 and deployment in out and "'web'" in out, out
        assert (await fetch(serve.port, path="/")).status == 200  # the path rule did not move
        assert not (tmp_path / "access.log").exists()  # nor did the access log (applied first otherwise)
        assert serve.cli("abort", "web").returncode == 0
    finally:
        if serve.process is not None:
            serve.stop()
        owner_containers(docker_client, serve, remove=True)


async def test_reload_without_a_config_file_is_refused(tmp_path, test_run_labels):
    serve = Daemon(tmp_path, test_run_labels)
    try:
        serve.start()
        code, out = await serve.acli("reload")
        assert code == 2 and "started without --config: there is no file to read again" in out, out
    finally:
        if serve.process is not None:
            serve.stop()


async def _answers(serve: Daemon, host: str, body: str) -> bool:
    return await answer(serve, host) == (200, body)


async def _logged(path) -> bool:
    return path.exists() and '"host": "api.localhost"' in path.read_text()


async def _until(predicate, timeout: float = 20.0) -> None:
    """Poll a condition (the effect of a signal has no answer to wait on)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)
