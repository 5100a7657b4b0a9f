#!/usr/bin/env python3
"""How long the journal's `switched` write keeps the event loop from routing: on the loop (as
`Operations.step` writes it) against in a worker thread (as `Operations.switched` does).

For each of N writes of a real `Journal` (SQLite, WAL, synchronous=FULL: one fsync per step) in a
directory on the disk under test, a callback is scheduled just before the write starts, the way a swap
wakes the requests it releases; the figure is how long that callback waits to run (the loop's stall),
and how long the write takes. Rounds alternate the two ways.

    .venv/bin/python bench/journal_stall.py [--steps 300] [--rounds 3] [--dir .turnout-bench]
Run it under the machine lock (it is a timing benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import fmt, md_table, pct

from controller.journal import Journal

WAYS = ("on the loop", "in a thread", "one loop turn, then in a thread")


async def measure(journal: Journal, deployment: str, steps: int, way: str) -> tuple[list, list]:
    loop = asyncio.get_running_loop()
    stalls, writes = [], []
    for i in range(steps):
        woken = loop.create_future()
        scheduled = time.perf_counter()
        loop.call_soon(lambda f=woken: f.done() or f.set_result(time.perf_counter()))
        if way == WAYS[0]:
            journal.step(deployment, "switched", weights={"v2": 100}, n=i)
        else:
            if way == WAYS[2]:
                await asyncio.sleep(0)
            await asyncio.to_thread(journal.step, deployment, "switched", weights={"v2": 100}, n=i)
        writes.append((time.perf_counter() - scheduled) * 1000)
        stalls.append((await woken - scheduled) * 1000)
    return stalls, writes


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=".", help="where the journal file goes (the disk under test)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="journal-stall-") as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite3")
        deployment = journal.begin("web", "bluegreen", "v2", "app:v2", from_version="v1").id
        results: dict[str, tuple[list, list]] = {way: ([], []) for way in WAYS}
        for r in range(args.rounds):
            for name in (list(results) if r % 2 == 0 else list(results)[::-1]):
                stalls, writes = await measure(journal, deployment, args.steps, name)
                results[name][0].extend(stalls)
                results[name][1].extend(writes)
        journal.close()
    rows = [[name, len(s), fmt(pct(s, 50), 3), fmt(pct(s, 99), 3), fmt(max(s), 3), fmt(pct(w, 50), 3),
             fmt(pct(w, 99), 3)] for name, (s, w) in results.items()]
    print(md_table(["journal write", "steps", "loop stall p50 ms", "p99 ms", "max ms", "write p50 ms",
                    "write p99 ms"], rows))


if __name__ == "__main__":
    asyncio.run(main())
