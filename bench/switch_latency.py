"""Switch latency: from an admin change (a weights swap) to the first request that sees it, under load.

Setup (loopback only): two tiny upstreams answering "a" and "b" (one subprocess), Turnout's proxy in a
subprocess (proxy.router.Router + proxy.server.ProxyServer, and proxy.admin.create_admin_app on a unix
socket), N closed-loop keep-alive clients in a load subprocess (raw asyncio protocols on uvloop; it does
nothing else, so its timestamps are not delayed by the admin calls), and this process flipping weights.
The weights flip 100/0 <-> 0/100 `--flips` times per round, in up to three ways, interleaved (A B C C B A):

  admin   PATCH /v1/services/default/weights over the unix socket (the real admin API, on the proxy's
          event loop); T = when this process had the answer
  inproc  the proxy process calls Router.set_weights itself (triggered over the same socket);
          T = time.monotonic() right after the call returned, taken inside the proxy process
  thread  a prototype: the same PATCH served by an aiohttp app on a second thread with its own loop,
          which parses the request there and hands only the swap to the proxy's loop
          (call_soon_threadsafe); T = when this process had the answer

Figures per flip (all processes read the same CLOCK_MONOTONIC):
  delay   (kept from the first version of this script) the first response byte from the new upstream
          among requests *started* after T, minus T. It contains a whole request round trip, and with
          closed-loop clients also the wait for the requests in flight at T to finish first.
  switch  proxy-side, isolates the switch: from the swap (a stamp right after Router._install returned)
          to the first request the proxy *routed* to the new pool (a stamp in Upstream.begin). The two
          stamps are bench-only wrappers installed in the proxy subprocess; they cost a Python call per
          request (well under 1 us) and never touch proxy/forward.py.
  wait    from the swap to the first request any client *sent* after it (client stamp): how much of
          `switch` was only waiting for a request to arrive at all.
Checks: stale answers (requests started after T that the old upstream answered) and stale routes (requests
the proxy routed to the old pool after the swap, proxy-side) must both be 0. Reference, same run: the
request latency (send -> first response byte) p50/p99. GC pauses in the proxy are recorded (gc.callbacks)
to say what the tail is made of.

    .venv/bin/python bench/switch_latency.py                 # 1 round of 400 flips, 8 clients: ~15 s
    .venv/bin/python bench/switch_latency.py --rounds 3 --src before=/tmp/old-tree   # before/after
    (proxy on CPU 1; load generator and upstreams on CPU 0, as in bench/harness.sh)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import (
    PYTHON,
    ROOT,
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
STAMPS_ROUTE = "/bench/stamps"
MODES = ("admin", "inproc", "thread")
GC_KEEP = 0.0001  # seconds: GC pauses shorter than this are not kept


# ------------------------------------------------------------------------------------------ proxy role
def install_stamps() -> tuple[list, list]:
    """Bench-only wrappers in the proxy subprocess: a stamp per swap, the first routing to the new pool
    after it, routings to the old pool after it (stale), and every GC pause >= GC_KEEP."""
    import gc

    from proxy.router import Router
    from proxy.upstream import Upstream

    # [t_swap, generation, new address, t_first_route_to_new, stale routes, new pool]
    swaps: list[list] = []
    pauses: list[tuple[float, float, int]] = []
    armed: list[list | None] = [None]
    monotonic = time.monotonic
    orig_install, orig_begin = Router._install, Upstream.begin

    def install(self, *args, **kwargs):
        removed = orig_install(self, *args, **kwargs)
        t = monotonic()
        service = self.table.services.get("default")
        weighted = [p for p in service.pools if p.weight > 0] if service is not None else []
        one = weighted[0] if len(weighted) == 1 else None
        address, name = (one.upstreams[0].address, one.name) if one else ("", "")
        record = [t, self.generation, address, None, 0, name]
        swaps.append(record)
        armed[0] = record
        return removed

    def begin(self, exchange):
        orig_begin(self, exchange)
        record = armed[0]
        if record is not None:
            if self.address == record[2]:
                if record[3] is None:
                    record[3] = monotonic()
            else:
                record[4] += 1

    gc_start = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = monotonic()
        else:
            t = monotonic()
            if t - gc_start[0] >= GC_KEEP:
                pauses.append((gc_start[0], t, info["generation"]))

    Router._install = install
    Upstream.begin = begin
    gc.callbacks.append(on_gc)
    return swaps, pauses


def start_admin_thread(router, loop: asyncio.AbstractEventLoop, path: str) -> None:
    """The prototype `thread` mode: PATCH weights served on a second thread with its own loop; only the
    swap itself runs on the proxy's loop. Same middlewares as the real admin API."""
    import concurrent.futures
    import threading

    import uvloop
    from aiohttp import web

    from proxy import admin

    started = threading.Event()

    async def patch(request: web.Request) -> web.Response:
        body = await admin.read_json(request)
        done: concurrent.futures.Future = concurrent.futures.Future()

        def swap() -> None:  # on the proxy's loop
            try:
                router.set_weights(request.match_info["name"], body["weights"])
                done.set_result(router.generation)
            except Exception as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(swap)
        generation = await asyncio.wrap_future(done)
        return admin._json({"generation": generation, "removed": []})

    async def main() -> None:
        app = web.Application(middlewares=[admin._errors, admin._guard(None)])
        app.router.add_patch("/v1/services/{name}/weights", patch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        started.set()
        await asyncio.Event().wait()  # until the process ends (daemon thread)

    threading.Thread(target=lambda: uvloop.run(main()), name="admin", daemon=True).start()
    if not started.wait(10):
        raise RuntimeError("the admin thread did not start")


def proxy_role(argv: list[str]) -> None:
    """Subprocess: the proxy with its admin API on a unix socket, plus a bench-only in-process flip."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--admin", required=True)
    parser.add_argument("--admin-thread", required=True)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--src", required=True, help="the tree whose proxy/ package is measured")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.src)

    import uvloop
    from aiohttp import web

    from proxy.admin import create_admin_app
    from proxy.config import ProxyConfig
    from proxy.log import configure
    from proxy.router import Router
    from proxy.server import ProxyServer
    from proxy.specs import ServiceSpec

    configure("info", json=True)  # as in the daemon: structured logs (to a file here)
    swaps, pauses = install_stamps()

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

        async def stamps(_request: web.Request) -> web.Response:
            return web.json_response({"swaps": swaps, "gc": pauses})

        app.router.add_post(FLIP_ROUTE, flip)
        app.router.add_get(STAMPS_ROUTE, stamps)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.UnixSite(runner, args.admin).start()
        start_admin_thread(router, asyncio.get_running_loop(), args.admin_thread)
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


# ------------------------------------------------------------------------------------------ flipping
async def flip_weights(args: argparse.Namespace, admin: str, admin_thread: str) -> tuple[list[dict], dict]:
    import aiohttp

    flips: list[dict] = []
    headers = {"X-Turnout-Client": "bench"}
    rng = random.Random(args.seed)
    pattern = args.modes + args.modes[::-1]
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=admin), headers=headers) as main_api,
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=admin_thread), headers=headers) as thr_api,
    ):
        await asyncio.sleep(args.warmup)
        current = "a"
        deadline = time.monotonic() + args.max_seconds
        for i in range(args.flips):
            if time.monotonic() > deadline:
                break
            mode = pattern[i % len(pattern)]
            new = "b" if current == "a" else "a"
            weights = {new: 100, current: 0}
            started = time.monotonic()
            call = None
            if mode in ("admin", "thread"):
                session = main_api if mode == "admin" else thr_api
                async with session.patch(
                    "http://admin/v1/services/default/weights", json={"weights": weights}
                ) as resp:
                    await resp.read()
                    assert resp.status == 200, await resp.text()
                t = time.monotonic()
            else:
                async with main_api.post(f"http://admin{FLIP_ROUTE}", json={"weights": weights}) as resp:
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
        async with main_api.get(f"http://admin{STAMPS_ROUTE}") as resp:
            stamps = await resp.json()
    return flips, stamps


# ------------------------------------------------------------------------------------------ analysis
def analyse(records: list, flips: list, stamps: dict) -> dict:
    """Per flip: delay (client), switch and wait (proxy-side), stale answers and routes; per mode lists."""
    records.sort(key=lambda r: r[0])
    starts = [r[0] for r in records]
    swaps = sorted(stamps["swaps"], key=lambda s: s[0])
    swap_times = [s[0] for s in swaps]
    pauses = sorted(tuple(p) for p in stamps["gc"])
    per_mode: dict[str, dict[str, list]] = {}
    per_flip: list[dict] = []
    for k, flip in enumerate(flips):
        t = flip["t"]
        # up to the moment the next flip was issued (its swap happens before its T is taken)
        t_next = flips[k + 1]["issued"] if k + 1 < len(flips) else flip["returned"] + 0.05
        lo, hi = bisect.bisect_right(starts, t), bisect.bisect_left(starts, t_next)
        window = records[lo:hi]
        new = [r for r in window if r[2] == flip["new"]]
        s = per_mode.setdefault(
            flip["mode"],
            {
                k: []
                for k in (
                    "delay",
                    "unseen",
                    "stale",
                    "call",
                    "roundtrip",
                    "first_send",
                    "first_lat",
                    "switch",
                    "wait",
                    "stale_routes",
                    "unrouted",
                )
            },
        )
        row: dict = {"mode": flip["mode"]}
        if new:
            first = min(new, key=lambda r: r[1])
            row["delay"] = first[1] - t
            row["first_send"] = window[0][0] - t  # the first request started after T
            row["first_lat"] = first[1] - first[0]
            s["delay"].append(row["delay"])
            s["first_send"].append(row["first_send"])
            s["first_lat"].append(row["first_lat"])
        else:
            s["unseen"].append(1)
        s["stale"].append(sum(1 for r in window if r[2] != flip["new"]))
        s["roundtrip"].append(flip["returned"] - flip["issued"])
        if flip["call_s"] is not None:
            s["call"].append(flip["call_s"])
        # the swap this flip made: the one stamped between issuing the call and having its answer
        j = bisect.bisect_left(swap_times, flip["issued"])
        if j < len(swaps) and swaps[j][0] <= flip["returned"] and swaps[j][5] == flip["new"].decode():
            t_swap, _, _, t_route, stale_routes, _ = swaps[j]
            s["stale_routes"].append(stale_routes)
            if t_route is None:
                s["unrouted"].append(1)
            else:
                row["switch"] = t_route - t_swap
                s["switch"].append(row["switch"])
                n = bisect.bisect_right(starts, t_swap)
                if n < len(starts):
                    row["wait"] = starts[n] - t_swap
                    s["wait"].append(row["wait"])
                row["gc_switch"] = _overlap(pauses, t_swap, t_route)
            row["gc_delay"] = _overlap(pauses, t, t + row["delay"]) if "delay" in row else 0.0
        per_flip.append(row)
    first_t, last_t = flips[0]["t"], flips[-1]["t"] + 0.05
    steady = [r for r in records if first_t - 1.0 <= r[0] <= last_t]
    latencies = [r[1] - r[0] for r in steady]
    span = (steady[-1][0] - steady[0][0]) if len(steady) > 1 else 1.0
    gc_in_run = [p for p in pauses if first_t - 1.0 <= p[0] <= last_t]
    return {
        "modes": per_mode,
        "flips": per_flip,
        "latency_p50": pct(latencies, 50),
        "latency_p99": pct(latencies, 99),
        "rps": len(steady) / span,
        "requests": len(records),
        "gc": {
            "pauses": len(gc_in_run),
            "max": max((b - a for a, b, _ in gc_in_run), default=0.0),
            "total": sum(b - a for a, b, _ in gc_in_run),
            "seconds": last_t - first_t + 1.0,
        },
    }


def _overlap(pauses: list, start: float, end: float) -> float:
    """Seconds of GC pause inside [start, end]."""
    total = 0.0
    for a, b, _ in pauses[max(0, bisect.bisect_left(pauses, (start - 1.0,))) :]:
        if a > end:
            break
        total += max(0.0, min(b, end) - max(a, start))
    return total


# ------------------------------------------------------------------------------------------ one round
def one_round(args: argparse.Namespace, src: str) -> dict:
    import uvloop

    work = Path(tempfile.mkdtemp(prefix="turnout-switch-"))
    admin, admin_thread = str(work / "admin.sock"), str(work / "admin-thread.sock")
    port, pa, pb = free_port(), free_port(), free_port()
    try:
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
                    "--admin-thread",
                    admin_thread,
                    "--a",
                    f"127.0.0.1:{pa}",
                    "--b",
                    f"127.0.0.1:{pb}",
                    "--src",
                    src,
                ],
                log=work / "proxy.log",
                cpu=args.proxy_cpu,
                cwd=src,
            )
            wait_port(pa, proc=up)
            wait_port(pb, proc=up)
            wait_port(port, proc=proxy)
            wait_port(0, unix=admin, proc=proxy)
            wait_port(0, unix=admin_thread, proc=proxy)
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
            sched0 = {
                name: sched(pr.pid) for name, pr in (("proxy", proxy), ("load", load), ("upstreams", up))
            }
            t0 = time.monotonic()
            flips, stamps = uvloop.run(flip_weights(args, admin, admin_thread))
            span = time.monotonic() - t0
            cpu_wait = {
                name: [b - a for a, b in zip(sched0[name], sched(pr.pid), strict=True)] + [span]
                for name, pr in (("proxy", proxy), ("load", load), ("upstreams", up))
            }
            procs.stop(load, timeout=30)
            records = [(a, b, c.encode("latin-1")) for a, b, c in json.loads(records_path.read_text())]
    finally:
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)  # logs and the records file; the figures are printed
    result = analyse(records, flips, stamps)
    result["cpu_wait"] = cpu_wait
    return result


def sched(pid: int) -> tuple[float, float, int]:
    """(seconds on a CPU, seconds runnable but waiting for one, involuntary context switches) of the
    process's main thread: how much the OS scheduler, not our code, held it up."""
    run_ns, wait_ns, _ = (int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split())
    status = Path(f"/proc/{pid}/status").read_text()
    involuntary = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
    return run_ns / 1e9, wait_ns / 1e9, involuntary


# ------------------------------------------------------------------------------------------ output
COLUMNS = [
    "variant",
    "mode",
    "flips",
    "delay p50 ms",
    "delay p99 ms",
    "switch p50 ms",
    "switch p99 ms",
    "switch max ms",
    "wait p50 ms",
    "ref: request p50 / p99 ms",
    "stale answers",
    "stale routes",
    "admin round trip p50 ms",
    "set_weights µs",
]


def mode_row(variant: str, mode: str, res: dict) -> list | None:
    s = res["modes"].get(mode)
    if not s:
        return None
    d, w = s["delay"], s["switch"]
    return [
        variant,
        mode,
        len(d) + len(s["unseen"]),
        fmt(pct(d, 50) * 1e3, 3),
        fmt(pct(d, 99) * 1e3, 3),
        fmt(pct(w, 50) * 1e3, 3),
        fmt(pct(w, 99) * 1e3, 3),
        fmt(max(w) * 1e3, 3) if w else "-",
        fmt(pct(s["wait"], 50) * 1e3, 3),
        f"{fmt(res['latency_p50'] * 1e3, 3)} / {fmt(res['latency_p99'] * 1e3, 3)}",
        sum(s["stale"]),
        sum(s["stale_routes"]),
        fmt(med(s["roundtrip"]) * 1e3, 3),
        fmt(med(s["call"]) * 1e6, 0) if s["call"] else "-",
        fmt(res["cpu_wait"]["proxy"][1] / res["cpu_wait"]["proxy"][3] * 1e3, 1),
    ]


def median_row(variant: str, mode: str, rounds: list[dict]) -> list | None:
    per = [r["modes"][mode] for r in rounds if mode in r["modes"]]
    if not per:
        return None

    def m(key: str, p: float) -> str:
        return fmt(med(pct(s[key], p) for s in per) * 1e3, 3)

    return [
        variant,
        mode,
        sum(len(s["delay"]) + len(s["unseen"]) for s in per),
        m("delay", 50),
        m("delay", 99),
        m("switch", 50),
        m("switch", 99),
        fmt(med(max(s["switch"]) for s in per if s["switch"]) * 1e3, 3),
        m("wait", 50),
        f"{fmt(med(r['latency_p50'] for r in rounds) * 1e3, 3)} / "
        f"{fmt(med(r['latency_p99'] for r in rounds) * 1e3, 3)}",
        sum(sum(s["stale"]) for s in per),
        sum(sum(s["stale_routes"]) for s in per),
        fmt(med(med(s["roundtrip"]) for s in per) * 1e3, 3),
        fmt(med(med(s["call"]) for s in per if s["call"]) * 1e6, 0) if any(s["call"] for s in per) else "-",
    ]


def tail_rows(variant: str, rounds: list[dict]) -> list[list]:
    """What the slowest 1% of flips (by delay, and by switch) are made of, all modes and rounds pooled."""
    flips = [f for r in rounds for f in r["flips"]]
    rows = []
    for key in ("delay", "switch"):
        have = sorted((f for f in flips if key in f), key=lambda f: f[key])
        if not have:
            continue
        tail = have[len(have) * 99 // 100 :] or have[-1:]
        gc_key = "gc_delay" if key == "delay" else "gc_switch"
        rows.append(
            [
                variant,
                f"slowest 1% by {key}",
                len(tail),
                fmt(med(f[key] for f in tail) * 1e3, 3),
                fmt(med(f.get("first_send", float("nan")) for f in tail) * 1e3, 3),
                fmt(med(f.get("first_lat", float("nan")) for f in tail) * 1e3, 3),
                fmt(med(f.get("switch", float("nan")) for f in tail) * 1e3, 3),
                sum(1 for f in tail if f.get(gc_key, 0.0) > 0),
                fmt(med(f.get(gc_key, 0.0) for f in tail) * 1e3, 3),
                ", ".join(
                    f"{m} {sum(1 for f in tail if f['mode'] == m)}"
                    for m in MODES
                    if any(f["mode"] == m for f in tail)
                ),
            ]
        )
    return rows


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
    parser.add_argument(
        "--flips", type=int, default=400, help="weight flips per round, shared by the modes [400]"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} [all]"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds per variant, interleaved [1]")
    parser.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="measure the proxy/ package of DIR as variant LABEL (repeatable; rounds alternate between "
        "variants) [tree=the working tree]",
    )
    parser.add_argument("--interval", type=float, default=0.025, help="mean seconds between flips [0.025]")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="hard bound on one round's flipping")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--proxy-cpu", default="1", help="pin the proxy to this CPU (taskset) ['1'; '' = no pin]"
    )
    parser.add_argument(
        "--load-cpu",
        default="0",
        help="pin the load generator and the upstreams to this CPU ['0'; '' = no pin]",
    )
    parser.add_argument("--keep", action="store_true", help="keep each round's work dir (logs, records)")
    parser.add_argument("--json", action="store_true", help="also print the raw per-round figures as JSON")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or any(m not in MODES for m in args.modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if args.rounds < 1 or args.flips < 1:
        parser.error("--rounds and --flips must be >= 1")
    variants: list[tuple[str, str]] = []
    for item in args.src or [f"tree={ROOT}"]:
        label, sep, path = item.partition("=")
        if not sep or not label or not (Path(path) / "proxy" / "router.py").is_file():
            parser.error(f"--src {item!r}: want LABEL=DIR where DIR/proxy/router.py exists")
        variants.append((label, str(Path(path).resolve())))

    results: dict[str, list[dict]] = {label: [] for label, _ in variants}
    for n in range(args.rounds):
        order = variants if n % 2 == 0 else variants[::-1]
        for label, src in order:
            print(f"round {n + 1}/{args.rounds}: {label} ({src})", file=sys.stderr, flush=True)
            results[label].append(one_round(args, src))

    print(
        f"\nswitch latency: {args.clients} keep-alive clients, {args.flips} flips per round "
        f"({', '.join(args.modes)} interleaved), {args.rounds} round(s) per variant\n"
    )
    if args.rounds > 1:
        print("per round:\n")
        print(
            md_table(
                ["round", *COLUMNS, "proxy waited for a CPU ms/s"],
                [
                    [n + 1, *row]
                    for label, _ in variants
                    for n, res in enumerate(results[label])
                    for mode in args.modes
                    if (row := mode_row(label, mode, res)) is not None
                ],
            )
        )
        print("\nmedians of the rounds (each figure: its median over rounds; flips and stale: sums):\n")
    print(
        md_table(
            COLUMNS,
            [
                row
                for label, _ in variants
                for mode in args.modes
                if (row := median_row(label, mode, results[label])) is not None
            ],
        )
    )
    print(
        "\ndelay: first response byte from the new upstream among requests started after T, minus T "
        "(a whole round trip included). Target < 1 ms.\nswitch: proxy-side, from the swap to the first "
        "request routed to the new pool. wait: from the swap to the first request any client sent after it."
        "\nstale answers: requests started after T answered by the old upstream; stale routes: requests "
        "routed to the old pool after the swap (proxy-side). Both must be 0."
    )
    print("\nwhat the tail is made of (slowest 1% of flips, modes and rounds pooled; medians):\n")
    print(
        md_table(
            [
                "variant",
                "flips",
                "n",
                "figure ms",
                "first send after T ms",
                "its latency ms",
                "switch ms",
                "with a GC pause inside",
                "GC pause inside ms",
                "modes",
            ],
            [row for label, _ in variants for row in tail_rows(label, results[label])],
        )
    )
    print("\nGC in the proxy (pauses >= 0.1 ms, per round, medians):\n")
    print(
        md_table(
            ["variant", "pauses", "longest ms", "total ms", "seconds"],
            [
                [
                    label,
                    fmt(med(r["gc"]["pauses"] for r in results[label]), 0),
                    fmt(med(r["gc"]["max"] for r in results[label]) * 1e3, 3),
                    fmt(med(r["gc"]["total"] for r in results[label]) * 1e3, 3),
                    fmt(med(r["gc"]["seconds"] for r in results[label]), 1),
                ]
                for label, _ in variants
            ],
        )
    )
    print("\nCPU scheduling during the flipping (main thread of each process; per round, medians):\n")
    print(
        md_table(
            ["variant", "process", "on CPU %", "runnable, waiting for a CPU ms/s", "involuntary switches/s"],
            [
                [
                    label,
                    name,
                    fmt(
                        med(r["cpu_wait"][name][0] / r["cpu_wait"][name][3] for r in results[label]) * 100, 0
                    ),
                    fmt(
                        med(r["cpu_wait"][name][1] / r["cpu_wait"][name][3] for r in results[label]) * 1e3, 1
                    ),
                    fmt(med(r["cpu_wait"][name][2] / r["cpu_wait"][name][3] for r in results[label]), 0),
                ]
                for label, _ in variants
                for name in ("proxy", "load", "upstreams")
            ],
        )
    )
    rps = med(r["rps"] for rs in results.values() for r in rs)
    print(f"\n{rps:.0f} req/s through the proxy (median of rounds); machine: {machine_line()}")
    if args.json:
        print(
            json.dumps(
                {
                    label: [
                        {
                            "rps": r["rps"],
                            "latency_p50": r["latency_p50"],
                            "latency_p99": r["latency_p99"],
                            "modes": {
                                m: {
                                    "delay": s["delay"],
                                    "switch": s["switch"],
                                    "stale": sum(s["stale"]),
                                    "stale_routes": sum(s["stale_routes"]),
                                }
                                for m, s in r["modes"].items()
                            },
                        }
                        for r in rs
                    ]
                    for label, rs in results.items()
                }
            )
        )


if __name__ == "__main__":
    main()
