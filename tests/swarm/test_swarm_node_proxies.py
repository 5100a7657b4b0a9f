"""A Turnout proxy on each Swarm node (issue #16): `turnout serve --role proxy` in each lab node's network
namespace, on the node's address, following the controller's routing listener. The four strategies move
a 4-replica service spread over both nodes from v1 to v2 with the load split between the two nodes'
proxies and no failed request; `turnout nodes` shows both proxies, each at its node's address."""

from __future__ import annotations

import asyncio
import json

import pytest

from helpers.daemon import Daemon
from helpers.live import load_while, status
from helpers.swarm_lab import NODE_ADDRESSES, NODE_PROXY_PORT

pytestmark = pytest.mark.swarm


async def proxies_following(serve: Daemon, ids: set[str], timeout: float = 60.0) -> list[dict]:
    """`turnout nodes --json`'s proxies once exactly `ids` follow the controller and acked a generation."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        code, out = await serve.acli("nodes", "--json")
        assert code == 0, out
        proxies = json.loads(out)["proxies"]
        if {p["id"] for p in proxies} == ids and all(p["acked_generation"] >= 0 for p in proxies):
            return proxies
        if loop.time() > deadline:
            raise AssertionError(f"not the proxies {sorted(ids)} following the controller: {out}")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("strategy", ["rolling", "bigbang", "bluegreen", "canary"])
async def test_strategy_through_a_proxy_on_each_node_loses_nothing(swarm_node_proxies, strategy):
    serve, urls = swarm_node_proxies
    proxies = await proxies_following(serve, set(urls))
    assert {p["id"]: p["address"] for p in proxies} == {
        f"n{number}": f"{address}:{NODE_PROXY_PORT}" for number, address in enumerate(NODE_ADDRESSES, 1)}
    async with load_while(urls, concurrency=3, max_requests=100_000) as results:
        code, out = await serve.acli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", strategy)
    assert code == 0, out
    versions: set[str] = set()
    for proxy_id, result in results.items():  # each node's proxy carried its share and lost none of it
        summary = f"{proxy_id}: {result.summary()}"
        assert result.sent > 20, summary
        assert (result.failed_by_proxy, result.truncated, result.app_errors) == (0, 0, 0), summary
        versions |= {r.version for r in result.records if r.version}
    assert versions == {"v1", "v2"}
    assert status(serve)["stable"]["version"] == "v2"
    await proxies_following(serve, set(urls))  # both still following after the deploy

    code, out = await serve.acli("nodes")
    assert code == 0 and all(f"{a}:{NODE_PROXY_PORT}" in out for a in NODE_ADDRESSES), out
