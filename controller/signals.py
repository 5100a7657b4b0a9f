"""Operator commands to a running deployment: promote, abort, pause and resume.

Strategies wait through `Signals.wait_step`, so each command takes effect at once, in any step pause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .errors import DeployAborted


class Signals:
    def __init__(self) -> None:
        self.promoted = asyncio.Event()
        self.aborted = asyncio.Event()
        self.resumed = asyncio.Event()
        self.resumed.set()  # not paused
        self.abort_reason = ""
        self.forced = False  # the abort was `abort --force`: it may roll back past a schema floor
        # Wall-clock time the current step pause ends (None: no timed pause running, or paused): what
        # the dashboard counts down to.
        self.step_ends_at: float | None = None

    @property
    def paused(self) -> bool:
        return not self.resumed.is_set()

    def promote(self) -> None:
        self.promoted.set()
        self.resumed.set()

    def abort(self, reason: str = "aborted by operator", force: bool = False) -> None:
        self.abort_reason = reason
        self.forced = self.forced or force
        self.aborted.set()
        self.resumed.set()

    def pause(self) -> None:
        self.resumed.clear()

    def resume(self) -> None:
        self.resumed.set()

    def freeze(self) -> None:
        """The deploy froze: what was asked before (a promote of a canary step, an abort) does not count."""
        self.promoted.clear()
        self.aborted.clear()
        self.forced = False
        self.resumed.set()

    async def wait_resolved(self) -> str:
        """A frozen deploy waits here for `promote` ("promoted") or `abort --force` ("forced")."""
        while True:
            waiters = [asyncio.ensure_future(e.wait()) for e in (self.promoted, self.aborted)]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if self.promoted.is_set():
                return "promoted"
            if self.forced:
                return "forced"
            self.aborted.clear()  # a plain abort does not end a freeze (the API refuses it first)

    def check(self) -> None:
        if self.aborted.is_set():
            raise DeployAborted(self.abort_reason)

    async def wait_step(self, seconds: float | None, check: Callable[[], Awaitable[None]] | None = None,
                        interval: float = 1.0) -> str:
        """Wait out one step pause: `seconds` (None: until promoted), calling `check` every `interval`.

        Returns "elapsed" or "promoted"; raises DeployAborted on abort (and whatever `check` raises).
        While paused (noticed within one `interval`), the clock of the step stands still."""
        loop = asyncio.get_running_loop()
        remaining = float("inf") if seconds is None else seconds
        try:
            return await self._wait_step(loop, remaining, check, interval)
        finally:
            self.step_ends_at = None

    async def _wait_step(self, loop: asyncio.AbstractEventLoop, remaining: float,
                         check: Callable[[], Awaitable[None]] | None, interval: float) -> str:
        while True:
            self.check()
            if self.promoted.is_set():
                return "promoted"
            if remaining <= 0:
                return "elapsed"
            if self.paused:
                self.step_ends_at = None
                await self.resumed.wait()
                continue
            self.step_ends_at = time.time() + remaining if remaining != float("inf") else None
            started = loop.time()
            tick = min(interval, remaining)
            waiters = [asyncio.ensure_future(e.wait()) for e in (self.promoted, self.aborted)]
            try:
                await asyncio.wait(waiters, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            remaining -= loop.time() - started
            self.check()
            if check is not None and not self.promoted.is_set():
                await check()

