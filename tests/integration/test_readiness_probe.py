"""Readiness's HTTP probe (controller/readiness.py) against a real loopback upstream: only a 2xx or
3xx answer counts as ready (redirects are not followed), as for the proxy's health checks."""

from __future__ import annotations

import aiohttp
import pytest

from controller.readiness import HttpProbe
from helpers.upstreams import TestUpstream, dead_address


@pytest.fixture
async def upstream():
    up = await TestUpstream("app").start()
    yield up
    await up.close()


@pytest.mark.parametrize(("status", "ready"), [(200, True), (204, True), (302, True), (304, True),
                                                (404, False), (410, False), (500, False), (503, False)])
async def test_only_2xx_and_3xx_count_as_ready(upstream, status, ready):
    async with aiohttp.ClientSession() as session:
        result = await HttpProbe(f"/status/{status}").check(session, upstream.address, 1.0)
    assert (result.ok, result.detail) == (ready, f"HTTP {status}")


async def test_a_refused_connection_is_not_ready():
    async with aiohttp.ClientSession() as session:
        result = await HttpProbe("/healthz").check(session, dead_address(), 1.0)
    assert not result.ok and result.detail.startswith("connection error")
