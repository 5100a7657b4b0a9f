"""Signals.step_ends_at: the countdown the dashboard shows during a step pause."""

from __future__ import annotations

import asyncio
import time

from controller.signals import Signals


async def test_step_ends_at_counts_down_a_timed_pause_and_stands_still_while_paused():
    signals = Signals()
    assert signals.step_ends_at is None
    began = time.time()
    step = asyncio.create_task(signals.wait_step(30.0, interval=0.01))
    while signals.step_ends_at is None:
        await asyncio.sleep(0.005)
    assert began + 29 < signals.step_ends_at <= time.time() + 30
    signals.pause()
    while signals.step_ends_at is not None:  # noticed within one interval
        await asyncio.sleep(0.005)
    signals.resume()
    while signals.step_ends_at is None:
        await asyncio.sleep(0.005)
    signals.promote()
    assert await asyncio.wait_for(step, 5) == "promoted"
    assert signals.step_ends_at is None


async def test_a_manual_step_has_no_countdown():
    signals = Signals()
    step = asyncio.create_task(signals.wait_step(None, interval=0.01))
    await asyncio.sleep(0.05)
    assert signals.step_ends_at is None and not step.done()
    signals.promote()
    assert await asyncio.wait_for(step, 5) == "promoted"
