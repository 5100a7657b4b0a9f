#!/usr/bin/env python3
"""The proxy's per-request Python work with the sockets taken away: a socket-free micro-benchmark.

Drives a real `ClientConnection` and `UpstreamConnection` (real Router, snapshot, pool, metrics, header
handling) through fake transports that only keep what is written, so one loop iteration is exactly the
Python the hot path runs for one keep-alive request: the request read, routing, the upstream write, the
upstream's answer, the client write, the end of the exchange. No syscalls, no event loop wake-ups.

    .venv/bin/python bench/hotpath_micro.py [--requests 200000] [--answer 16k] [--distinct] [--rules 3]
    valgrind --tool=callgrind .venv/bin/python bench/hotpath_micro.py --requests 20000 --callgrind

`--distinct`: every request head differs (a unique header), so no per-head cache can help.
`--access-log json|combined`: with the access log on (its lines made and handed to a writer thread that
throws them away), as `turnout serve` runs by default.
`--rules N`: the service has a weight-0 canary pool and N routing rules to it that the request does not
match (bench/rules_proxy.py's); `--match`: the last one matches every request.
`--callgrind`: zero callgrind's counters after the warm-up and dump them after the timed loop (run under
valgrind; then Ir / requests is the Python cost per request, to ~0.1%).
Run it under the machine lock (it is a timing benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from proxy.__main__ import static_router
from proxy.access_log import AccessLog
from proxy.config import ProxyConfig
from proxy.log_writer import LogWriter
from proxy.server import ProxyServer
from proxy.upstream_conn import UpstreamConnection

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18099\r\n\r\n"  # what wrk sends
ANSWERS = {  # what the harness's nginx upstream answers
    "3": (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 08:40:00 GMT\r\n"
          b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n"),
    "16k": (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 08:40:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 16384\r\n"
            b"Last-Modified: Tue, 01 Dec 2026 08:00:00 GMT\r\nConnection: keep-alive\r\n"
            b"ETag: \"692d4c80-4000\"\r\nAccept-Ranges: bytes\r\n\r\n"
            + b"x" * 16384),
}


class FakeTransport:
    """Keeps the last write; everything else a Protocol may call is a no-op."""

    def __init__(self) -> None:
        self.last = b""
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.last = data
        self.writes += 1

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def callgrind(action: str) -> None:
    """Zero (-z) or dump (-d) this process's callgrind counters."""
    subprocess.run(["callgrind_control", action, str(os.getpid())], check=True, capture_output=True)


class Discard:
    """Where the access log's lines go: counted, then forgotten."""

    lines = 0

    def write(self, data: bytes) -> None:
        self.lines += data.count(b"\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--answer", choices=sorted(ANSWERS), default="3")
    ap.add_argument("--distinct", action="store_true", help="a different request head every time")
    ap.add_argument("--callgrind", action="store_true", help="zero/dump callgrind around the timed loop")
    ap.add_argument("--access-log", choices=("off", "json", "combined"), default="off")
    ap.add_argument("--rules", type=int, default=0, help="routing rules (none matching the request)")
    ap.add_argument("--match", action="store_true", help="with --rules: the last rule matches every request")
    args = ap.parse_args()

    import uvloop

    loop = uvloop.new_event_loop()
    config = ProxyConfig(listen="127.0.0.1:18099", access_log=False)
    router = static_router(config, ["127.0.0.1:18080"])
    if args.rules:
        from rules_proxy import MATCH_ALL, RULES

        from proxy.specs import ServiceSpec

        rules = RULES[:args.rules]
        if args.match:
            rules = [*rules[:-1], MATCH_ALL]
        router.set_service(ServiceSpec.from_dict({
            "name": "default", "labels": {"stable": "main", "canary": "canary"}, "rules": rules,
            "pools": [{"name": "main", "weight": 1, "upstreams": ["127.0.0.1:18080"]},
                      {"name": "canary", "weight": 0, "upstreams": ["127.0.0.1:18080"]}]}))
    server = ProxyServer(router, config)
    server.loop = loop
    discard = Discard()
    if args.access_log != "off":
        server.access_log = AccessLog(LogWriter(stream=discard), args.access_log)
    upstream = next(iter(router.upstreams.values()))
    conn = UpstreamConnection(upstream)
    up_transport = FakeTransport()
    conn.connection_made(up_transport)  # type: ignore[arg-type]
    upstream.idle.append(conn)
    client = server.connections  # noqa: F841  (filled by connection_made)
    from proxy.forward import ClientConnection, LoggedClientConnection

    cc = (ClientConnection if server.access_log is None else LoggedClientConnection)(server)
    client_transport = FakeTransport()
    cc.connection_made(client_transport)  # type: ignore[arg-type]
    answer = ANSWERS[args.answer]
    if args.distinct:
        heads = [b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18099\r\nX-N: %d\r\n\r\n" % i
                 for i in range(args.requests)]
    else:
        heads = [REQUEST] * args.requests

    def once(head: bytes) -> None:
        cc.data_received(head)
        up = cc.upconn
        up.data_received(answer)

    async def timed() -> float:  # inside the loop, as the proxy runs (the log's flush timer needs it)
        for head in heads[: min(2000, len(heads))]:  # warm-up (and a check that it really proxies)
            once(head)
        if server.access_log is not None:
            server.access_log.writer.sync()
            assert discard.lines >= min(2000, len(heads)), discard.lines
        if args.callgrind:
            callgrind("-z")
        t0 = time.perf_counter()
        for head in heads:
            once(head)
        elapsed = time.perf_counter() - t0
        if args.callgrind:
            callgrind("-d")
        return elapsed

    writes0 = min(2000, len(heads))
    elapsed = loop.run_until_complete(timed())
    assert client_transport.last.endswith(answer[answer.find(b"\r\n\r\n") + 4:]), client_transport.last[:200]
    assert b"X-Request-Id:" in up_transport.last and b"Via: 1.1 turnout" in client_transport.last
    assert client_transport.writes - writes0 == args.requests, "one client write per request"
    log = "" if args.access_log == "off" else f", access log {args.access_log}"
    rules = f", {args.rules} rules{' (one matching)' if args.match else ''}" if args.rules else ""
    distinct = " distinct heads" if args.distinct else ""
    print(f"{args.requests} requests, answer {args.answer}{distinct}{rules}{log}: "
          f"{elapsed / args.requests * 1e6:.2f} us/request of Python hot path "
          f"(client writes/request {(client_transport.writes - writes0) / args.requests:.0f}, "
          f"upstream writes/request {up_transport.writes / (args.requests + min(2000, len(heads))):.0f})")
    loop.close()
    asyncio.set_event_loop(None)


if __name__ == "__main__":
    main()
