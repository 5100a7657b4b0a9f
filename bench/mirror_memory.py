"""Shadow traffic must not cost clients anything: open-loop load through the standalone proxy with a mirror
at 10% whose target is dead, slow or a black hole, against the same proxy without a mirror, in interleaved
rounds. Per run: what the clients saw (sent, failed, p50/p99) and the proxy's resident memory sampled every
second (start, peak, end), plus the mirror's own counters.

    flock -x /tmp/turnout-machine.lock .venv/bin/python bench/mirror_memory.py \\
        [--rate 1000] [--duration 60] [--rounds 2] [--variants none,dead,slow,black-hole]

The proxy (bench/rules_proxy.py) runs on CPU 1; the upstream (a small asyncio server answering "ok") and
this load generator on CPU 0. Loopback only; every process started here is ended by its process group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.rehearsal.loadgen import LoadConfig, Outcome, run_load  # noqa: E402

UPSTREAM = """
import asyncio, sys
async def answer(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n"
                         b"Content-Type: text/plain\\r\\n\\r\\nok\\n")
    except Exception:
        writer.transport.abort()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
import uvloop
uvloop.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def spawn(command: list[str], **kwargs: object) -> subprocess.Popen:
    """A process in a session (process group) of its own, ended with its group by `stop`."""
    return subprocess.Popen(command, start_new_session=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop(process: subprocess.Popen) -> str:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the proxy's child (a slow target) goes with its group
    except ProcessLookupError:
        pass
    return out.decode(errors="replace") if out else ""


async def one_run(variant: str, upstream: str, args: argparse.Namespace) -> dict:
    port = free_port()
    command = ["taskset", "-c", "1", sys.executable, str(ROOT / "bench/rules_proxy.py"),
               "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--slow", str(args.slow)]
    if variant != "none":
        command += ["--mirror", variant, "--percent", str(args.percent)]
    proxy = spawn(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proxy)
        samples: list[float] = [rss_mb(proxy.pid)]
        stop_sampling = asyncio.Event()

        async def sample() -> None:
            while not stop_sampling.is_set():
                try:
                    await asyncio.wait_for(stop_sampling.wait(), 1.0)
                except TimeoutError:
                    samples.append(rss_mb(proxy.pid))

        sampler = asyncio.create_task(sample())
        config = LoadConfig(url=f"http://127.0.0.1:{port}", duration=args.duration, rate=args.rate,
                            new_connections=0.0, timeout=10.0, max_requests=10_000_000)
        result = await run_load(config)
        stop_sampling.set()
        await sampler
        samples.append(rss_mb(proxy.pid))
    finally:
        out = stop(proxy)
    latencies = sorted(r.latency for r, o in zip(result.records, result.outcomes, strict=True)
                       if o is Outcome.OK)
    mirror = next((json.loads(line[7:]) for line in out.splitlines() if line.startswith("mirror ")), {})

    def q(fraction: float) -> float:
        return latencies[min(len(latencies) - 1, int(fraction * len(latencies)))] * 1000 if latencies else 0.0

    return {"variant": variant, "sent": result.sent, "failed": result.sent - result.succeeded,
            "not_sent": result.not_sent, "p50_ms": round(q(0.50), 2), "p99_ms": round(q(0.99), 2),
            "p999_ms": round(q(0.999), 2), "rss_start_mb": round(samples[0], 1),
            "rss_peak_mb": round(max(samples), 1), "rss_end_mb": round(samples[-1], 1), "mirror": mirror}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--percent", type=float, default=10.0)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds the slow target takes")
    parser.add_argument("--variants", default="none,dead,slow,black-hole")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    upstream_port = free_port()
    upstream = spawn(["taskset", "-c", "0", sys.executable, "-c", UPSTREAM, str(upstream_port)])
    runs = []
    try:
        wait_port(upstream_port, upstream)
        for round_no in range(1, args.rounds + 1):
            for variant in args.variants.split(","):
                run = await one_run(variant, f"127.0.0.1:{upstream_port}", args)
                run["round"] = round_no
                runs.append(run)
                print(json.dumps(run), flush=True)
    finally:
        stop(upstream)
    print(f"\n{'variant':<11} {'round':>5} {'sent':>7} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'p99.9':>7} {'RSS start':>9} {'peak':>6} {'end':>6}  mirror")
    for run in runs:
        m = run["mirror"]
        mirror = (f"sampled {m['sampled']} sent {m['sent']} failed {m['failed']} dropped "
                  f"{m['dropped_queue_full'] + m['dropped_rate']}" if m else "-")
        print(f"{run['variant']:<11} {run['round']:>5} {run['sent']:>7} {run['failed']:>6} "
              f"{run['p50_ms']:>7} {run['p99_ms']:>7} {run['p999_ms']:>7} {run['rss_start_mb']:>9} "
              f"{run['rss_peak_mb']:>6} {run['rss_end_mb']:>6}  {mirror}")


if __name__ == "__main__":
    asyncio.run(main())
