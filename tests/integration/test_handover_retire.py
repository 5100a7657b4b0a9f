"""Retiring a listener whose socket a new process accepts on (proxy/handover.py): new connections go to
the new server, each old connection ends between two requests (the next answer says `Connection:
close`), idle ones close after the grace, and what is in flight finishes. Real sockets, two servers
sharing one listening socket as the old and the new daemon do."""

from __future__ import annotations

import asyncio
import os
import socket
from contextlib import asynccontextmanager

import pytest

from helpers.upstreams import RawClient, fetch, running_proxy, service, wait_for
from proxy.config import ProxyConfig
from proxy.handover import retire
from proxy.router import Router
from proxy.server import ProxyServer


@pytest.fixture
def upstream_names() -> tuple[str, ...]:
    return ("old", "new")


@asynccontextmanager
async def old_and_new(ups):
    """The old server (routing to upstream "old") and, once `start_new()` is called, a new one accepting
    on the same listening socket (routing to "new"): connections made before it are the old one's."""
    old_router, new_router = Router(), Router()
    old_router.set_service(service(pools={"v1": (100, [ups[0].address])}))
    new_router.set_service(service(pools={"v1": (100, [ups[1].address])}))
    async with running_proxy(old_router, access_log=False) as old:
        new = ProxyServer(new_router, ProxyConfig(listen="127.0.0.1:0", access_log=False))

        async def start_new() -> ProxyServer:
            new.sock = socket.socket(fileno=os.dup(old.sockets[0].fileno()))  # as SCM_RIGHTS passes it
            await new.start()
            return new

        try:
            yield old, start_new
        finally:
            await new.stop(2.0)


async def test_new_connections_reach_the_new_server_and_a_kept_one_ends_with_its_next_answer(ups):
    async with old_and_new(ups) as (old, start_new):
        port = old.port
        kept = await RawClient.connect(port)
        first = await kept.request()
        assert first.body == b"old" and first.header("connection") != "close"
        await start_new()
        retiring = asyncio.create_task(retire(old, timeout=10.0, grace=30.0, spread=0))
        await wait_for(lambda: old._server is not None and not old._server.is_serving())
        for _ in range(5):  # the old one accepts no more: every new connection is the new one's
            assert (await fetch(port)).body == b"new"
        second = await kept.request()  # between requests: answered, and told the connection ends
        assert second.status == 200 and second.body == b"old"
        assert second.header("connection") == "close"
        assert await kept.at_eof()
        assert await asyncio.wait_for(retiring, 5) == 0
        await old.stop(1.0)  # the old one's copy of the socket is gone: the new one still accepts
        assert (await fetch(port)).body == b"new"
        await kept.close()


async def test_a_request_in_flight_finishes_and_its_answer_says_close(ups):
    async with old_and_new(ups) as (old, start_new):
        client = await RawClient.connect(old.port)
        await client.send(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await wait_for(lambda: any(c.busy for c in old.connections))
        await start_new()
        retiring = asyncio.create_task(retire(old, timeout=10.0, grace=30.0, spread=0))
        answer = await client.read_response()
        assert answer.status == 200 and answer.body == b"old" and answer.header("connection") == "close"
        assert await client.at_eof()
        assert await asyncio.wait_for(retiring, 5) == 0
        await client.close()


async def test_an_idle_connection_closes_after_the_grace_but_one_mid_request_is_answered(ups):
    async with old_and_new(ups) as (old, start_new):
        idle = await RawClient.connect(old.port)
        assert (await idle.request()).status == 200
        partial = await RawClient.connect(old.port)
        assert (await partial.request()).status == 200
        await partial.send(b"GET / HTTP/1.1\r\nHost: app")  # a request half sent when the retiring starts
        await wait_for(lambda: any(c.buf for c in old.connections))
        await start_new()
        retiring = asyncio.create_task(retire(old, timeout=10.0, grace=0.05, spread=0))
        assert await idle.at_eof()  # idle past the grace: closed between requests
        assert not retiring.done()
        await partial.send(b".test\r\n\r\n")  # the rest arrives after the idle one was closed
        answer = await partial.read_response()
        assert answer.status == 200 and answer.header("connection") == "close"
        assert await partial.at_eof()
        assert await asyncio.wait_for(retiring, 5) == 0
        await idle.close()
        await partial.close()


async def test_what_is_still_in_flight_at_the_deadline_is_aborted_and_counted(ups):
    async with old_and_new(ups) as (old, start_new):
        client = await RawClient.connect(old.port)
        await client.send(b"GET /slow?s=5 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        await wait_for(lambda: any(c.busy for c in old.connections))
        await start_new()
        assert await retire(old, timeout=0.1, grace=30.0, spread=0) == 1
        assert await client.at_eof()
        await client.close()


async def test_connections_are_retired_one_after_another_longest_idle_first(ups):
    async with old_and_new(ups) as (old, start_new):
        first, second = await RawClient.connect(old.port), await RawClient.connect(old.port)
        assert (await first.request()).status == 200
        assert (await second.request()).status == 200  # idle for less time than the first
        await start_new()
        retiring = asyncio.create_task(retire(old, timeout=60.0, grace=60.0, spread=20.0))
        await wait_for(lambda: sum(c.stopping for c in old.connections) == 1)
        assert (await first.request()).header("connection") == "close"  # its turn came at once
        kept = await second.request()  # its turn is 10 s later: still kept alive meanwhile
        assert kept.status == 200 and kept.header("connection") != "close"
        retiring.cancel()
        await first.close()
        await second.close()


async def test_a_request_sent_as_its_idle_connection_is_retired_is_answered_not_lost(ups):
    async with old_and_new(ups) as (old, start_new):
        kept = await RawClient.connect(old.port)
        assert (await kept.request()).status == 200
        await start_new()
        # The request reaches the old server's socket before its loop reads it: the retiring's first
        # sweep (run before `retire` first yields) finds the connection idle past the grace.
        kept.writer.write(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert await retire(old, timeout=5.0, grace=0.0, spread=0) == 0
        answer = await kept.read_response()
        assert answer.status == 200 and answer.body == b"old" and answer.header("connection") == "close"
        assert await kept.at_eof()
        await kept.close()


async def test_a_long_idle_connection_waits_for_its_next_request_and_is_closed_at_the_deadline(ups):
    async with old_and_new(ups) as (old, start_new):
        kept, idle = await RawClient.connect(old.port), await RawClient.connect(old.port)
        assert (await kept.request()).status == 200
        assert (await idle.request()).status == 200
        for connection in old.connections:
            connection.t_end -= 5.0  # as if idle for 5 s already: its client may still pick it any moment
        await start_new()
        retiring = asyncio.create_task(retire(old, timeout=2.0, spread=0))
        await wait_for(lambda: all(c.stopping for c in old.connections))
        answer = await kept.request()  # not closed under the client: answered, and told it ends
        assert answer.status == 200 and answer.body == b"old" and answer.header("connection") == "close"
        assert await kept.at_eof()
        assert await asyncio.wait_for(retiring, 5) == 0  # the one still idle is closed then, not aborted
        assert await idle.at_eof()
        await kept.close()
        await idle.close()
