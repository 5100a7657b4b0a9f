"""Scale: proxy memory with 10,000 idle keep-alive clients, routing with 1,000 upstreams, and requests/s
with 1,000 concurrent clients -- each beside a reference measured in the same run. Loopback only.

(a) memory  RSS of `python -m proxy` idle (after one request) and holding --idle-conns idle keep-alive
            client connections (opened from this process with asyncio, each after one complete request),
            and the proxy's CPU while it only holds them. Reference: nginx, 1 worker, as a reverse proxy
            with a keep-alive upstream (worker RSS; master + worker in brackets). Rounds alternate.
(b) routing a Router with one service of 10 pools x 100 upstreams (1,000 addresses) against a 1 pool x 1
            upstream table: in-process cost of table.match + Service.select + Pool.pick per request, and
            of one weights swap (set_weights rebuilds the snapshot), for round_robin and
            least_outstanding; then end-to-end rps (wrk -c50) through a proxy holding that table, whose
            1,000 addresses are 1,000 listening ports of one asyncio upstream process, vs the 1x1 table.
(c) clients wrk -t1 -c1000 through `python -m proxy` vs nginx (same upstream: nginx `return 200`),
            plus a c=50 run of each for the ratio c1000/c50. Rounds alternate the order. `--with-log`:
            also the proxy with its access log on (JSON lines to a file). `--serve`: also `turnout serve`
            at its defaults (the daemon as users start it, access log on to stderr).

CPU placement as in bench/harness.sh: wrk and upstreams on CPU 0, the proxy under test on CPU 1.

    .venv/bin/python bench/scale.py                 # all three parts: about 5 min
    .venv/bin/python bench/scale.py --parts a --idle-conns 10000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
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
    children_of,
    cpu_seconds,
    fmt,
    free_port,
    free_port_block,
    machine_line,
    md_table,
    med,
    raise_nofile,
    rss_kib,
    wait_port,
)

NOFILE = 1 << 20  # asked for; capped at the hard limit
LOAD_CPU, PROXY_CPU = "0", "1"
HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ proxy role
def proxy_role(argv: list[str]) -> None:
    """Subprocess: the proxy with a table of POOLS x PER_POOL upstreams at BASE.. (the same code path as
    `python -m proxy`, only the table differs)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--base", type=int, required=True)
    parser.add_argument("--pools", type=int, default=10)
    parser.add_argument("--per-pool", type=int, default=100)
    parser.add_argument("--balance", default="round_robin")
    args = parser.parse_args(argv)
    raise_nofile(NOFILE)
    import uvloop

    from proxy.__main__ import serve
    from proxy.config import ProxyConfig
    from proxy.router import Router

    config = ProxyConfig(listen=args.listen)
    router = Router(hold_timeout=config.hold_timeout, drain_timeout=config.drain_timeout)
    router.set_service(table_spec(args.pools, args.per_pool, args.base, args.balance))
    uvloop.run(serve(config, router))


def table_spec(pools: int, per_pool: int, base: int, balance: str):
    from proxy.specs import ServiceSpec

    return ServiceSpec.from_dict(
        {
            "name": "default",
            "balance": balance,
            "pools": [
                {
                    "name": f"p{i}",
                    "weight": 10,
                    "upstreams": [f"127.0.0.1:{base + i * per_pool + j}" for j in range(per_pool)],
                }
                for i in range(pools)
            ],
        }
    )


# ------------------------------------------------------------------------------------------ nginx
def nginx_conf(prefix: Path, listen: int, upstream: int | None, worker_connections: int = 12000) -> Path:
    for d in ("tmp_body", "tmp_proxy", "tmp_fastcgi", "tmp_uwsgi", "tmp_scgi"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    if upstream is None:  # the upstream itself: a fixed 3-byte answer
        server = (
            f'  server {{ listen 127.0.0.1:{listen} backlog=4096; location = / {{ return 200 "ok\\n"; }} }}'
        )
    else:  # a reverse proxy, as in bench/harness.sh
        server = f"""  upstream up {{ server 127.0.0.1:{upstream}; keepalive 128; keepalive_requests 1000000;
    keepalive_timeout 60s; }}
  server {{ listen 127.0.0.1:{listen} backlog=4096;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""
    conf = f"""worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  default_type text/plain;
  keepalive_timeout 120;
  keepalive_requests 1000000;
  client_body_temp_path {prefix}/tmp_body;
  proxy_temp_path {prefix}/tmp_proxy;
  fastcgi_temp_path {prefix}/tmp_fastcgi;
  uwsgi_temp_path {prefix}/tmp_uwsgi;
  scgi_temp_path {prefix}/tmp_scgi;
{server}
}}
"""
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def start_nginx(procs: Procs, prefix: Path, listen: int, upstream: int | None, cpu: str) -> subprocess.Popen:
    conf = nginx_conf(prefix, listen, upstream)
    proc = procs.start(
        ["nginx", "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(conf)],
        log=prefix / "stdout.log",
        cpu=cpu,
        nofile=NOFILE,
    )
    wait_port(listen, proc=proc)
    return proc


def nginx_worker(master: int) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        kids = children_of(master)
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise RuntimeError("nginx worker not found")


# ------------------------------------------------------------------------------------------ clients
class IdleClient(asyncio.Protocol):
    REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    def __init__(self, answered: asyncio.Future) -> None:
        self.answered = answered
        self.buf = b""
        self.lost = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.REQUEST)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0 and not self.answered.done():
            head = self.buf[:end].lower()
            m = re.search(rb"content-length:\s*(\d+)", head)
            if m and len(self.buf) >= end + 4 + int(m.group(1)):
                self.answered.set_result(head.startswith(b"http/1.1 200"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.answered.done():
            self.answered.set_result(False)


async def open_idle(port: int, count: int, parallel: int = 200, timeout: float = 120.0) -> tuple[list, int]:
    loop = asyncio.get_running_loop()
    clients: list[IdleClient] = []
    sem = asyncio.Semaphore(parallel)
    ok = 0

    async def one() -> None:
        nonlocal ok
        async with sem:
            answered = loop.create_future()
            try:
                _, proto = await loop.create_connection(lambda: IdleClient(answered), "127.0.0.1", port)
            except OSError:
                return
            clients.append(proto)
            if await asyncio.wait_for(answered, 10):
                ok += 1

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count)), return_exceptions=True), timeout)
    return clients, ok


def close_all(clients: list) -> None:
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


# ------------------------------------------------------------------------------------------ wrk
REPORT_LUA = """done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status,
    latency.max))
end
"""


def wrk(port: int, conns: int, seconds: float, lua: Path, pid: int | None = None) -> dict:
    cpu0 = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(
        [
            "taskset",
            "-c",
            LOAD_CPU,
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=lambda: raise_nofile(NOFILE),
    )
    cpu1 = cpu_seconds(pid) if pid else 0.0
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out.stdout)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    req, dur, p50, p99, serr, status, mx = map(int, m.groups())
    return {
        "rps": req / (dur / 1e6),
        "p50": p50 / 1e3,
        "p99": p99 / 1e3,
        "sock_err": serr,
        "status_err": status,
        "requests": req,
        "cpu": (cpu1 - cpu0) / (dur / 1e6) * 100 if pid else float("nan"),
        "us_per_req": (cpu1 - cpu0) / max(req, 1) * 1e6 if pid else float("nan"),
    }


def group_cpu(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(k) for k in children_of(pid))


# ------------------------------------------------------------------------------------------ parts
def part_memory(args: argparse.Namespace, work: Path, procs: Procs) -> str:
    import uvloop

    up_port = free_port()
    up = procs.start(
        [PYTHON, str(HERE / "_benchlib.py"), "upstreams", "--listen", f"127.0.0.1:{up_port}=ok"],
        log=work / "mem-upstream.log",
        cpu=LOAD_CPU,
    )
    wait_port(up_port, proc=up)
    rows: dict[str, list[dict]] = {"turnout": [], "nginx": []}
    order = ["turnout", "nginx", "nginx", "turnout"] * ((args.rounds + 1) // 2)
    for i, target in enumerate(order[: 2 * args.rounds]):
        port = free_port()
        if target == "turnout":
            proc = procs.start(
                [
                    PYTHON,
                    "-m",
                    "proxy",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--upstream",
                    f"127.0.0.1:{up_port}",
                ],
                log=work / "mem-proxy.log",
                cpu=PROXY_CPU,
                nofile=NOFILE,
                cwd=str(ROOT),
            )
            wait_port(port, proc=proc)
            pid = proc.pid
            rss = lambda pid=pid: (rss_kib(pid), rss_kib(pid))  # noqa: E731
            cpu = lambda pid=pid: cpu_seconds(pid)  # noqa: E731
        else:
            proc = start_nginx(procs, work / f"nginx-mem-{i}", port, up_port, PROXY_CPU)
            worker = nginx_worker(proc.pid)
            rss = lambda w=worker, m=proc.pid: (rss_kib(w), rss_kib(w) + rss_kib(m))  # noqa: E731
            cpu = lambda w=worker: cpu_seconds(w)  # noqa: E731
        # idle: one request made (code paths loaded), then settle
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/"], check=False, timeout=10
        )
        time.sleep(0.5)
        idle = rss()

        async def hold(port: int = port, rss=rss, cpu=cpu) -> dict:
            t0 = time.monotonic()
            clients, ok = await open_idle(port, args.idle_conns)
            opened = time.monotonic() - t0
            await asyncio.sleep(1.0)
            loaded = rss()
            c0 = cpu()
            await asyncio.sleep(args.hold)
            held_cpu = (cpu() - c0) / args.hold * 100
            still_open = sum(1 for c in clients if not c.lost)
            close_all(clients)
            return {"ok": ok, "open": still_open, "loaded": loaded, "cpu": held_cpu, "opened_s": opened}

        held = uvloop.run(hold())
        rows[target].append({"idle": idle, **held})
        print(
            f"  memory round {i + 1}: {target} idle {idle[0] / 1024:.1f} MiB, with {held['ok']} answered "
            f"/ {held['open']} still open: {held['loaded'][0] / 1024:.1f} MiB, idle CPU {held['cpu']:.1f}%",
            file=sys.stderr,
            flush=True,
        )
        procs.stop(proc)
    procs.stop(up)

    def mib(kib: float) -> str:
        return fmt(kib / 1024, 1)

    table = []
    t_idle = med([r["idle"][0] for r in rows["turnout"]])
    t_load = med([r["loaded"][0] for r in rows["turnout"]])
    n_idle = med([r["idle"][0] for r in rows["nginx"]])
    n_load = med([r["loaded"][0] for r in rows["nginx"]])
    for target, targets in (
        ("turnout (python -m proxy)", rows["turnout"]),
        ("nginx 1 worker", rows["nginx"]),
    ):
        i0, l0 = med([r["idle"][0] for r in targets]), med([r["loaded"][0] for r in targets])
        i1, l1 = med([r["idle"][1] for r in targets]), med([r["loaded"][1] for r in targets])
        per = (l0 - i0) * 1024 / args.idle_conns
        table.append(
            [
                target,
                f"{mib(i0)} ({mib(i1)})",
                f"{mib(l0)} ({mib(l1)})",
                fmt(per, 0),
                f"{min(r['ok'] for r in targets)} / {min(r['open'] for r in targets)}",
                fmt(med([r["cpu"] for r in targets]), 1),
                fmt(med([r["opened_s"] for r in targets]), 1),
            ]
        )
    verdict = (
        f"turnout idle {mib(t_idle)} MiB (target ≤ 60: {'met' if t_idle / 1024 <= 60 else 'MISSED'}), "
        f"with {args.idle_conns} connections {mib(t_load)} MiB (target ≤ 300: "
        f"{'met' if t_load / 1024 <= 300 else 'MISSED'}); xnginx: idle {t_idle / n_idle:.1f}x, "
        f"with connections {t_load / n_load:.1f}x, per connection "
        f"{(t_load - t_idle) / max(n_load - n_idle, 1):.1f}x"
    )
    return (
        f"#### (a) memory: RSS idle and with {args.idle_conns} idle keep-alive clients "
        f"(medians of {args.rounds} rounds)\n\n"
        + md_table(
            [
                "proxy",
                "RSS idle MiB (total)",
                f"RSS with {args.idle_conns} conns MiB (total)",
                "bytes per conn",
                "answered / still open (min)",
                f"CPU % while holding ({args.hold:g} s)",
                "s to open them",
            ],
            table,
        )
        + f"\n\n{verdict}. RSS = VmRSS of the proxy process (nginx: the worker; in brackets master + worker)."
    )


def part_routing_inprocess(args: argparse.Namespace) -> str:
    import io

    from proxy.log import configure
    from proxy.router import Router

    real_stderr = sys.stderr
    sys.stderr = io.StringIO() if False else open(os.devnull, "w")
    try:
        configure("info", json=True)
    finally:
        sys.stderr = real_stderr

    def measure(pools: int, per_pool: int, balance: str) -> tuple[float, float]:
        router = Router()
        router.set_service(table_spec(pools, per_pool, 40000, balance))
        n = args.calls
        table = router.table
        t0 = time.perf_counter()
        for _ in range(n):
            service = table.match("bench", "/")
            pool, _ = service.select(None, None)
            pool.pick()
        per_call = (time.perf_counter() - t0) / n * 1e6
        weights_a = {f"p{i}": (10 if i else 20) for i in range(pools)}
        weights_b = {f"p{i}": 10 for i in range(pools)}
        swaps = 50
        t0 = time.perf_counter()
        for k in range(swaps):
            router.set_weights("default", weights_a if k % 2 else weights_b)
        per_swap = (time.perf_counter() - t0) / swaps * 1e6
        return per_call, per_swap

    configs = [
        ("1 pool x 1", 1, 1, "round_robin"),
        ("10 pools x 100, round_robin", 10, 100, "round_robin"),
        ("10 pools x 100, least_outstanding", 10, 100, "least_outstanding"),
        ("1 pool x 1000, least_outstanding", 1, 1000, "least_outstanding"),
    ]
    results: dict[str, list[tuple[float, float]]] = {c[0]: [] for c in configs}
    for rnd in range(args.micro_rounds):
        for name, pools, per_pool, balance in configs[rnd % len(configs) :] + configs[: rnd % len(configs)]:
            results[name].append(measure(pools, per_pool, balance))
    base_call = med([r[0] for r in results[configs[0][0]]])
    base_swap = med([r[1] for r in results[configs[0][0]]])
    rows = []
    for name, *_ in configs:
        call, swap = med([r[0] for r in results[name]]), med([r[1] for r in results[name]])
        rows.append([name, fmt(call, 2), fmt(call / base_call, 2), fmt(swap, 0), fmt(swap / base_swap, 1)])
    return (
        "#### (b1) routing cost in-process (match + select + pick per request; one weights swap)\n\n"
        + md_table(["table", "µs per request", "x 1x1", "µs per swap (set_weights)", "x 1x1"], rows)
        + f"\n\nmedians of {args.micro_rounds} interleaved rounds of {args.calls} calls / 50 swaps; "
        "swaps include the `table.changed` log line (JSON, to /dev/null)."
    )


def part_routing_e2e(args: argparse.Namespace, work: Path, procs: Procs, lua: Path) -> str:
    base = free_port_block(1000)
    up = procs.start(
        [PYTHON, str(HERE / "_benchlib.py"), "upstreams", "--range", f"127.0.0.1:{base}:1000=ok"],
        log=work / "route-upstreams.log",
        cpu=LOAD_CPU,
        nofile=NOFILE,
    )
    wait_port(base, proc=up, timeout=60)
    wait_port(base + 999, proc=up, timeout=60)
    targets = {
        "1 pool x 1": (1, 1, "round_robin"),
        "10 pools x 100, round_robin": (10, 100, "round_robin"),
        "10 pools x 100, least_outstanding": (10, 100, "least_outstanding"),
    }
    ports, pids = {}, {}
    for name, (pools, per, bal) in targets.items():
        port = free_port()
        proc = procs.start(
            [
                PYTHON,
                __file__,
                "--role-proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--base",
                str(base),
                "--pools",
                str(pools),
                "--per-pool",
                str(per),
                "--balance",
                bal,
            ],
            log=work / "route-proxy.log",
            cpu=PROXY_CPU,
            cwd=str(ROOT),
        )
        wait_port(port, proc=proc)
        ports[name], pids[name] = port, proc.pid
    for name in targets:  # warm-up: every upstream gets pooled connections
        wrk(ports[name], 50, 2, lua)
    runs: dict[str, list[dict]] = {n: [] for n in targets}
    names = list(targets)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            runs[name].append(wrk(ports[name], 50, args.seconds, lua, pids[name]))
    procs.stop(up)
    rows = []
    first = names[0]
    for name in names:
        rs = runs[name]
        ratio = med([r["rps"] / b["rps"] for r, b in zip(rs, runs[first], strict=True)])
        rows.append(
            [
                name,
                fmt(med([r["rps"] for r in rs]), 0),
                fmt(ratio, 2),
                fmt(med([r["p50"] for r in rs]), 2),
                fmt(med([r["p99"] for r in rs]), 2),
                fmt(med([r["us_per_req"] for r in rs]), 1),
                sum(r["sock_err"] + r["status_err"] for r in rs),
            ]
        )
    return (
        f"#### (b2) end to end with 1,000 upstream addresses (wrk -t1 -c50 -d{args.seconds:g}s, "
        f"medians of {args.rounds} interleaved rounds)\n\n"
        + md_table(
            ["proxy table", "rps", "x 1x1 (same round)", "p50 ms", "p99 ms", "proxy µs CPU/req", "errors"],
            rows,
        )
    )


def part_clients(args: argparse.Namespace, work: Path, procs: Procs, lua: Path) -> str:
    up_port = free_port()
    start_nginx(procs, work / "nginx-upstream", up_port, None, LOAD_CPU)
    ngx_port, px_port = free_port(), free_port()
    ngx = start_nginx(procs, work / "nginx-proxy", ngx_port, up_port, PROXY_CPU)
    ngx_worker = nginx_worker(ngx.pid)
    px = procs.start(
        [PYTHON, "-m", "proxy", "--listen", f"127.0.0.1:{px_port}", "--upstream", f"127.0.0.1:{up_port}"],
        log=work / "clients-proxy.log",
        cpu=PROXY_CPU,
        nofile=NOFILE,
        cwd=str(ROOT),
    )
    wait_port(px_port, proc=px)
    targets = {"nginx": (ngx_port, ngx_worker), "turnout": (px_port, px.pid)}
    if args.with_log:  # also with its access log on (to a file, as the harness's nginx-log writes one)
        log_port = free_port()
        pxl = procs.start(
            [PYTHON, "-m", "proxy", "--listen", f"127.0.0.1:{log_port}", "--upstream", f"127.0.0.1:{up_port}",
             "--access-log"],
            log=work / "clients-proxy-log.log",
            cpu=PROXY_CPU,
            nofile=NOFILE,
            cwd=str(ROOT),
        )
        wait_port(log_port, proc=pxl)
        targets["turnout-log"] = (log_port, pxl.pid)
    if args.serve:  # `turnout serve` as users start it: the daemon at its defaults (access log on, stderr)
        serve_port = free_port()
        srv = procs.start(
            [str(ROOT / "bench" / "serve_target.sh"), "serve", str(serve_port), f"127.0.0.1:{up_port}"],
            log=work / "clients-serve.log",
            cpu=PROXY_CPU,
            nofile=NOFILE,
            cwd=str(ROOT),
            env={**os.environ, "WORK": str(work)},
        )
        wait_port(serve_port, proc=srv)
        targets["serve"] = (serve_port, srv.pid)
    for port, _ in targets.values():
        wrk(port, args.clients, 2, lua)
    runs: dict[tuple[str, int], list[dict]] = {}
    names = list(targets)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            port, pid = targets[name]
            for conns, secs in ((args.clients, args.seconds * 2), (50, args.seconds)):
                runs.setdefault((name, conns), []).append(wrk(port, conns, secs, lua, pid))
    rows = []
    for name in names:
        for conns in (args.clients, 50):
            rs, ref = runs[(name, conns)], runs[("nginx", conns)]
            xngx = med([r["rps"] / b["rps"] for r, b in zip(rs, ref, strict=True)])
            scale = med([a["rps"] / b["rps"] for a, b in zip(rs, runs[(name, 50)], strict=True)])
            rows.append(
                [
                    name,
                    conns,
                    fmt(med([r["rps"] for r in rs]), 0),
                    fmt(xngx, 2),
                    fmt(scale, 2),
                    fmt(med([r["p50"] for r in rs]), 2),
                    fmt(med([r["p99"] for r in rs]), 2),
                    fmt(med([r["cpu"] for r in rs]), 0),
                    fmt(med([r["us_per_req"] for r in rs]), 1),
                    sum(r["sock_err"] for r in rs),
                    sum(r["status_err"] for r in rs),
                ]
            )
    return (
        f"#### (c) {args.clients} concurrent clients (wrk -t1 -c{args.clients} -d{args.seconds * 2:g}s; "
        f"c=50 -d{args.seconds:g}s; medians of {args.rounds} rounds, order alternating)\n\n"
        + md_table(
            [
                "proxy",
                "clients",
                "rps",
                "x nginx (same round)",
                "x own c=50",
                "p50 ms",
                "p99 ms",
                "proxy CPU %",
                "µs CPU/req",
                "socket errors",
                "non-2xx",
            ],
            rows,
        )
        + '\n\nupstream: nginx `return 200 "ok\\n"` (1 worker, CPU 0 with wrk); proxies on CPU 1.'
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--role-proxy":
        proxy_role(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--parts", default="a,b,c", help="which parts: a (memory), b (routing), c (clients)")
    parser.add_argument("--idle-conns", type=int, default=10000)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds the idle connections are held [5]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds for a and the wrk parts [3]")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk seconds per run (c=1000: twice) [5]")
    parser.add_argument("--clients", type=int, default=1000, help="concurrent clients for part c [1000]")
    parser.add_argument("--with-log", action="store_true",
                        help="part c: also the proxy with its access log on (JSON lines to a file)")
    parser.add_argument("--serve", action="store_true",
                        help="part c: also `turnout serve` at its defaults (needs dockerd)")
    parser.add_argument("--calls", type=int, default=200000, help="in-process routing calls per round")
    parser.add_argument("--micro-rounds", type=int, default=5)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    limit = raise_nofile(NOFILE)
    if "a" in parts and limit < args.idle_conns + 100:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: cannot open {args.idle_conns} connections")
    work = Path(tempfile.mkdtemp(prefix="turnout-scale-"))
    lua = work / "report.lua"
    lua.write_text(REPORT_LUA)
    t0 = time.monotonic()
    out = []
    with Procs() as procs:
        if "a" in parts:
            out.append(part_memory(args, work, procs))
            print(out[-1] + "\n", flush=True)
        if "b" in parts:
            out.append(part_routing_inprocess(args))
            print(out[-1] + "\n", flush=True)
            out.append(part_routing_e2e(args, work, procs, lua))
            print(out[-1] + "\n", flush=True)
        if "c" in parts:
            out.append(part_clients(args, work, procs, lua))
            print(out[-1] + "\n", flush=True)
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # configs and logs of the processes it ran
    print(
        f"RLIMIT_NOFILE {limit} (this process, the proxies and wrk); "
        f"ran {time.monotonic() - t0:.0f} s; machine: {machine_line()}"
    )


if __name__ == "__main__":
    main()
