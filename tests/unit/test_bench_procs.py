"""bench/_benchlib.Procs stops what a benchmark started, even when the benchmark itself is stopped by
SIGTERM (as `timeout` does): nothing it started may be left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPT = f"""
import sys, time
sys.path.insert(0, {str(BENCH)!r})
from _benchlib import Procs
with Procs() as procs:
    child = procs.start(["sleep", "60"])
    print(child.pid, flush=True)
    time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose (its parent, the benchmark, has not reaped it yet)
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_a_sigterm_to_the_benchmark_stops_its_children():
    with subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True) as bench:
        try:
            child = int(bench.stdout.readline())
            assert alive(child)
            bench.send_signal(signal.SIGTERM)
            assert bench.wait(10) == 128 + signal.SIGTERM
            deadline = time.monotonic() + 5
            while alive(child) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not alive(child)
        finally:
            if bench.poll() is None:
                bench.kill()
