"""Closing an asyncio server without leaking the connections it was accepting.

On asyncio's own (selector) event loop an accepted connection gets its transport in a task, a loop turn
after the accept. Python 3.11's `Server.close()` does not wait for those: the transport made after it
fails (an assertion in `Server._attach`, logged as "Error on transport creation for incoming
connection") and its socket is never closed, so garbage collection later warns "unclosed transport".
`stop_accepting` removes the listening sockets from the loop first and lets the accepts under way finish
while the server is still open; `close()` after it is safe. uvloop accepts synchronously: nothing to do.
"""

from __future__ import annotations

import asyncio
import selectors


def pause_accepting(server: asyncio.AbstractServer) -> bool:
    """Remove `server`'s listening sockets from the loop (no new accept); False when the loop is not a
    selector loop (uvloop), where there is nothing to do."""
    loop = asyncio.get_running_loop()
    if not isinstance(getattr(loop, "_selector", None), selectors.BaseSelector):
        return False  # uvloop makes the transport in the accept itself
    for sock in getattr(server, "sockets", None) or ():
        loop.remove_reader(sock.fileno())
    return True


async def let_accepts_finish() -> None:
    """An accept task makes its transport in the next turn and calls connection_made in the one after
    (the loop runs ready callbacks in order): two turns see both done."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def stop_accepting(server: asyncio.AbstractServer) -> None:
    """Take no new connection on `server`'s sockets; connections already accepted get their transports
    (and `connection_made`) before this returns. Call `server.close()` afterwards."""
    if pause_accepting(server):
        await let_accepts_finish()
