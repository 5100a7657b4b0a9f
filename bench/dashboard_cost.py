#!/usr/bin/env python3
"""What the dashboard costs the proxy, and whether its page keeps up with 50 services. Loopback only.

(a) cost   requests/s of `turnout serve` (wrk -t1 -c50 against one of 50 static services, the upstream a
           tiny asyncio server) with 0 vs 5 dashboard clients connected: aiohttp clients reading the
           server-sent-events stream (/events) as browsers do, started and stopped around each run.
           Rounds interleave the two cases; the ratio is of the medians, in the same run: it must be
           >= 0.95. The dashboard is on in both cases (its feed samples once a second either way).
           Also the daemon's own CPU time per request (from /proc), which other processes sharing the
           machine disturb far less than requests/s: its ratio says the same thing with less noise.
(b) page   headless Chromium on the dashboard of the same daemon (50 services, the one under load
           selected): time each render takes (the page's data-render-ms), and how far the page's last
           applied event trails the feed, sampled every 100 ms for --page-seconds.

CPU placement as in bench/harness.sh: wrk, the upstream and the stream clients on CPU 0, `turnout serve`
on CPU 1. The machine is shared and noisy: read the ratio, not the absolute requests/s.

    .venv/bin/python bench/dashboard_cost.py                       # about 2 minutes
    .venv/bin/python bench/dashboard_cost.py --rounds 7 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from _benchlib import (  # noqa: E402
    PYTHON,
    Procs,
    cpu_seconds,
    fmt,
    free_port,
    machine_line,
    md_table,
    wait_port,
)

LOAD_CPU, PROXY_CPU = "0", "1"
SERVICES = 50
CLIENTS = 5
TOKEN = "bench-" + "b" * 40
THRESHOLD = 0.95


def config_text(work: Path, proxy_port: int, dashboard_port: int, upstream: str) -> str:
    lines = ["[proxy]", f'listen = "127.0.0.1:{proxy_port}"', f'state_dir = "{work / "state"}"',
             "access_log = false",  # the proxy at its fastest: the dashboard's share is then largest
             "", "[dashboard]", f'listen = "127.0.0.1:{dashboard_port}"', f'token = "{TOKEN}"', "",
             "[services.bench]", f'upstreams = ["{upstream}"]']
    for i in range(1, SERVICES):
        lines += ["", f"[services.svc{i:02d}]", f'upstreams = ["{upstream}"]', f'host = "svc{i:02d}.bench"']
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ stream clients
def clients_role(argv: list[str]) -> None:
    """`dashboard_cost.py clients URL N`: N readers of /events until SIGTERM; prints what they read."""
    import signal

    import aiohttp

    url, count = argv[0], int(argv[1])

    async def reader(session: aiohttp.ClientSession, totals: list[int]) -> None:
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"},
                               timeout=aiohttp.ClientTimeout(total=None)) as response:
            response.raise_for_status()
            async for line in response.content:
                totals[0] += len(line)
                totals[1] += line.startswith(b"id: ")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
        totals = [0, 0]
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(reader(session, totals)) for _ in range(count)]
            print("clients: connected", flush=True)
            await stop
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        print(f"clients: read {totals[0]} bytes, {totals[1]} events", flush=True)

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ wrk
REPORT_LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def wrk(port: int, seconds: float, lua: Path, pid: int) -> tuple[float, float, int]:
    """requests/s, the proxy's CPU microseconds per request (its own process), failed requests."""
    cpu = cpu_seconds(pid)
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c50", f"-d{seconds:g}s", "--timeout",
                          "10s", "-s", str(lua), f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=seconds + 60)
    match = re.search(r"RESULT (\d+) (\d+) (\d+)", out.stdout)
    if not match:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    requests, duration, errors = map(int, match.groups())
    return requests / (duration / 1e6), (cpu_seconds(pid) - cpu) / max(requests, 1) * 1e6, errors


# ------------------------------------------------------------------------------------------ the page
async def page_part(url: str, seconds: float, profile: Path) -> dict[str, float]:
    import aiohttp

    from helpers.chromium import Browser

    async def feed_seq(session: aiohttp.ClientSession) -> int:
        async with session.get(url + "api/state", headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            return (await response.json())["seq"]

    async with Browser(profile) as browser:
        page = await browser.open(f"{url}?token={TOKEN}#bench")
        await page.wait_for(f"document.querySelectorAll('#services tbody tr').length === {SERVICES}"
                            " && +document.body.dataset.ticks >= 2")
        renders: list[float] = []
        lags: list[int] = []
        ticks_start = int(await page.evaluate("+document.body.dataset.ticks"))
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < seconds:
                renders.append(float(await page.evaluate("+document.body.dataset.renderMs")))
                published = await feed_seq(session)
                applied = int(await page.evaluate("+document.body.dataset.lastEvent.split('-')[1]"))
                lags.append(published - applied)
                await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        ticks = int(await page.evaluate("+document.body.dataset.ticks")) - ticks_start
        problems = page.problems()
    return {"render_median_ms": statistics.median(renders), "render_max_ms": max(renders),
            "ticks_per_s": ticks / elapsed, "lag_max": max(lags), "problems": len(problems)}


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "clients":
        clients_role(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each case [5]")
    parser.add_argument("--seconds", type=float, default=6.0, help="wrk seconds per run [6]")
    parser.add_argument("--page-seconds", type=float, default=15.0, help="part (b) length [15]")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="turnout-dashboard-cost-"))
    lua = work / "report.lua"
    lua.write_text(REPORT_LUA)
    upstream_port, proxy_port, dashboard_port = free_port(), free_port(), free_port()
    config = work / "turnout.toml"
    config.write_text(config_text(work, proxy_port, dashboard_port, f"127.0.0.1:{upstream_port}"))
    url = f"http://127.0.0.1:{dashboard_port}/"
    runs: dict[int, list[float]] = {0: [], CLIENTS: []}
    cpu_us: dict[int, list[float]] = {0: [], CLIENTS: []}
    errors = 0
    with Procs() as procs:
        procs.start([PYTHON, str(HERE / "_benchlib.py"), "upstreams", "--listen",
                     f"127.0.0.1:{upstream_port}=ok"], log=work / "upstream.log", cpu=LOAD_CPU)
        wait_port(upstream_port)
        serve = procs.start([PYTHON, "-m", "controller.cli", "serve", "--config", str(config)],
                            log=work / "serve.log", cpu=PROXY_CPU, cwd=str(HERE.parent))
        wait_port(proxy_port, proc=serve)
        wait_port(dashboard_port, proc=serve)
        wrk(proxy_port, 2, lua, serve.pid)  # warm-up
        for round_ in range(args.rounds):
            for clients in ((0, CLIENTS) if round_ % 2 == 0 else (CLIENTS, 0)):
                reader = None
                if clients:
                    reader = procs.start([PYTHON, __file__, "clients", url + "events", str(clients)],
                                         log=work / "clients.log", cpu=LOAD_CPU)
                    deadline = time.monotonic() + 20
                    while "clients: connected" not in (work / "clients.log").read_text():
                        if time.monotonic() > deadline:
                            raise RuntimeError("the stream clients did not connect")
                        time.sleep(0.05)
                    time.sleep(1.5)  # each got its snapshot and at least one sample
                rps, per_request, failed = wrk(proxy_port, args.seconds, lua, serve.pid)
                errors += failed
                runs[clients].append(rps)
                cpu_us[clients].append(per_request)
                if reader is not None:
                    procs.stop(reader)
                print(f"round {round_ + 1}: {clients} clients: {rps:,.0f} req/s, "
                      f"{per_request:.1f} µs CPU/request", flush=True)
        page = asyncio.run(page_part(url, args.page_seconds, work / "profile")) if _has_chromium() else None
    base, loaded = statistics.median(runs[0]), statistics.median(runs[CLIENTS])
    ratio = loaded / base
    cpu_base = statistics.median(cpu_us[0])
    cpu_ratio = cpu_base / statistics.median(cpu_us[CLIENTS])  # capacity: requests per CPU second
    table = md_table(["dashboard clients", "runs (req/s)", "median req/s", "ratio to 0 clients",
                      "proxy CPU µs/request (median)", "requests per CPU second, ratio"],
                     [[str(n), " ".join(f"{r:,.0f}" for r in runs[n]), f"{statistics.median(runs[n]):,.0f}",
                       fmt(statistics.median(runs[n]) / base, 3), fmt(statistics.median(cpu_us[n]), 1),
                       fmt(cpu_base / statistics.median(cpu_us[n]), 3)] for n in (0, CLIENTS)])
    print(f"\n#### dashboard cost (wrk -t1 -c50 -d{args.seconds:g}s x {args.rounds} interleaved rounds; "
          f"{SERVICES} static services; access log off)\n\n{table}\n")
    print(f"ratio {ratio:.3f} ({'meets' if ratio >= THRESHOLD else 'MISSES'} >= {THRESHOLD}); by the proxy's "
          f"CPU per request {cpu_ratio:.3f} ({'meets' if cpu_ratio >= THRESHOLD else 'MISSES'}); "
          f"socket/status errors: {errors}; clients: {(work / 'clients.log').read_text().splitlines()[-1]}")
    if page is not None:
        print(f"\n#### the page with {SERVICES} services (headless Chromium, {args.page_seconds:g} s)\n\n"
              + md_table(["render median (ms)", "render max (ms)", "samples applied per s",
                          "most events behind the feed", "page errors"],
                         [[fmt(page["render_median_ms"], 1), fmt(page["render_max_ms"], 1),
                           fmt(page["ticks_per_s"], 2), str(page["lag_max"]), str(page["problems"])]]))
    else:
        print("\n(b) skipped: chromium is not installed (apt-get install -y chromium)")
    print(f"\n{machine_line()}")


def _has_chromium() -> bool:
    import shutil

    return bool(shutil.which("chromium") or shutil.which("chromium-browser"))


if __name__ == "__main__":
    main()
