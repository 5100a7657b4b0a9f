"""`turnout serve --config F --watch`: apply F's services whenever its content changes (and once at
start), as `turnout apply --wait` would: journalled like any deploy, never pruning. A file that does
not read (bad TOML, a bad key, a missing image) changes nothing and is logged with the reason; the next
change is tried again. `[proxy]` settings are read at start only.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import structlog

from ..config.reader import load_config
from ..errors import TurnoutError
from .run import Applier, ApplyOptions, finish

POLL_INTERVAL = 1.0  # seconds between looks at the file (a stat and a read: cheap)

log = structlog.get_logger("turnout.apply")


def fingerprint(path: Path) -> str | None:
    """What the file holds now (None: unreadable, e.g. replaced right now: looked at again next time)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


async def watch(path: Path, applier: Applier, interval: float = POLL_INTERVAL) -> None:
    seen: str | None = None
    while True:
        now = await asyncio.to_thread(fingerprint, path)
        if now is not None and now != seen:
            seen = now
            await apply_file(path, applier)
        await asyncio.sleep(interval)


async def apply_file(path: Path, applier: Applier) -> bool:
    """One round: whether it applied (every change succeeded)."""
    try:
        config = await asyncio.to_thread(load_config, path)
        run = await finish(await applier.apply(config.services, ApplyOptions(wait=True), path))
    except TurnoutError as exc:
        log.error("apply.watch_refused", file=str(path), error=str(exc))
        return False
    log.info("apply.watch_applied", file=str(path), changed=run.plan.changed, succeeded=run.succeeded,
             plan=run.plan.lines())
    return run.succeeded
