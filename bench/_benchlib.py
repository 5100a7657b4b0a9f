"""Shared helpers for Turnout's Python benchmarks (switch_latency, deploy_overhead, scale, zero_loss).

Also a small subprocess role: tiny HTTP/1.1 keep-alive upstreams on loopback, one process serving any
number of ports (each answering a fixed body), so a benchmark can have 2 or 1,000 upstreams cheaply:

    python bench/_benchlib.py upstreams --listen 127.0.0.1:19001=a --listen 127.0.0.1:19002=b
    python bench/_benchlib.py upstreams --range 127.0.0.1:20000:1000=ok

Loopback only. Every process a benchmark starts runs in its own session and is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
LOOPBACK = ("127.0.0.1", "::1")


# ------------------------------------------------------------------------------------------ stats
def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (always a value that was really measured); nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def med(values: Iterable[float]) -> float:
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}".replace(",", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; `align` is one char per column (l or r), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    out = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
    ]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def machine_line() -> str:
    cpus = os.cpu_count()
    try:
        model = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "?"
    load = os.getloadavg()
    return (
        f"{cpus} vCPU ({model}), Python {sys.version.split()[0]}, "
        f"load average at the end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
    )


# ------------------------------------------------------------------------------------------ system
def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards `wanted` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def preexec_nofile(wanted: int):  # for subprocess.Popen(preexec_fn=...): the child gets the raised limit
    def raise_it() -> None:
        raise_nofile(wanted)

    return raise_it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(count: int, start: int = 30000, stop: int = 60000) -> int:
    """A base port such that base..base+count-1 are all free on 127.0.0.1 right now."""
    base = start
    while base + count < stop:
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    base = port + 1
                    break
        if ok:
            return base
    raise RuntimeError(f"no block of {count} free ports in {start}-{stop}")


def wait_port(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = 20.0,
    proc: subprocess.Popen | None = None,
    unix: str | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            if unix:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(unix)
            else:
                with socket.create_connection((host, port), timeout=0.5):
                    pass
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on {unix or f'{host}:{port}'} within {timeout}s")


def rss_kib(pid: int) -> int:
    """Resident set size of one process, KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_comm() -> dict[str, float]:
    """CPU seconds (own + waited-for children) of every process on the host, summed per command name.
    Read-only; used to say where the CPU went during a run."""
    tck = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        totals[comm] = totals.get(comm, 0.0) + sum(int(f) for f in fields[11:15]) / tck
    return totals


class Procs:
    """Processes a benchmark started: each in its own session, stopped by PID (never by name)."""

    def __init__(self) -> None:
        self.items: list[subprocess.Popen] = []

    def start(
        self,
        args: Sequence[str],
        log: Path | None = None,
        nofile: int | None = None,
        cpu: str | None = None,
        **kw,
    ) -> subprocess.Popen:
        if cpu:
            args = ["taskset", "-c", cpu, *args]
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            list(args),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=preexec_nofile(nofile) if nofile else None,
            **kw,
        )
        self.items.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the group led by this PID (its own session)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.items:
            self.items.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.items)):
            self.stop(proc)

    def __enter__(self) -> Procs:
        # A SIGTERM (`timeout`, a stop by PID) must still stop what was started: by default Python
        # dies without unwinding, so turn it into SystemExit, which runs __exit__.
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_all()
        finally:
            if self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def remove_bench_containers() -> int:
    """Remove every container labelled turnout.bench=1 (what these benchmarks started)."""
    import docker

    client = docker.from_env()
    try:
        containers = client.containers.list(all=True, filters={"label": "turnout.bench=1"})
        for container in containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        return len(containers)
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ upstreams
class _Upstream(asyncio.Protocol):
    """Answers every request head (GET, no body) with a fixed keep-alive response."""

    __slots__ = ("buf", "response", "transport")

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        n = data.count(b"\r\n\r\n")
        if n:
            self.transport.write(self.response * n)  # type: ignore[union-attr]
            data = data[data.rfind(b"\r\n\r\n") + 4 :]
        self.buf = data


def response_for(body: str) -> bytes:
    payload = (body + "\n").encode()
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload
    )


async def _serve_upstreams(targets: list[tuple[str, int, str]]) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for host, port, body in targets:
        response = response_for(body)
        servers.append(
            await loop.create_server(
                lambda r=response: _Upstream(r), host, port, backlog=4096, reuse_address=True
            )
        )
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"upstreams: serving {len(servers)} ports", flush=True)
    await stop


def _upstreams_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="_benchlib.py upstreams")
    parser.add_argument("--listen", action="append", default=[], help="HOST:PORT=BODY (repeatable)")
    parser.add_argument("--range", action="append", default=[], help="HOST:BASEPORT:COUNT=BODY")
    args = parser.parse_args(argv)
    targets = []
    for item in args.listen:
        addr, _, body = item.partition("=")
        host, _, port = addr.rpartition(":")
        targets.append((host, int(port), body or "ok"))
    for item in args.range:
        addr, _, body = item.partition("=")
        host, base, count = addr.rsplit(":", 2)
        targets += [(host, int(base) + i, body or "ok") for i in range(int(count))]
    for host, _, _ in targets:
        if host not in LOOPBACK:
            raise SystemExit(f"loopback only, not {host}")
    raise_nofile(len(targets) * 4 + 20000)
    import uvloop

    uvloop.run(_serve_upstreams(targets))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "upstreams":
        _upstreams_main(sys.argv[2:])
    else:
        raise SystemExit(__doc__)
