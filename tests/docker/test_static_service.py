"""A service with static upstreams (an app run as a host process) is routed by `turnout serve`,
beside a managed one, by Host header."""

import asyncio

import pytest
from aiohttp import ClientSession, web

from helpers.daemon import Daemon
from helpers.live import CONFIG, wait_for_version

pytestmark = pytest.mark.docker


async def test_static_upstreams_are_routed_but_not_managed(tmp_path, docker_client, test_run_labels):
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="host process\n")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    config = CONFIG.replace('[services.web]\n', '[services.web]\nhost = "web.localhost"\n', 1) + f"""
[services.api]
upstreams = ["127.0.0.1:{port}"]
host = "api.localhost"
"""
    serve = Daemon(tmp_path, test_run_labels, config)
    try:
        serve.start()
        wait_for_version(serve, "v1")
        async with ClientSession() as session:
            async with session.get(serve.url, headers={"Host": "api.localhost"}) as response:
                assert response.status == 200 and await response.text() == "host process\n"
            async with session.get(serve.url, headers={"Host": "web.localhost"}) as response:
                assert await response.text() == "v1\n"
        refused = serve.cli("deploy", "api", "--image", "turnout-testapp:v2")
        assert refused.returncode != 0 and "static upstreams" in (refused.stdout + refused.stderr)
    finally:
        if serve.process is not None:
            serve.stop()
        await asyncio.to_thread(serve.remove_containers)
        await runner.cleanup()
