"""`turnout serve --takeover` from tests: start the new daemon beside the running one and wait until the
old one has exited and the new one serves (both are events: a process exit, a line in a log)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

from helpers.daemon import Daemon


def start_takeover(serve: Daemon, *extra: str) -> tuple[subprocess.Popen[bytes], object]:
    """The new process, its log path; `serve` is left pointing at the old one."""
    n = sum(1 for _ in serve.workdir.glob("serve-takeover-*.log")) + 1
    log_path = serve.workdir / f"serve-takeover-{n}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen([*serve.serve_args(), "--takeover", *extra], stdout=log,
                                   stderr=subprocess.STDOUT, env=serve.env, cwd=serve.workdir)
    return process, log_path


def events(log_path, name: str) -> list[dict]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                out.append(event)
    return out


def take_over(serve: Daemon, timeout: float = 60.0) -> dict:
    """Replace `serve`'s process with a `--takeover` one; returns the new one's `daemon.took_over` event.
    Raises with both logs when the old one does not exit cleanly or the new one does not start."""
    old = serve.process
    assert old is not None
    new, log_path = start_takeover(serve)
    deadline = time.monotonic() + timeout
    while not events(log_path, "daemon.started"):
        if new.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the --takeover daemon did not start (exit {new.poll()}):\n"
                                 f"{log_path.read_text(errors='replace')[-4000:]}\nold:\n{serve.log()}")
        time.sleep(0.02)
    code = old.wait(timeout)  # it exits once its last connection ended (at most drain_timeout)
    assert code == 0, f"the old daemon exited with {code}:\n{serve.log()}"
    serve.process, serve.log_path = new, log_path
    return events(log_path, "daemon.took_over")[0]


async def atake_over(serve: Daemon, timeout: float = 60.0) -> dict:
    """`take_over` off the event loop, so traffic made on the loop keeps flowing meanwhile."""
    return await asyncio.to_thread(take_over, serve, timeout)
