"""A deployment's progress as an append-only list of events that any number of readers can follow.

The CLI streams these (NDJSON over the admin socket) so `turnout deploy` shows steps, weights and
health live, and a reader that attaches late still sees everything from the start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any


class EventLog:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed = False
        # Set (and replaced) at every change: readers wake without a task per event, so no wake-up
        # rides on a task nobody holds (the loop keeps only weak references to tasks).
        self._changed = asyncio.Event()

    def emit(self, event: str, **data: Any) -> dict[str, Any]:
        entry = {"event": event, "time": round(time.time(), 3), **data}
        self.events.append(entry)
        self._wake()
        return entry

    async def close(self) -> None:
        self.closed = True
        self._wake()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from the first, then new ones as they come, until the log closes."""
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.closed:
                return
            await self._changed.wait()  # no await since the checks above: no change can slip by

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def describe_event(event: dict[str, Any]) -> str:
    """One readable line for a deploy event (the CLI's live progress)."""
    kind = event.get("event")
    if kind == "finished":
        text = f"finished: {event['status']} in {event.get('seconds', 0):.1f}s"
        if event.get("message"):
            text += f" — {event['message']}"
        if event.get("timings"):
            text += " (" + ", ".join(f"{k} {v:.2f}s" for k, v in event["timings"].items()) + ")"
        if "proxy_failed" in event:
            text += f"; the proxy failed {event['proxy_failed']} request(s) during it"
        for note in event.get("notes") or ():
            text += f"\n    note: {note}"
        return text
    if kind == "plan":
        pause = event.get("step_pause")
        each = "until promoted" if pause is None else f"{pause:g}s each"
        return f"{'plan':<10} weights {' -> '.join(f'{w}%' for w in event.get('steps', []))} ({each})"
    if kind == "analysis":
        return f"{'analysis':<10} {describe_verdict(event)}"
    if kind == "preview_access":
        return (f"{'preview':<10} reach it with the header `{event['header']}` "
                f"or the cookie `{event['cookie']}`")
    hook = describe_hook(event.get("step"), event)
    if hook is not None:
        return f"{event['step']:<10} {hook}"
    detail = {k: v for k, v in event.items() if k not in ("event", "time", "step")}
    weights = detail.pop("weights", None)
    text = f"{event.get('step', kind):<10}"
    if weights:
        text += " " + " / ".join(f"{pool} {w}%" for pool, w in weights.items())
    return text + "".join(f" {k}={v}" for k, v in detail.items())


def describe_verdict(event: dict[str, Any]) -> str:
    """A canary analysis verdict (an `analysis` event) in a few words."""
    verdict = event.get("verdict", "?")
    if verdict == "waiting":
        return f"waiting: {event.get('requests', 0)} of {event.get('needed', 0)} requests on the canary"
    if verdict == "passing":
        return (f"passing: {event.get('error_rate', 0):.1%} 5xx over {event.get('requests', 0)} requests "
                f"(limit {event.get('max_error_rate', 0):.1%})")
    return f"{verdict}: {event.get('reason', '')}"


def describe_hook(step: str | None, detail: dict[str, Any]) -> str | None:
    """A hook's steps as one line (`migrate oneoff: passed, exit 0 in 1.2s`), its output indented."""
    if step == "hook_started":
        return f"{detail.get('point')} {detail.get('kind')} (timeout {detail.get('timeout')}s)"
    if step != "hook_finished":
        return None
    text = (f"{detail.get('point')} {detail.get('kind')}: {'passed' if detail.get('ok') else 'FAILED'}, "
            f"{detail.get('result')} in {detail.get('seconds', 0):.1f}s")
    if not detail.get("ok"):
        text += f" (on_failure = {detail.get('on_failure')})"
    if detail.get("output"):
        text += "".join(f"\n             | {line}" for line in str(detail["output"]).splitlines())
    return text
