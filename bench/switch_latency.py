"""Switch latency: from an admin change (a weights swap) to the first request that sees it, under load.

Setup (loopback only): two tiny upstreams answering "a" and "b" (one subprocess), Turnout's proxy in a
subprocess (proxy.router.Router + proxy.server.ProxyServer, and proxy.admin.create_admin_app on a unix
socket), N closed-loop keep-alive clients in a load subprocess (raw asyncio protocols on uvloop; it does
nothing else, so its timestamps are not delayed by the admin calls), and this process flipping weights.
The weights flip 100/0 <-> 0/100 `--flips` times, two ways, interleaved (pattern A B B A ...):

  admin   PATCH /v1/services/default/weights over the unix socket; T = when this process had the answer
  inproc  the proxy process calls Router.set_weights itself (triggered over the same socket);
          T = time.monotonic() right after the call returned, taken inside the proxy process

For each flip: delay = (first response byte from the new upstream among requests *started* after T) - T.
Both processes read the same CLOCK_MONOTONIC. Reference, same run: the median request latency (send ->
first response byte); a request started just after T cannot be answered sooner than about that.
Also counted: stale answers (requests started after T answered by the old upstream; must be 0).

    .venv/bin/python bench/switch_latency.py                 # 400 flips, 8 clients: about 15 s
    (proxy on CPU 1; load generator and upstreams on CPU 0, as in bench/harness.sh)
    .venv/bin/python bench/switch_latency.py --clients 32 --flips 1000
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

from _benchlib import (
    PYTHON,
    Procs,
    fmt,
    free_port,
    machine_line,
    md_table,
    med,
    pct,
    wait_port,
)

FLIP_ROUTE = "/bench/flip"


# ------------------------------------------------------------------------------------------ proxy role
def proxy_role(argv: list[str]) -> None:
    """Subprocess: the proxy with its admin API on a unix socket, plus a bench-only in-process flip."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--admin", required=True)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    args = parser.parse_args(argv)

    import uvloop
    from aiohttp import web

    from proxy.admin import create_admin_app
    from proxy.config import ProxyConfig
    from proxy.log import configure
    from proxy.router import Router
    from proxy.server import ProxyServer
    from proxy.specs import ServiceSpec

    configure("info", json=True)  # as in the daemon: structured logs (to a file here)

    async def main() -> None:
        config = ProxyConfig(listen=args.listen, admin_socket=args.admin)
        router = Router(hold_timeout=config.hold_timeout, drain_timeout=config.drain_timeout)
        router.set_service(
            ServiceSpec.from_dict(
                {
                    "name": "default",
                    "pools": [
                        {"name": "a", "weight": 100, "upstreams": [args.a]},
                        {"name": "b", "weight": 0, "upstreams": [args.b]},
                    ],
                }
            )
        )
        server = ProxyServer(router, config)
        await server.start()
        app = create_admin_app(router)

        async def flip(request: web.Request) -> web.Response:
            weights = (await request.json())["weights"]
            t0 = time.monotonic()
            router.set_weights("default", weights)  # the in-process call under test
            t1 = time.monotonic()
            return web.json_response({"t": t1, "call_s": t1 - t0})

        app.router.add_post(FLIP_ROUTE, flip)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, args.admin).start()
        stop = asyncio.get_running_loop().create_future()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        await stop
        await runner.cleanup()
        await server.stop(1.0)

    uvloop.run(main())


# ------------------------------------------------------------------------------------------ load
class Client(asyncio.Protocol):
    """One keep-alive client: sends GET /, waits for the whole answer, sends the next (closed loop)."""

    REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    def __init__(self, sink: list, stop: asyncio.Event, done: asyncio.Future) -> None:
        self.sink, self.stop, self.done = sink, stop, done
        self.buf = b""
        self.t_send = self.t_first = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def send(self) -> None:
        if self.stop.is_set():
            self.transport.close()  # type: ignore[union-attr]
            return
        self.buf = b""
        self.t_first = 0.0
        self.t_send = time.monotonic()
        self.transport.write(self.REQUEST)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.t_first:
            self.t_first = now
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15 :].split(b"\r\n", 1)[0])
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4 : end + 4 + length]
        self.sink.append((self.t_send, self.t_first, body[:1]))
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def load_role(argv: list[str]) -> None:
    """Subprocess: N closed-loop keep-alive clients until SIGTERM (or --max-seconds); then the records
    (t_send, t_first_byte, first body byte) go to --out as JSON. This process does nothing else, so
    its timestamps are not delayed by the admin calls."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import signal

    import uvloop

    async def main() -> list:
        loop = asyncio.get_running_loop()
        records: list[tuple[float, float, bytes]] = []
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        dones = []
        for _ in range(args.clients):
            done = loop.create_future()
            dones.append(done)
            await loop.create_connection(lambda d=done: Client(records, stop, d), "127.0.0.1", args.port)
        try:
            await asyncio.wait_for(stop.wait(), args.max_seconds)
        except TimeoutError:
            stop.set()
        await asyncio.wait(dones, timeout=5)
        return records

    records = uvloop.run(main())
    Path(args.out).write_text(json.dumps([(a, b, c.decode("latin-1")) for a, b, c in records]))


async def flip_weights(args: argparse.Namespace, admin: str) -> list[dict]:
    import aiohttp

    flips: list[dict] = []
    connector = aiohttp.UnixConnector(path=admin)
    headers = {"X-Turnout-Client": "bench"}
    rng = random.Random(args.seed)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as admin_session:
        await asyncio.sleep(args.warmup)
        current = "a"
        deadline = time.monotonic() + args.max_seconds
        for i in range(args.flips):
            if time.monotonic() > deadline:
                break
            mode = ("admin", "inproc", "inproc", "admin")[i % 4]
            new = "b" if current == "a" else "a"
            weights = {new: 100, current: 0}
            started = time.monotonic()
            if mode == "admin":
                async with admin_session.patch(
                    "http://admin/v1/services/default/weights", json={"weights": weights}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, await resp.text()
                t = time.monotonic()
                call = None
            else:
                async with admin_session.post(f"http://admin{FLIP_ROUTE}", json={"weights": weights}) as resp:
                    data = await resp.json()
                t, call = data["t"], data["call_s"]
            flips.append(
                {
                    "mode": mode,
                    "new": new.encode(),
                    "t": t,
                    "issued": started,
                    "returned": time.monotonic(),
                    "call_s": call,
                }
            )
            current = new
            await asyncio.sleep(rng.uniform(args.interval * 0.6, args.interval * 1.4))
        await asyncio.sleep(0.05)
    return flips


def analyse(records: list, flips: list, first_t: float, last_t: float) -> dict:
    records.sort(key=lambda r: r[0])
    starts = [r[0] for r in records]
    import bisect

    per_mode: dict[str, dict[str, list]] = {}
    for k, flip in enumerate(flips):
        t = flip["t"]
        # up to the moment the next flip was issued (its swap happens before its T is taken)
        t_next = flips[k + 1]["issued"] if k + 1 < len(flips) else last_t
        lo, hi = bisect.bisect_right(starts, t), bisect.bisect_left(starts, t_next)
        window = records[lo:hi]
        new = [r for r in window if r[2] == flip["new"]]
        stale = sum(1 for r in window if r[2] != flip["new"])
        stats = per_mode.setdefault(
            flip["mode"],
            {
                "delay": [],
                "unseen": [],
                "stale": [],
                "call": [],
                "roundtrip": [],
                "first_send": [],
                "first_lat": [],
            },
        )
        if new:
            first = min(new, key=lambda r: r[1])
            stats["delay"].append(first[1] - t)
            stats["first_send"].append(window[0][0] - t)  # the first request started after T
            stats["first_lat"].append(first[1] - first[0])
        else:
            stats["unseen"].append(1)
        stats["stale"].append(stale)
        stats["roundtrip"].append(flip["returned"] - flip["issued"])
        if flip["call_s"] is not None:
            stats["call"].append(flip["call_s"])
    steady = [r for r in records if first_t - 1.0 <= r[0] <= last_t]
    latencies = [r[1] - r[0] for r in steady]
    span = (steady[-1][0] - steady[0][0]) if len(steady) > 1 else 1.0
    return {
        "modes": per_mode,
        "latency_p50": pct(latencies, 50),
        "latency_p99": pct(latencies, 99),
        "rps": len(steady) / span,
        "requests": len(records),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--role-proxy":
        proxy_role(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--role-load":
        load_role(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--clients", type=int, default=8, help="closed-loop keep-alive clients [8]")
    parser.add_argument("--flips", type=int, default=400, help="weight flips, half per mode [400]")
    parser.add_argument("--interval", type=float, default=0.025, help="mean seconds between flips [0.025]")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="hard bound on the flipping phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--proxy-cpu", default="1", help="pin the proxy to this CPU (taskset) ['1'; '' = no pin]"
    )
    parser.add_argument(
        "--load-cpu",
        default="0",
        help="pin the load generator and the upstreams to this CPU ['0'; '' = no pin]",
    )
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    args = parser.parse_args()

    import uvloop

    work = Path(tempfile.mkdtemp(prefix="turnout-switch-"))
    admin = str(work / "admin.sock")
    port, pa, pb = free_port(), free_port(), free_port()
    with Procs() as procs:
        up = procs.start(
            [
                PYTHON,
                str(Path(__file__).parent / "_benchlib.py"),
                "upstreams",
                "--listen",
                f"127.0.0.1:{pa}=a",
                "--listen",
                f"127.0.0.1:{pb}=b",
            ],
            log=work / "upstreams.log",
            cpu=args.load_cpu,
        )
        proxy = procs.start(
            [
                PYTHON,
                __file__,
                "--role-proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin",
                admin,
                "--a",
                f"127.0.0.1:{pa}",
                "--b",
                f"127.0.0.1:{pb}",
            ],
            log=work / "proxy.log",
            cpu=args.proxy_cpu,
            cwd=str(Path(__file__).parent.parent),
        )
        wait_port(pa, proc=up)
        wait_port(pb, proc=up)
        wait_port(port, proc=proxy)
        wait_port(0, unix=admin, proc=proxy)
        records_path = work / "records.json"
        load = procs.start(
            [
                PYTHON,
                __file__,
                "--role-load",
                "--port",
                str(port),
                "--clients",
                str(args.clients),
                "--max-seconds",
                str(args.max_seconds + args.warmup + 10),
                "--out",
                str(records_path),
            ],
            log=work / "load.log",
            cpu=args.load_cpu,
        )
        flips = uvloop.run(flip_weights(args, admin))
        procs.stop(load, timeout=30)
        records = [(a, b, c.encode("latin-1")) for a, b, c in json.loads(records_path.read_text())]
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # logs and the records file; the figures are printed below
    res = analyse(records, flips, flips[0]["t"], flips[-1]["t"] + 0.05)
    ref = res["latency_p50"]
    rows = []
    for mode in ("admin", "inproc"):
        s = res["modes"].get(mode)
        if not s:
            continue
        d = s["delay"]
        rows.append(
            [
                mode,
                len(d) + len(s["unseen"]),
                len(s["unseen"]),
                fmt(pct(d, 50) * 1e3, 3),
                fmt(pct(d, 99) * 1e3, 3),
                fmt(max(d) * 1e3, 3) if d else "-",
                fmt(ref * 1e3, 3),
                fmt(pct(d, 50) / ref, 2),
                sum(s["stale"]),
                fmt(pct(s["first_send"], 50) * 1e3, 3),
                fmt(pct(s["first_lat"], 50) * 1e3, 3),
                fmt(med(s["roundtrip"]) * 1e3, 3),
                fmt(med(s["call"]) * 1e6, 0) if s["call"] else "-",
            ]
        )
    print(
        f"\nswitch latency: {args.clients} keep-alive clients, {res['rps']:.0f} req/s through the proxy, "
        f"request latency p50 {ref * 1e3:.3f} ms / p99 {res['latency_p99'] * 1e3:.3f} ms "
        f"({res['requests']} requests)\n"
    )
    print(
        md_table(
            [
                "mode",
                "flips",
                "not seen before next flip",
                "delay p50 ms",
                "delay p99 ms",
                "delay max ms",
                "ref: request p50 ms",
                "delay p50 / ref",
                "stale after T",
                "first send after T p50 ms",
                "its latency p50 ms",
                "admin round trip p50 ms",
                "set_weights µs",
            ],
            rows,
        )
    )
    print(
        "\ndelay: first response byte from the new upstream among requests started after T, minus T. "
        "Target < 1 ms.\nfirst send after T: when this process started its first request after T; "
        "its latency: send -> first byte of the request that gave the delay (medians over flips)."
    )
    print(f"machine: {machine_line()}")
    if args.json:
        print(
            json.dumps(
                {
                    "rps": res["rps"],
                    "latency_p50": ref,
                    "latency_p99": res["latency_p99"],
                    "modes": {
                        m: {"delay": s["delay"], "stale": sum(s["stale"])} for m, s in res["modes"].items()
                    },
                }
            )
        )


if __name__ == "__main__":
    main()
