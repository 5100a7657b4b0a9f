"""The tests' loopback servers end every connection they accepted when they close, also those accepted
in the loop turns just before (helpers/loopback.py): such a connection was left open, and garbage
collection failed a later test with "unclosed transport"."""

from __future__ import annotations

import asyncio
import socket

from helpers import loopback
from helpers.upstreams import TestUpstream


def connect_now(port: int, n: int) -> list[socket.socket]:
    """`n` connections completed by the kernel (in the listening socket's backlog), none accepted yet."""
    clients = []
    for _ in range(n):
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        clients.append(client)
    return clients


async def ended(client: socket.socket, timeout: float = 5.0) -> bool:
    """Whether the server's side of `client` closed (EOF or reset) within `timeout`."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await asyncio.wait_for(loop.sock_recv(client, 4096), timeout)
            if not data:
                return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False
    finally:
        client.close()


async def test_connections_accepted_just_before_close_are_ended():
    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server = await loopback.start_server(idle)
    clients = connect_now(server.sockets[0].getsockname()[1], 10)
    # The first turn selects the listening socket, the second runs its accept: the connections are
    # accepted, their transports not made yet (asyncio makes them in a task).
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await server.wait_closed()
    assert all(await asyncio.gather(*(ended(c) for c in clients)))


async def test_a_test_upstream_closed_as_connections_arrive_ends_them_all():
    upstream = await TestUpstream("a").start()
    clients = connect_now(upstream.port, 10)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await upstream.close()
    assert all(await asyncio.gather(*(ended(c) for c in clients)))
