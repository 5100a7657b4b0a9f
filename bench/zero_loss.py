"""Zero loss: rehearse every strategy under open-loop load and count what clients lost.

A `turnout serve` (controller.testing.plugin.TurnoutDaemon) runs a service `web` of 2 replicas of
turnout-testapp:v1. Then, per strategy (one after the other, alternating the target image between :v2
and :v1 so every deploy is a real version change):

    turnout rehearse web --image IMAGE --strategy S --rate 1000 --duration 20s --max-in-flight 4096 --json
    (canary: --steps 25,50,100 --step-pause 3s)

and records sent, failed by the proxy, truncated, misrouted, the window in which both versions answered
and the longest time no client got an answer. The claim: 0 failed, 0 truncated, 0 misrouted at >= 1,000
requests/s for >= 20 s. "offered" is every start the open-loop schedule made (sent + not sent): a
start is skipped (not sent) while --max-in-flight requests are in flight, and requests a big-bang hold
keeps waiting count, so the bound (default 4096 here) must cover rate x hold on top of the usual.

References, same run: the same load generator (controller.rehearsal.loadgen.run_load, same rate, duration and
share of new connections) (1) through the same proxy with no deploy, so a deploy's longest gap and
latency can be read against what the load shows anyway, and (2) straight to the containers' published
ports (the rate split between them), so what the app and Docker's port publishing do by themselves shows.

Note: the test app (busybox httpd) closes the connection after every response, so the proxy opens a
new upstream connection per request; that is expected.

    .venv/bin/python bench/zero_loss.py                     # 4 strategies + reference: about 2.5 min
    .venv/bin/python bench/zero_loss.py --rate 2000 --duration 30s --strategies bluegreen,canary

Containers carry the label turnout.bench=1 and are all removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import cpu_by_comm, cpu_seconds, fmt, machine_line, md_table, remove_bench_containers

from controller.config.model import SHIFTING

BENCH_LABELS = {"turnout.bench": "1"}
IMAGES = ("turnout-testapp:v1", "turnout-testapp:v2")


CPU_GROUPS = {
    "dockerd": ("dockerd",),
    "containerd + shims": ("containerd", "containerd-shim", "containerd-shim-runc-v2"),
    "docker-proxy (published ports)": ("docker-proxy",),
    "container httpd + sh": ("httpd", "sh"),
}


def busy() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def control(
    url: str, rate: float, duration: float, new_connections: float, daemon_pid: int, max_in_flight: int
) -> dict:
    """The same load with no deploy: what the generator and proxy show anyway; also where the CPU went
    (per process group, CPU seconds per second of load; other tenants of the machine are not separated)."""
    from controller.rehearsal.loadgen import LoadConfig, run_load

    config = LoadConfig(
        url=url,
        duration=duration,
        rate=rate,
        new_connections=new_connections,
        timeout=30.0,
        max_in_flight=max_in_flight,
    )
    b0 = busy()
    before, d0, me0, t0 = cpu_by_comm(), cpu_seconds(daemon_pid), cpu_seconds(os.getpid()), time.monotonic()
    result = asyncio.run(run_load(config))
    after, d1, me1, wall = (
        cpu_by_comm(),
        cpu_seconds(daemon_pid),
        cpu_seconds(os.getpid()),
        time.monotonic() - t0,
    )
    cpu = {
        "turnout serve (proxy + controller)": (d1 - d0) / wall,
        "load generator (aiohttp, this process)": (me1 - me0) / wall,
    }
    for name, comms in CPU_GROUPS.items():
        cpu[name] = sum(after.get(c, 0.0) - before.get(c, 0.0) for c in comms) / wall
    cpu["whole machine (/proc/stat, every tenant)"] = (busy() - b0) / wall
    data = result.to_dict()
    return {
        "summary": data["summary"],
        "duration": data["duration"],
        "latency": data["latency"],
        "outcomes": data.get("outcomes", {}),
        "longest_gap_ms": round(result.longest_gap().length * 1000, 3),
        "both_versions_ms": None,
        "status": "(no deploy)",
        "deploy_seconds": None,
        "cpu": cpu,
        "sent": result.sent,
        "peak_in_flight": data["peak_in_flight"],
    }


def direct(
    addresses: list[str], rate: float, duration: float, new_connections: float, max_in_flight: int
) -> dict:
    """The same total load sent straight to the containers' published ports (rate split evenly), no
    Turnout proxy in the path: what the app + Docker's port publishing show by themselves."""
    from controller.rehearsal.loadgen import LoadConfig, LoadResult, run_load

    async def both() -> list:
        return await asyncio.gather(
            *(
                run_load(
                    LoadConfig(
                        url=f"http://{a}",
                        duration=duration,
                        rate=rate / len(addresses),
                        new_connections=new_connections,
                        timeout=30.0,
                        max_in_flight=max(1, max_in_flight // len(addresses)),
                    )
                )
                for a in addresses
            )
        )

    results = asyncio.run(both())
    merged = LoadResult(
        records=[r for res in results for r in res.records],
        duration=max(res.duration for res in results),
        not_sent=sum(res.not_sent for res in results),
    )
    data = merged.to_dict()
    return {
        "summary": data["summary"],
        "duration": data["duration"],
        "latency": data["latency"],
        "outcomes": data.get("outcomes", {}),
        "longest_gap_ms": round(merged.longest_gap().length * 1000, 3),
        "both_versions_ms": None,
        "status": "(no deploy)",
        "deploy_seconds": None,
        "peak_in_flight": None,  # two generators side by side: their peaks do not add up meaningfully
    }


def rehearse(daemon, image: str, strategy: str, args: argparse.Namespace, work: Path) -> dict:
    cmd = [
        "rehearse",
        "web",
        "--image",
        image,
        "--strategy",
        strategy,
        "--rate",
        str(args.rate),
        "--duration",
        args.duration,
        "--new-connections",
        str(args.new_connections),
        "--max-in-flight",
        str(args.max_in_flight),
        "--json",
        "--html",
        str(work / f"rehearsal-{strategy}.html"),
    ]
    if strategy == "canary":
        cmd += ["--steps", args.canary_steps, "--step-pause", args.canary_pause]
    result = daemon.cli(*cmd, timeout=args.max_seconds)
    try:
        (run,) = json.loads(result.stdout)
    except (ValueError, TypeError) as exc:
        raise RuntimeError(
            f"turnout {' '.join(cmd)} exited {result.returncode} without a JSON report "
            f"({exc}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        ) from None
    load = run["load"]
    timings = (run["deploy"] or {}).get("timings") or {}
    return {
        "summary": load["summary"],
        "duration": load["duration"],
        "latency": load["latency"],
        "outcomes": load.get("outcomes", {}),
        "timings": timings,
        "longest_gap_ms": run["longest_gap_ms"],
        "both_versions_ms": run["both_versions_ms"],
        "status": (run["deploy"] or {}).get("status"),
        "exit": result.returncode,
        "deploy_seconds": ((run["deploy"] or {}).get("timings") or {}).get("total"),
        "peak_in_flight": load.get("peak_in_flight"),
        "cmd": "turnout " + " ".join(c for c in cmd if not c.startswith(str(work))),
    }


def proxy_config(parser: argparse.ArgumentParser, settings: list[str]) -> str | None:
    """turnout.toml text with these [proxy] settings (values as TOML: numbers, "strings", true)."""
    if not settings:
        return None
    lines = ["[proxy]"]
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip() or not value.strip():
            parser.error(f"--proxy: expected KEY=VALUE, got {setting!r}")
        lines.append(f"{key.strip()} = {value.strip()}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s, open loop [1000]")
    parser.add_argument("--duration", default="20s", help="load per rehearsal, at least [20s]")
    parser.add_argument("--new-connections", type=float, default=0.1, help="share of fresh connections [0.1]")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=4096,
        help="open loop: starts beyond this many requests in flight are skipped (held ones count) [4096]",
    )
    parser.add_argument("--strategies", default=",".join(SHIFTING))
    parser.add_argument("--canary-steps", default="25,50,100")
    parser.add_argument("--canary-pause", default="3s")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--no-control", action="store_true", help="skip the no-deploy reference run")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="bound per rehearsal command")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (HTML reports, daemon log)")
    parser.add_argument("--proxy", action="append", default=[], metavar="KEY=VALUE",
                        help="a [proxy] setting of the daemon, e.g. max_connecting=0 (repeatable)")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    if not 1 <= args.max_in_flight <= 65536:
        parser.error(f"--max-in-flight: must be between 1 and 65536, got {args.max_in_flight}")

    from controller.config.duration import parse_duration
    from controller.testing.plugin import TurnoutDaemon
    from proxy.log import configure

    configure("warning")  # this process's own log lines (container removal) stay off the table output

    seconds = parse_duration(args.duration, "--duration")
    work = Path(tempfile.mkdtemp(prefix="turnout-zeroloss-"))
    daemon = TurnoutDaemon(work, dict(BENCH_LABELS), proxy_config(parser, args.proxy))
    rows: list[tuple[str, dict]] = []
    t_begin = time.monotonic()
    try:
        daemon.start()
        first = daemon.cli(
            "deploy",
            "web",
            "--image",
            IMAGES[0],
            "--port",
            "8080",
            "--replicas",
            str(args.replicas),
            "--strategy",
            "bluegreen",
            "--json",
            timeout=120,
        )
        if first.returncode != 0:
            raise RuntimeError(f"first deploy failed:\n{first.stdout}\n{first.stderr}")
        serving = 0
        if not args.no_control:
            print("reference: load with no deploy", file=sys.stderr, flush=True)
            rows.append(
                (
                    "reference (no deploy)",
                    control(
                        daemon.url,
                        args.rate,
                        seconds,
                        args.new_connections,
                        daemon.process.pid,
                        args.max_in_flight,
                    ),
                )
            )
        if not args.no_control:
            status = json.loads(daemon.cli("status", "web", "--json").stdout)["services"]["web"]
            addresses = [a for p in status["pools"].values() if p["weight"] for a in p["upstreams"]]
            print(f"reference: the same load straight to {addresses}", file=sys.stderr, flush=True)
            rows.append(
                (
                    "reference: direct to the containers (no Turnout)",
                    direct(addresses, args.rate, seconds, args.new_connections, args.max_in_flight),
                )
            )
        for strategy in strategies:
            image = IMAGES[1 - serving]
            print(f"rehearse {strategy} -> {image}", file=sys.stderr, flush=True)
            r = rehearse(daemon, image, strategy, args, work)
            serving = 1 - serving
            rows.append((strategy, r))
            s = r["summary"]
            print(
                f"  {r['status']}: sent {s['sent']} failed {s['failed_by_proxy']} truncated {s['truncated']} "
                f"misrouted {s['misrouted']}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        try:
            daemon.stop()
        finally:
            daemon.remove_containers()
            removed = remove_bench_containers()
            if removed:
                print(f"removed {removed} leftover bench containers", file=sys.stderr)
            if args.keep:
                print(f"work dir kept: {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)

    ref = rows[0][1] if rows and rows[0][0].startswith("reference") else None  # through the proxy
    table = []
    verdicts = []
    for name, r in rows:
        s = r["summary"]
        rate = s["sent"] / r["duration"] if r["duration"] else 0.0
        offered = s["sent"] + s["not_sent"]
        during = r["latency"].get("during") or r["latency"].get("all") or {}
        gap = r["longest_gap_ms"]
        zero = s["failed_by_proxy"] == 0 and s["truncated"] == 0 and s["misrouted"] == 0
        if not name.startswith("reference"):
            verdicts.append(zero and rate >= 1000 * 0.98 and r["duration"] >= 19.5)
        table.append(
            [
                name,
                r["status"],
                offered,
                s["sent"],
                fmt(offered / r["duration"], 0) if r["duration"] else "-",
                fmt(rate, 0),
                fmt(r["duration"], 1),
                s["failed_by_proxy"],
                s["truncated"],
                s["misrouted"],
                s["app_errors"],
                s["not_sent"],
                r["peak_in_flight"] if r.get("peak_in_flight") is not None else "-",
                fmt(r["both_versions_ms"], 0) if r["both_versions_ms"] is not None else "-",
                fmt(gap, 1),
                fmt(gap / ref["longest_gap_ms"], 1) if ref and ref["longest_gap_ms"] else "-",
                f"{fmt(during.get('p50_ms'), 1)} / {fmt(during.get('p99_ms'), 1)}",
                fmt(r["deploy_seconds"], 2) if r.get("deploy_seconds") else "-",
                " / ".join(fmt(r.get("timings", {}).get(k), 2) for k in ("start_and_health", "drain"))
                if r.get("timings")
                else "-",
                ", ".join(f"{k} {v}" for k, v in r.get("outcomes", {}).items() if k != "ok") or "-",
            ]
        )
    print(
        f"\nzero loss: {args.rate:.0f} req/s open loop, {seconds:.0f} s per rehearsal, "
        f"{args.new_connections:.0%} new connections, at most {args.max_in_flight} in flight, "
        f"{args.replicas} replicas of turnout-testapp\n"
    )
    print(
        md_table(
            [
                "run",
                "deploy",
                "offered",
                "sent",
                "offered/s",
                "sent/s",
                "load s",
                "failed by proxy",
                "truncated",
                "misrouted",
                "app errors",
                "not sent",
                "peak in flight",
                "both versions ms",
                "longest gap ms",
                "gap / ref gap",
                "p50 / p99 ms during",
                "deploy s",
                "start+health / drain s",
                "outcomes other than ok",
            ],
            table,
        )
    )
    print(
        f"\nclaim (0 failed, 0 truncated, 0 misrouted at >= 1000 req/s for >= 20 s): held for "
        f"{sum(verdicts)} of {len(verdicts)} strategies"
        + (
            ""
            if all(verdicts)
            else " (a strategy fails it on any loss, or if fewer than 980 req/s were "
            f"actually sent: open-loop starts are skipped while {args.max_in_flight} requests are in flight)"
        )
    )
    if ref and ref.get("cpu"):
        per_req = lambda v: v / max(ref["sent"] / ref["duration"], 1) * 1e6  # noqa: E731
        print("\nwhere the CPU went during the reference run (cores busy; µs of CPU per request sent):\n")
        print(
            md_table(
                ["process group", "cores", "µs CPU / request"],
                [[k, fmt(v, 2), fmt(per_req(v), 0)] for k, v in ref["cpu"].items()],
            )
        )
    print(f"ran {time.monotonic() - t_begin:.0f} s; machine: {machine_line()}")


if __name__ == "__main__":
    main()
