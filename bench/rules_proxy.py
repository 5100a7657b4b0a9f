"""The standalone proxy (`python -m proxy`) with routing rules or a mirror, for bench/rules_bench.sh.

    python bench/rules_proxy.py --listen 127.0.0.1:P --upstream 127.0.0.1:U [--rules N] [--match]
                                [--mirror dead|slow|black-hole] [--percent 10] [--slow 1.0]

One service "default" with a stable pool (the upstream, weight 100) and a canary pool at weight 0:
- `--rules N`: N rules to the canary on header, cookie-hash and query values; none matches wrk's requests
  (the usual request), unless `--match`, which makes the last one match every request (then every
  request goes to the canary pool, on the same upstream).
- `--mirror`: copies of `--percent` of the requests to the canary pool, whose one upstream is `dead` (a
  port nothing listens on: connection refused), `slow` (answers after `--slow` seconds) or `black-hole`
  (accepts and never answers: every copy waits for the mirror's timeout). The slow and black-hole servers
  run in a child process (the harness ends the proxy's process group, and the child with it).
Without `--rules` and `--mirror` the canary pool is at weight 0 and unused: the same routing as
`python -m proxy` with its one pool (the fast lane's `Service.only`).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.__main__ import serve
from proxy.config import ProxyConfig
from proxy.limits import files_for_proxy, raise_open_files_limit
from proxy.log import configure
from proxy.router import Router
from proxy.specs import ServiceSpec

RULES = [
    {"name": "insiders", "match": {"header": {"X-Canary": "always"}}, "to": "canary"},
    {"name": "beta-10pct", "match": {"hash": {"cookie": "account_id", "percent": 10}}, "to": "canary"},
    {"name": "preview", "match": {"query": {"preview": "regex:[0-9]+"}}, "to": "canary"},
    {"name": "agents", "match": {"header": {"User-Agent": "prefix:curl/"}}, "to": "canary"},
]
MATCH_ALL = {"name": "everyone", "match": {"header": {"Host": "regex:.*"}}, "to": "canary"}

SLOW_SERVER = """
import asyncio, sys
delay, port = float(sys.argv[1]), int(sys.argv[2])
async def answer(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            if delay < 0:  # black hole
                await asyncio.sleep(3600)
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
            await writer.drain()
    except Exception:
        writer.transport.abort()
async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def canary_address(mirror: str | None, slow: float) -> str:
    port = free_port()
    if mirror in ("slow", "black-hole"):
        delay = -1.0 if mirror == "black-hole" else slow
        subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(delay), str(port)])
        for _ in range(100):  # until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                import time

                time.sleep(0.05)
    return f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--rules", type=int, default=0, help=f"0-{len(RULES)} rules")
    parser.add_argument("--match", action="store_true", help="the last rule matches every request")
    parser.add_argument("--mirror", choices=("dead", "slow", "black-hole"))
    parser.add_argument("--percent", type=float, default=10.0)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds the slow target takes")
    args = parser.parse_args()
    configure()
    config = ProxyConfig(listen=args.listen, access_log=False)
    raise_open_files_limit(files_for_proxy(config.max_connections))
    rules = RULES[:args.rules]
    if args.match:
        rules = [*rules[:-1], MATCH_ALL] if rules else [MATCH_ALL]
    canary = args.upstream if args.rules else canary_address(args.mirror, args.slow)
    data = {"name": "default", "labels": {"stable": "stable", "canary": "canary"},
            "pools": [{"name": "stable", "weight": 100, "upstreams": [args.upstream]},
                      {"name": "canary", "weight": 0, "upstreams": [canary]}],
            "rules": rules}
    if args.mirror:
        data["mirror"] = {"to": "canary", "percent": args.percent, "max_per_second": 100_000}
    router = Router(hold_timeout=config.hold_timeout, drain_timeout=config.drain_timeout)
    router.set_service(ServiceSpec.from_dict(data))

    import uvloop

    uvloop.run(serve(config, router))
    stats = router.metrics.mirrors.get("default")
    if stats is not None:  # what bench/mirror_memory.py reports
        print("mirror " + json.dumps(stats.as_dict()), flush=True)


if __name__ == "__main__":
    main()
