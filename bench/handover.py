"""Hand-over: ten `turnout serve --takeover` in a row under open-loop load, and what clients saw.

A `turnout serve` (controller.testing.plugin.TurnoutDaemon, access log on, as by default) serves `web`,
2 replicas of turnout-testapp:v1. One open-loop load (controller.rehearsal.loadgen.run_load: 500
requests/s, 10% on new connections, the rest keep-alive) runs through the proxy for the whole run, while
this script, every `--every` seconds, starts `turnout serve --takeover` (same options) and waits until
the new daemon serves and the old one has exited (its last connection ended). A hand-over's window runs
from starting the new process (its Python start-up included) to the old one's exit.

Printed, from the one run: requests sent, failed by the proxy, refused (no connection or closed before an
answer), truncated; p50/p99/max latency of the requests started inside a hand-over window beside those
started outside every window (the same load, same daemon, same minute); each hand-over's times.

    .venv/bin/python bench/handover.py                      # 10 hand-overs, about 1 min
    .venv/bin/python bench/handover.py --rate 500 --handovers 10 --every 3 --json

Bounded: at most --handovers hand-overs (<= 50), the load stops 2 s after the last one (and at
--max-seconds whatever happens); containers carry turnout.bench=1 and are all removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import fmt, machine_line, md_table, med, pct, remove_bench_containers

BENCH_LABELS = {"turnout.bench": "1"}
IMAGE = "turnout-testapp:v1"


def _started(log: Path) -> bool:
    return any('"event": "daemon.started"' in line for line in log.read_text(errors="replace").splitlines())


def hand_over(daemon, n: int, timeout: float) -> dict:
    """One `serve --takeover`; returns its times (seconds from its start). Raises on any failure."""
    old = daemon.process
    log = daemon.workdir / f"serve-{n}.log"
    t0 = time.monotonic()
    with log.open("ab") as out:
        new = subprocess.Popen([*daemon.serve_args(), "--takeover"], stdout=out, stderr=subprocess.STDOUT,
                               env=daemon.env, cwd=daemon.workdir)
    while not _started(log):
        if new.poll() is not None or time.monotonic() - t0 > timeout:
            raise RuntimeError(f"hand-over {n}: the new daemon did not start (exit {new.poll()}):\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.01)
    serving = time.monotonic() - t0
    code = old.wait(timeout)
    if code != 0:
        raise RuntimeError(f"hand-over {n}: the old daemon exited with {code}:\n{daemon.log()}")
    daemon.process, daemon.log_path = new, log
    return {"serving_s": serving, "old_exited_s": time.monotonic() - t0}


async def run(daemon, args: argparse.Namespace) -> tuple[object, list[dict]]:
    from controller.rehearsal.loadgen import LoadConfig, Marks, run_load

    marks, stop = Marks(), asyncio.Event()
    config = LoadConfig(url=daemon.url, rate=args.rate, duration=args.max_seconds,
                        new_connections=args.new_connections, timeout=10.0,
                        max_requests=int(args.rate * args.max_seconds) + 1)
    load = asyncio.create_task(run_load(config, marks, stop=stop))
    times: list[dict] = []
    try:
        for n in range(1, args.handovers + 1):
            await asyncio.sleep(args.every)  # quiet time between hand-overs: the "without" sample
            print(f"hand-over {n}/{args.handovers}", file=sys.stderr, flush=True)
            marks.mark("handover_started", n=n)
            times.append(await asyncio.to_thread(hand_over, daemon, n, 60.0))
            marks.mark("handover_done", n=n)
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        result = await load
    return result, times


def summarize(result, times: list[dict]) -> dict:
    from controller.rehearsal.loadgen import Outcome

    starts = [m.at for m in result.marks if m.name == "handover_started"]
    ends = [m.at for m in result.marks if m.name == "handover_done"]
    windows = list(zip(starts, ends, strict=False))
    inside, outside = [], []
    for record in result.records:
        if record.outcome is not Outcome.OK:
            continue
        (inside if any(a <= record.start <= b for a, b in windows) else outside).append(record.latency * 1000)
    refused = sum(1 for r in result.records if r.outcome is Outcome.CONNECT_ERROR)
    return {
        "sent": result.sent, "failed_by_proxy": result.failed_by_proxy, "refused": refused,
        "truncated": result.truncated, "app_errors": result.app_errors, "not_sent": result.not_sent,
        "handovers": len(times),
        "during": {"requests": len(inside), "p50_ms": pct(inside, 50), "p99_ms": pct(inside, 99),
                   "max_ms": max(inside, default=float("nan"))},
        "without": {"requests": len(outside), "p50_ms": pct(outside, 50), "p99_ms": pct(outside, 99),
                    "max_ms": max(outside, default=float("nan"))},
        "times": times,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s, open loop [500]")
    parser.add_argument("--new-connections", type=float, default=0.1, help="share of fresh connections [0.1]")
    parser.add_argument("--handovers", type=int, default=10, help="hand-overs in a row [10], at most 50")
    parser.add_argument("--every", type=float, default=3.0, help="seconds between two hand-overs [3]")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="bound on the load [240]")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (the daemons' logs)")
    args = parser.parse_args()
    if not 1 <= args.handovers <= 50:
        parser.error("--handovers: 1 to 50")
    if not 0 < args.rate <= 5000:
        parser.error("--rate: above 0, at most 5000")

    from controller.testing.plugin import TurnoutDaemon
    from proxy.log import configure

    configure("warning")
    work = Path(tempfile.mkdtemp(prefix="turnout-handover-"))
    daemon = TurnoutDaemon(work, dict(BENCH_LABELS))
    try:
        daemon.start()
        first = daemon.cli("deploy", "web", "--image", IMAGE, "--port", "8080", "--replicas", "2",
                           timeout=120)
        if first.returncode != 0:
            raise RuntimeError(f"first deploy failed:\n{first.stdout}\n{first.stderr}")
        result, times = asyncio.run(run(daemon, args))
    finally:
        try:
            daemon.stop()
        finally:
            daemon.remove_containers()
            remove_bench_containers()
            if args.keep:
                print(f"work dir kept: {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
    out = summarize(result, times)
    out["config"] = {"rate": args.rate, "new_connections": args.new_connections, "every": args.every}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print_report(out, times, args)

def print_report(out: dict, times: list[dict], args: argparse.Namespace) -> None:
    print(machine_line())
    print(f"{out['handovers']} hand-overs at {args.rate:g} req/s ({args.new_connections:.0%} new "
          f"connections): sent {out['sent']}, failed {out['failed_by_proxy']}, refused {out['refused']}, "
          f"truncated {out['truncated']}, app errors {out['app_errors']}, not sent {out['not_sent']}")
    rows = [(name, out[key]["requests"], fmt(out[key]["p50_ms"]), fmt(out[key]["p99_ms"]),
             fmt(out[key]["max_ms"]))
            for name, key in (("during a hand-over", "during"), ("without one (same run)", "without"))]
    print(md_table(["requests started", "requests", "p50 ms", "p99 ms", "max ms"], rows))
    serving = [t["serving_s"] for t in times]
    exited = [t["old_exited_s"] for t in times]
    print(f"new daemon serving after (s): median {fmt(med(serving))}, max {fmt(max(serving))}; "
          f"old daemon exited after (s): median {fmt(med(exited))}, max {fmt(max(exited))}")



if __name__ == "__main__":
    main()
