"""A deployment's event log: followers see every event from the first, live, until it closes."""

from __future__ import annotations

import asyncio

from controller.events import EventLog


async def collect(log: EventLog) -> list[str]:
    return [event["event"] async for event in log.follow()]


async def test_followers_early_and_late_see_every_event_and_end_at_close():
    log = EventLog()
    early = asyncio.ensure_future(collect(log))
    await asyncio.sleep(0)  # the early follower is waiting for the first event
    log.emit("step", step="started")
    log.emit("step", step="switched")
    late = asyncio.ensure_future(collect(log))
    log.emit("finished", status="succeeded")
    await log.close()
    assert await asyncio.wait_for(early, 5) == ["step", "step", "finished"]
    assert await asyncio.wait_for(late, 5) == ["step", "step", "finished"]
    assert await asyncio.wait_for(collect(log), 5) == ["step", "step", "finished"]  # after the end


async def test_emitting_leaves_no_task_behind():
    """A wake-up carried by a task nobody holds can be lost (the loop keeps tasks only weakly):
    emit and close wake the followers themselves."""
    log = EventLog()
    follower = asyncio.ensure_future(collect(log))
    await asyncio.sleep(0)
    tasks = asyncio.all_tasks()
    log.emit("step", step="started")
    await log.close()
    assert asyncio.all_tasks() == tasks
    assert await asyncio.wait_for(follower, 5) == ["step"]
