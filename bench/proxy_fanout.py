"""Proxy fan-out: how long a weight change takes to reach two remote proxies (`turnout serve --role proxy`).

Setup (loopback only): the controller's side in this process, as `turnout serve` wires it (a Router, the
Fleet and the routing listener of controller/routing_api.py, on uvloop), and two `turnout serve --role
proxy` subprocesses following it (their own uvloop, their default pull of POLL_WAIT held 1 s). One
service with two pools; the weights flip 100/0 <-> 0/100 `--flips` times, each after a random pause of
10-50 ms so flips land at every point of the proxies' pull cycle (a held pull, one just answered, an
acknowledgement in flight).

Per flip: from the swap (Router.set_weights returned) to the moment both proxies had acknowledged the new
generation at the controller (Fleet.wait_acked returned): what a deploy step waits for. It includes the
held pull's answer, the proxy applying the table (one swap per changed service), and its next pull
carrying the acknowledgement; so it bounds from above the time until both proxies route by the change.
Each flip is bounded (`--timeout`, 5 s): one that times out is counted and reported, never waited on.

`--lab`: between nodes of the Swarm lab (scripts/swarm-lab.sh up): the routing listener on the lab's
bridge (10.231.0.1, the root namespace) and each proxy in one node's network namespace
(`nsenter --net=/var/run/netns/turnout-lab-nX`), pulling over the bridge and its veth pairs, as a proxy
per node does on real machines (minus the wire). Needs root.

    .venv/bin/python bench/proxy_fanout.py                  # 100 flips, ~10 s
    .venv/bin/python bench/proxy_fanout.py --flips 500 --json
    .venv/bin/python bench/proxy_fanout.py --lab            # the two proxies in the lab's namespaces
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import ROOT, Procs, fmt, free_port, machine_line, md_table, med, pct

from controller.fleet import Fleet, ProxiesLagging
from controller.routing_api import create_routing_app
from proxy.router import Router
from proxy.specs import ServiceSpec

TOKEN = "bench-" + "f" * 40
TURNOUT = str(ROOT / ".venv" / "bin" / "turnout")
Placement = tuple[str, dict[str, tuple[str, list[str]]]]


def placement(lab: bool) -> Placement:
    """(the routing listener's host, {proxy id: (its listen address, its command's prefix)})."""
    if not lab:
        return "127.0.0.1", {name: (f"127.0.0.1:{free_port()}", []) for name in ("node-a", "node-b")}
    # In a node's namespace no port of this one is known to be free: port 0, the kernel's pick.
    return "10.231.0.1", {f"n{n}": (f"10.231.0.1{n}:0", ["nsenter", f"--net=/var/run/netns/turnout-lab-n{n}",
                                                          "--"]) for n in (1, 2)}


async def run(flips: int, timeout: float, logs: Path, where: Placement) -> dict[str, object]:
    from aiohttp import web

    router = Router()
    router.set_service(ServiceSpec.from_dict({"name": "web", "pools": [
        {"name": "a", "weight": 100, "upstreams": ["127.0.0.1:9"]},
        {"name": "b", "weight": 0, "upstreams": ["127.0.0.1:10"]}]}))
    fleet = Fleet(ack_timeout=timeout, unseen_timeout=5.0)
    router.subscribe(lambda table: fleet.published(router.generation))
    runner = web.AppRunner(create_routing_app(router, fleet, TOKEN, {}), access_log=None,
                           handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    routing_host, proxies = where
    port = free_port()
    await web.TCPSite(runner, routing_host, port).start()
    seconds: list[float] = []
    timeouts = 0
    with Procs() as procs:
        for proxy_id, (listen, prefix) in proxies.items():
            procs.start([*prefix, TURNOUT, "serve", "--role", "proxy", "--listen", listen,
                         "--controller", f"http://{routing_host}:{port}", "--token", TOKEN, "--id", proxy_id],
                        log=logs / f"{proxy_id}.log", cwd=logs)
        deadline = time.monotonic() + 30
        while len(fleet.proxies) < 2 or any(p.acked < router.generation for p in fleet.proxies.values()):
            if time.monotonic() > deadline:
                raise SystemExit(f"the proxies did not follow within 30 s; see {logs}")
            await asyncio.sleep(0.05)
        for flip in range(flips):
            await asyncio.sleep(random.uniform(0.010, 0.050))
            weights = {"a": 0, "b": 100} if flip % 2 == 0 else {"a": 100, "b": 0}
            started = time.perf_counter()
            router.set_weights("web", weights)
            try:
                await fleet.wait_acked(router.generation)
            except ProxiesLagging:
                timeouts += 1
                continue
            seconds.append(time.perf_counter() - started)
    await runner.cleanup()
    ms = [s * 1000 for s in seconds]
    return {"flips": flips, "acked": len(ms), "timeouts": timeouts, "median_ms": med(ms),
            "p99_ms": pct(ms, 99), "max_ms": max(ms) if ms else None, "min_ms": min(ms) if ms else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a flip may take at most [5]")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--lab", action="store_true",
                        help="the proxies in the Swarm lab's node namespaces, the listener on its bridge")
    args = parser.parse_args()
    import uvloop

    from proxy.log import configure

    configure("warning")  # a table.changed line per flip would be most of this process's work
    with tempfile.TemporaryDirectory(prefix="turnout-fanout-") as tmp:
        result = uvloop.run(run(args.flips, args.timeout, Path(tmp), placement(args.lab)))
    if args.json:
        print(json.dumps(result))
        return
    print(md_table(["flips", "acknowledged by both", "timed out", "median ms", "p99 ms", "min ms", "max ms"],
                   [[result["flips"], result["acked"], result["timeouts"], fmt(result["median_ms"]),
                     fmt(result["p99_ms"]), fmt(result["min_ms"]), fmt(result["max_ms"])]]))
    print(f"\n{machine_line()}")


if __name__ == "__main__":
    main()
