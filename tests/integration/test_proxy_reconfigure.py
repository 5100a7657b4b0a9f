"""`ProxyServer.reconfigure` (what `turnout reload` applies to the listener) on real sockets: the access
log moves file, format and on/off for every connection at once, a file that cannot be opened changes
nothing, and connections accepted afterwards take the new timeouts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from helpers.upstreams import RawClient, running_proxy, service
from proxy.errors import ValidationError
from proxy.router import Router


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def get(client: RawClient, request_id: str) -> None:
    response = await client.request("GET", "/", headers={"X-Request-Id": request_id})
    assert response.status == 200


async def test_the_access_log_moves_for_open_connections_too(ups, tmp_path):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    async with running_proxy(router, access_log=str(first)) as proxy:
        client = await RawClient.connect(proxy.port)  # one keep-alive connection throughout
        try:
            await get(client, "one")
            await proxy.reconfigure(replace(proxy.config, access_log=str(second),
                                            access_log_format="combined"))
            await get(client, "two")
            await proxy.reconfigure(replace(proxy.config, access_log=False))
            await get(client, "three")  # logged nowhere
            fresh = await RawClient.connect(proxy.port)
            await get(fresh, "four")  # a connection accepted while off: no log
            await fresh.close()
            assert proxy.access_log is None
            await proxy.reconfigure(replace(proxy.config, access_log=str(second), access_log_format="json"))
            await get(client, "five")
        finally:
            await client.close()
    assert [json.loads(line)["request_id"] for line in lines(first)] == ["one"]  # closed, then untouched
    second_lines = lines(second)
    assert len(second_lines) == 2, second_lines
    assert second_lines[0].startswith("127.0.0.1 - - [") and '"GET / HTTP/1.1" 200' in second_lines[0]
    assert json.loads(second_lines[1])["request_id"] == "five"


async def test_a_log_file_that_cannot_be_opened_changes_nothing(ups, tmp_path):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    path = tmp_path / "access.log"
    async with running_proxy(router, access_log=str(path)) as proxy:
        before = proxy.config
        with pytest.raises(ValidationError) as err:
            await proxy.reconfigure(replace(before, access_log=str(tmp_path / "no" / "x.log"),
                                            idle_timeout=1.0))
        assert err.value.key == "access_log" and "cannot open" in err.value.message
        assert proxy.config is before
        client = await RawClient.connect(proxy.port)
        try:
            await get(client, "still-here")
        finally:
            await client.close()
    assert [json.loads(line)["request_id"] for line in lines(path)] == ["still-here"]


async def test_connections_accepted_after_a_reconfigure_take_its_timeouts(ups):
    a, _ = ups
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address])}))
    async with running_proxy(router, access_log=False, header_timeout=30.0) as proxy:
        await proxy.reconfigure(replace(proxy.config, header_timeout=0.2))
        silent = await RawClient.connect(proxy.port)  # sends no head: closed after 0.2 s, not 30 s
        try:
            assert await silent.at_eof(timeout=10.0)
        finally:
            await silent.close()
