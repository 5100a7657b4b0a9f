"""`turnout`: the command line. It only parses arguments, builds requests and prints answers; the work
happens in the daemon (`turnout serve`), so a deploy survives the CLI exiting.

Exit codes: 0 success; 1 the operation failed (a deploy failed or was rolled back: the old version
still serves); 2 bad usage or the daemon could not be reached; 141 (128 + SIGPIPE) when stdout was
closed (`turnout deploy ... | head -1`): the CLI stops quietly, a deploy goes on in the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config.model import STRATEGIES
from .errors import TurnoutError, UsageError
from .events import describe_event

EXAMPLES = """\
examples:
  turnout serve                                   # proxy on 127.0.0.1:8000, state in .turnout/
  turnout deploy web --image myapp:v1 --port 8080 --replicas 2
  turnout deploy web --image myapp:v2 --strategy canary --steps 5,25,50,100 --step-pause 30s
  turnout status web
  turnout rollback web
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout", description="Zero-downtime deploys (big-bang, blue-green, rolling, canary) "
        "on a single Docker host.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="daemon state (journal, admin socket) [default: .turnout or $TURNOUT_STATE_DIR]")
    parser.add_argument("--socket", type=Path, default=None,
                        help="admin socket of the daemon [default: STATE_DIR/admin.sock]")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy and the controller (the daemon)")
    serve.add_argument("--config", type=Path, help="turnout.toml (without it: embedded defaults)")
    serve.add_argument("--listen", help="proxy listen address, e.g. 127.0.0.1:8000")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    serve.add_argument("--prune-strays", action="store_true",
                       help="remove containers that carry this daemon's owner label but that its journal "
                       "never recorded (made by hand, or left by a lost journal); without it they are "
                       "left alone and reported")

    deploy = sub.add_parser("deploy", help="deploy an image to a service, following progress live",
                            description="Deploy IMAGE to SERVICE. Exits 0 when the new version serves "
                            "100%, 1 when the deploy failed or was rolled back (the old version serves).")
    deploy.add_argument("service")
    deploy.add_argument("--image", required=True, help="a local image (Turnout never pulls)")
    deploy.add_argument("--strategy", choices=STRATEGIES,
                        help="default: the service's configured strategy (rolling)")
    deploy.add_argument("--version", help="version name [default: the image tag]")
    new = deploy.add_argument_group("a service not in the config is created from these")
    new.add_argument("--port", type=int, help="container port the app listens on")
    new.add_argument("--replicas", type=int)
    new.add_argument("--health-path", help="HTTP path that answers 2xx when ready [/healthz]")
    new.add_argument("--host", help="Host header routed to this service")
    opts = deploy.add_argument_group("strategy options")
    opts.add_argument("--steps", help="canary weights, e.g. 5,25,50,100")
    opts.add_argument("--step-pause", help="canary pause per step, e.g. 30s, or 'manual' (wait for promote)")
    opts.add_argument("--preset", help="canary preset: canary10-5m, linear10-1m, all-at-once, ...")
    opts.add_argument("--max-error-rate", type=float, help="canary: roll back above this 5xx share [0.05]")
    opts.add_argument("--max-surge", type=int, help="rolling: extra containers during the update [1]")
    opts.add_argument("--max-unavailable", type=int, help="rolling: containers that may be missing [0]")
    opts.add_argument("--keep-old", help="blue-green: keep the old set running warm this long, e.g. 5m")
    opts.add_argument("--verify", help="bigbang/bluegreen/rolling: watch the new version this long after "
                      "the switch, rolling back on an error-rate or health breach, e.g. 2s; 0 disables [2s]")
    opts.add_argument("--preview", action="store_true",
                      help="blue-green: route the new set only for the pool override until `turnout "
                      "promote` (prints the X-Turnout-Pool header that reaches it)")
    deploy.add_argument("--detach", action="store_true", help="return once the deploy started")
    deploy.add_argument("--json", action="store_true", help="print events as JSON lines")

    status = sub.add_parser("status", help="what serves each service, and any deploy in progress")
    status.add_argument("service", nargs="?")
    status.add_argument("--json", action="store_true")

    history = sub.add_parser("history", help="past deployments of a service, newest first")
    history.add_argument("service")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--steps", action="store_true", help="include every recorded step")
    history.add_argument("--json", action="store_true")

    rollback = sub.add_parser("rollback", help="put the previous version back (or --to VERSION)")
    rollback.add_argument("service")
    rollback.add_argument("--to", dest="to_version")
    rollback.add_argument("--detach", action="store_true")
    rollback.add_argument("--json", action="store_true")

    rehearse = sub.add_parser(
        "rehearse", help="run a deploy under live load and report what every client saw",
        description="Deploy IMAGE to SERVICE while a built-in load generator sends traffic through the "
        "proxy; report failed, truncated and misrouted requests, latency before/during/after, the window "
        "in which both versions answered, and a timeline (terminal table, --json, --html). "
        "Exits 0 only when every deploy succeeded with no request failed by the proxy.")
    rehearse.add_argument("service")
    rehearse.add_argument("--image", required=True, help="the new version (a local image)")
    which = rehearse.add_mutually_exclusive_group()
    which.add_argument("--strategy", choices=STRATEGIES)
    which.add_argument("--all-strategies", action="store_true",
                       help="run the four strategies one after another (alternating images) and compare")
    load = rehearse.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="requests per second (open loop)")
    load.add_argument("--concurrency", type=int, help="clients each sending back to back [default 8]")
    rehearse.add_argument("--duration", default="20s", help="minimum load duration per deploy [20s]")
    rehearse.add_argument("--new-connections", type=float, default=0.1,
                          help="fraction of requests on a fresh connection [0.1]")
    rehearse.add_argument("--max-in-flight", type=_in_flight_bound, default=None, metavar="N",
                          help="with --rate: at most N requests in flight; a start beyond it is skipped "
                          "and reported as 'not sent'. Requests held by the proxy (a big-bang gap, a "
                          "pause) count, so a hold of H s at R req/s needs about R*H more. Each is a "
                          "connection: the open-files limit is raised to fit "
                          f"[{_rehearse_default_in_flight()}]")
    rehearse.add_argument("--url", help="where to send the load [default: the daemon's proxy listener]")
    rehearse.add_argument("--html", type=Path, default=Path("turnout-rehearsal.html"),
                          help="HTML report with the timeline chart [turnout-rehearsal.html]")
    rehearse.add_argument("--steps", help="canary weights, e.g. 10,50,100")
    rehearse.add_argument("--step-pause", help="canary pause per step, e.g. 5s")
    rehearse.add_argument("--json", action="store_true", help="print the report as JSON")

    logs = sub.add_parser("logs", help="the daemon's logs: `turnout logs reopen` after logrotate moved the "
                          "access log's file", description="reopen: the daemon reopens the access log's file "
                          "([proxy] access_log = \"PATH\"), as SIGHUP does; lines written before go to the "
                          "old file. Nothing to do when the log goes to stderr.")
    logs.add_argument("action", choices=["reopen"])

    for name, text in (("promote", "finish the deploy in progress at once (all traffic to the new version)"),
                       ("abort", "stop the deploy in progress and roll back at once")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("service")
    for name, text in (("pause", "pause the deploy in progress (or, with --traffic, hold requests)"),
                       ("resume", "resume the paused deploy (or, with --traffic, release requests)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("service")
        cmd.add_argument("--traffic", action="store_true",
                         help="act on the service's traffic in the proxy instead of the deploy")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's flush at exit
    except BrokenPipeError:
        _discard_stdout()
        return 141


def _discard_stdout() -> None:
    """The reader of stdout is gone: send what is still buffered nowhere, so that exiting is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file (captured, replaced)
        pass


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.state_dir is None and os.environ.get("TURNOUT_STATE_DIR"):
        args.state_dir = Path(os.environ["TURNOUT_STATE_DIR"])
    socket = args.socket or (args.state_dir or Path(".turnout")) / "admin.sock"
    try:
        if args.command == "serve":
            return _serve(args)
        return asyncio.run(_command(args, socket))
    except KeyboardInterrupt:
        return 130
    except TurnoutError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        from .admin_client import ApiFailed, DaemonUnreachable
        from .config.model import ConfigError

        if isinstance(exc, ApiFailed):  # the daemon said no: a 4xx is the request's fault
            return 2 if exc.status < 500 else 1
        return 2 if isinstance(exc, UsageError | ConfigError | DaemonUnreachable) else 1


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from proxy.config import ProxyConfig
    from proxy.log import configure

    from .config.reader import load_config
    from .daemon import Daemon

    configure(args.log_level)
    config = load_config(args.config)
    if args.listen:
        config = replace(config, proxy=replace(config.proxy, listen=args.listen))
    if args.state_dir is not None:
        # The admin socket follows the state dir unless the config placed it elsewhere on purpose.
        socket = config.proxy.admin_socket
        if socket in (str(config.state_dir / "admin.sock"), ProxyConfig().admin_socket):
            socket = str(args.state_dir / "admin.sock")
        if len(os.fsencode(os.path.abspath(socket))) > 107:
            raise UsageError(f"--state-dir: the admin socket {socket} would be longer than the 107 bytes "
                             "a unix socket path may have; choose a shorter directory")
        config = replace(config, state_dir=args.state_dir,
                         proxy=replace(config.proxy, admin_socket=socket))
    daemon = Daemon(config, extra_labels=_labels_from_env(), prune_strays=args.prune_strays)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(daemon.serve_forever())
    else:
        asyncio.run(daemon.serve_forever())
    return 0


def _labels_from_env() -> dict[str, str]:
    """TURNOUT_CONTAINER_LABELS="k=v,k2=v2": extra labels on every container (test runs use it)."""
    raw = os.environ.get("TURNOUT_CONTAINER_LABELS", "")
    pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
    if any(len(p) != 2 or not p[0] for p in pairs):
        raise UsageError(f"TURNOUT_CONTAINER_LABELS: expected k=v,k2=v2, got {raw!r}")
    return {k.strip(): v.strip() for k, v in pairs}


async def _command(args: argparse.Namespace, socket: Path) -> int:
    from .admin_client import AdminClient

    async with AdminClient(socket) as client:
        handler = COMMANDS[args.command]
        return await handler(client, args)


async def _deploy(client: Any, args: argparse.Namespace) -> int:
    flags = {k: getattr(args, k) for k in ("port", "replicas", "health_path", "host")
             if getattr(args, k) is not None}
    options = {k: getattr(args, k) for k in ("steps", "step_pause", "preset", "max_error_rate",
                                             "max_surge", "max_unavailable", "keep_old", "verify")
               if getattr(args, k) is not None}
    if args.preview:
        options["preview"] = True
    body = {"service": args.service, "image": args.image, "strategy": args.strategy,
            "version": args.version, "flags": flags, "options": options}
    if args.detach:
        started = await client.request("POST", "/v1/deploy", body)
        print(json.dumps(started) if args.json else f"deploy {started['id']} of {args.service} started; "
              f"follow it with `turnout status {args.service}`")
        return 0
    return await _follow(client.stream("POST", "/v1/deploy", body, follow="1"), args.json)


async def _rollback(client: Any, args: argparse.Namespace) -> int:
    body = {"to_version": args.to_version} if args.to_version else {}
    path = f"/v1/deployments/{args.service}/rollback"
    if args.detach:
        print(json.dumps(await client.request("POST", path, body)))
        return 0
    return await _follow(client.stream("POST", path, body, follow="1"), args.json)


async def _follow(events: Any, as_json: bool) -> int:
    status = "unknown"
    started = time.monotonic()
    async for event in events:
        if as_json:
            print(json.dumps(event), flush=True)
        else:
            print(f"[{time.monotonic() - started:6.1f}s] {describe_event(event)}", flush=True)
        if event.get("event") == "finished":
            status = event.get("status", "unknown")
    return 0 if status == "succeeded" else 1


async def _status(client: Any, args: argparse.Namespace) -> int:
    path = f"/v1/status/{args.service}" if args.service else "/v1/status"
    data = await client.request("GET", path)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"owner: {data['owner']} (label turnout.owner on every container this daemon starts)")
    if not data["services"]:
        print("no services yet; deploy one with `turnout deploy SERVICE --image IMAGE --port PORT`")
    for name, info in data["services"].items():
        stable = info["stable"]
        print(f"{name}: {stable['version'] + ' (' + stable['image'] + ')' if stable else 'not deployed'}")
        for pool, p in info["pools"].items():
            print(f"  pool {pool:<16} weight {p['weight']:>3}  {', '.join(p['upstreams']) or '-'}")
        if info["deployment"]:
            d = info["deployment"]
            paused = " PAUSED" if d["paused"] else ""
            print(f"  deploying {d['version']} with {d['strategy']} ({d['id']}){paused}")
        if info["previous"]:
            print(f"  previous: {info['previous']['version']} (rollback target)")
    return 0


async def _history(client: Any, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.steps:
        params["steps"] = "1"
    data = await client.request("GET", f"/v1/history/{args.service}", **params)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for d in data["deployments"]:
        print(f"{d['id']}  {d['strategy']:<9} {d.get('from_version') or '-':>8} -> {d['to_version']:<8} "
              f"{d['status']:<11} {d.get('message') or ''}")
        for step in d.get("steps", []):
            print(f"    {step.get('name')}: {json.dumps(step.get('detail'))}")
    if not data["deployments"]:
        print(f"no deployments of {args.service} yet")
    return 0


async def _logs(client: Any, args: argparse.Namespace) -> int:
    data = await client.request("POST", "/v1/logs/reopen")
    print(f"access log reopened: {data['reopened']}" if data["reopened"]
          else "the access log goes to stderr (or is off): no file to reopen")
    return 0


def _signal(command: str) -> Any:
    async def send(client: Any, args: argparse.Namespace) -> int:
        if getattr(args, "traffic", False):
            proxy_command = {"pause": "pause", "resume": "resume"}[command]
            await client.request("POST", f"/v1/services/{args.service}/{proxy_command}")
            print(f"traffic of {args.service}: {'held' if command == 'pause' else 'flowing'}")
            return 0
        data = await client.request("POST", f"/v1/deployments/{args.service}/{command}")
        print(f"{command}: deploy {data['id']} of {args.service} ({data['version']})")
        return 0
    return send


def _in_flight_bound(raw: str) -> int:
    """argparse type of --max-in-flight: an integer within the load generator's bounds."""
    from .rehearsal.loadgen import MAX_IN_FLIGHT_LIMIT

    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if not 1 <= value <= MAX_IN_FLIGHT_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_IN_FLIGHT_LIMIT}, got {value}")
    return value


def _rehearse_default_in_flight() -> int:
    from .rehearsal.rehearse import DEFAULT_MAX_IN_FLIGHT

    return DEFAULT_MAX_IN_FLIGHT


def rehearsal_plan(args: argparse.Namespace) -> Any:
    """The RehearsalPlan the `rehearse` arguments ask for; UsageError names a bad option."""
    from .config.duration import parse_duration
    from .rehearsal.loadgen import OPEN_FILES_MARGIN, ensure_open_files
    from .rehearsal.rehearse import DEFAULT_MAX_IN_FLIGHT, RehearsalPlan

    if not 0.0 <= args.new_connections <= 1.0:
        raise UsageError("--new-connections: must be between 0 and 1")
    if args.max_in_flight is not None and args.rate is None:
        raise UsageError("--max-in-flight: bounds the open loop; it needs --rate (with --concurrency "
                         "the number of clients is the bound)")
    max_in_flight = args.max_in_flight or DEFAULT_MAX_IN_FLIGHT
    if args.rate is not None:
        limit = ensure_open_files(max_in_flight)
        if limit < max_in_flight + OPEN_FILES_MARGIN:
            if args.max_in_flight is not None:  # asked for: say why it cannot be had
                needed = max_in_flight + OPEN_FILES_MARGIN
                raise UsageError(f"--max-in-flight {max_in_flight}: needs {needed} open files, and this "
                                 f"process may open only {limit} (ulimit -n)")
            # The default: as much of it as the limit allows (the report says which bound was used).
            max_in_flight = max(1, limit - OPEN_FILES_MARGIN)
    strategies = STRATEGIES if args.all_strategies else (args.strategy,)
    options = {k: getattr(args, k) for k in ("steps", "step_pause") if getattr(args, k) is not None}
    return RehearsalPlan(
        service=args.service, image=args.image, strategies=tuple(strategies),
        duration=parse_duration(args.duration, "--duration"), rate=args.rate,
        concurrency=args.concurrency or (None if args.rate else 8),
        new_connections=args.new_connections, url=args.url, options=options, max_in_flight=max_in_flight)


async def _rehearse(client: Any, args: argparse.Namespace) -> int:
    from .rehearsal.rehearse import all_succeeded, rehearse, render

    plan = rehearsal_plan(args)
    progress = (lambda _line: None) if args.json else (lambda line: print(line, flush=True))
    runs = await rehearse(client, plan, progress)
    text, html = render(runs, args.html, args.json)
    print(text)
    if html is not None and not args.json:
        print(f"\nHTML report with the timeline chart: {html.resolve()}")
    return 0 if all_succeeded(runs) else 1


COMMANDS = {
    "rehearse": _rehearse,
    "deploy": _deploy,
    "status": _status,
    "history": _history,
    "rollback": _rollback,
    "promote": _signal("promote"),
    "abort": _signal("abort"),
    "pause": _signal("pause"),
    "resume": _signal("resume"),
    "logs": _logs,
}


if __name__ == "__main__":
    sys.exit(main())
