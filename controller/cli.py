"""`turnout`: the command line. It only parses arguments, builds requests and prints answers; the work
happens in the daemon (`turnout serve`), so a deploy survives the CLI exiting.

Exit codes: 0 success; 1 the operation failed (a deploy failed or was rolled back: the old version
still serves); 2 bad usage or the daemon could not be reached; 3 the deploy froze (past a schema floor,
or cut inside a hook: it waits for `promote` or `abort --force`); 141 (128 + SIGPIPE) when stdout was
closed (`turnout deploy ... | head -1`): the CLI stops quietly, a deploy goes on in the daemon.
`turnout apply --dry-run`: 0 no change, 1 changes, 2 any error.
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

from .config.model import SHIFTING, STRATEGIES
from .errors import TurnoutError, UsageError
from .events import describe_event, describe_hook

EXAMPLES = """\
examples:
  turnout serve                                   # proxy on 127.0.0.1:8000, state in .turnout/
  turnout deploy web --image myapp:v1 --port 8080 --replicas 2
  turnout deploy web --image myapp:v2 --strategy canary --steps 5,25,50,100 --step-pause 30s
  turnout deploy web --image myapp:v2 --strategy ab --match 'header:X-Canary=always' --duration 10m
  turnout status web
  turnout status --watch                          # live: weights, split, health, deploy progress
  turnout dashboard                               # the address of the same picture in a browser
  turnout rollback web
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout", description="Zero-downtime deploys (big-bang, blue-green, rolling, canary, A/B) "
        "on a single Docker host.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="daemon state (journal, admin socket) [default: .turnout or $TURNOUT_STATE_DIR]")
    parser.add_argument("--socket", type=Path, default=None,
                        help="admin socket of the daemon [default: STATE_DIR/admin.sock]")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the proxy and the controller (the daemon), or a proxy following one",
        description="Run the daemon: the proxy and the controller in one process (--role all, the "
        "default). With --role proxy: only the data plane, on another node, with its routing table "
        "pulled from the controller's routing listener ([proxy] routing_listen and routing_token in "
        "the controller's turnout.toml); it probes its upstreams' health itself and reports its "
        "requests in flight and counters with every pull. `turnout nodes` on the controller lists the "
        "proxies following it.",
        epilog="example: turnout serve --role proxy --listen 0.0.0.0:8000 "
        "--controller http://10.0.0.1:8002 --token-file /etc/turnout/routing.token",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--role", choices=("all", "proxy"), default="all",
                       help="all: proxy and controller (default); proxy: the data plane alone, following "
                       "--controller")
    serve.add_argument("--config", type=Path, help="turnout.toml (without it: embedded defaults; with "
                       "--role proxy only its [proxy] section is read)")
    serve.add_argument("--listen", help="proxy listen address, e.g. 127.0.0.1:8000")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    serve.add_argument("--dashboard", metavar="HOST:PORT",
                       help="serve the dashboard here (the [dashboard] section's listen), "
                       "e.g. 127.0.0.1:8081")
    serve.add_argument("--prune-strays", action="store_true",
                       help="remove containers that carry this daemon's owner label but that its journal "
                       "never recorded (made by hand, or left by a lost journal); without it they are "
                       "left alone and reported")
    serve.add_argument("--takeover", action="store_true",
                       help="replace the turnout serve running with this state dir without closing a "
                       "connection: take its listening sockets over its admin socket, rebuild routing from "
                       "the journal, start accepting, then let the old one finish its requests and exit "
                       "(same config and options; refused while a deploy runs)")
    serve.add_argument("--watch", action="store_true",
                       help="apply the --config file again whenever it changes (and once at start), as "
                       "`turnout apply --wait` would, never pruning")
    node = serve.add_argument_group("--role proxy")
    node.add_argument("--controller", metavar="URL",
                      help="the controller's routing listener, e.g. http://10.0.0.1:8002")
    node.add_argument("--token", help="the controller's routing_token (visible in `ps`: prefer --token-file)")
    node.add_argument("--token-file", type=Path, help="a file (mode 0600) holding the routing_token")
    node.add_argument("--id", dest="proxy_id",
                      help="this proxy's name in `turnout nodes` [default: the host name]")
    node.add_argument("--advertise", metavar="HOST:PORT",
                      help="the address clients reach this proxy at, as shown in `turnout nodes` "
                      "[default: the listen address]")

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
    new.add_argument("--replicas", type=int, help="containers to run (an existing service is scaled to it)")
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
    opts.add_argument("--match", help="ab: the requests that reach the new version, e.g. "
                      "header:X-Canary=always, cookie:beta=prefix:y, query:ab=1 or hash:cookie:account_id=10")
    opts.add_argument("--duration", help="ab: how long matching requests are judged before the end, e.g. "
                      "10m [10m]")
    opts.add_argument("--then", choices=("promote", "canary"),
                      help="ab: what follows a passed A/B phase: promote the new version, or hand it on to "
                      "the canary's weight steps [promote]")
    opts.add_argument("--preview", action="store_true",
                      help="blue-green: route the new set only for the pool override until `turnout "
                      "promote` (prints the X-Turnout-Pool header that reaches it)")
    deploy.add_argument("--detach", action="store_true", help="return once the deploy started")
    deploy.add_argument("--json", action="store_true", help="print events as JSON lines")

    apply = sub.add_parser(
        "apply", help="make the services run as a file describes (each changed one deployed)",
        description="Plan the services of FILE against what runs (one action per service: = unchanged, "
        "~ routing, scale or release, + new, - pruned) and carry the plan out through the daemon. "
        "Exits 0 when every change succeeded, 1 when one failed, 2 for bad input or a refusal, 3 when a "
        "deploy froze; with --dry-run 0 for no change, 1 for changes, 2 for an error.")
    apply.add_argument("-f", "--file", type=Path, default=Path("turnout.toml"),
                       help="the file to apply [turnout.toml]")
    apply.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    apply.add_argument("--prune", action="store_true",
                       help="remove services apply created that the file no longer has (drained first)")
    apply.add_argument("--allow-empty", action="store_true", help="accept a file with no services")
    when = apply.add_mutually_exclusive_group()
    when.add_argument("--wait", action="store_true",
                      help="wait for deploys in progress instead of refusing")
    when.add_argument("--detach", action="store_true", help="return once the changes started")
    apply.add_argument("--json", action="store_true", help="the plan and events as JSON")

    status = sub.add_parser("status", help="what serves each service, and any deploy in progress")
    status.add_argument("service", nargs="?")
    status.add_argument("--json", action="store_true")
    status.add_argument("--proxies", action="store_true",
                        help="also list the remote proxies following this controller (as `turnout nodes`)")
    status.add_argument("--watch", action="store_true",
                        help="the live picture (the dashboard's, in the terminal), refreshed in place "
                        "until Ctrl-C")

    nodes = sub.add_parser("nodes", help="the proxies following this controller: id, address, last seen, "
                           "acknowledged generation, requests in flight")
    nodes.add_argument("--json", action="store_true")

    dashboard = sub.add_parser("dashboard", help="print the address of the live dashboard (a browser page)")
    dashboard.add_argument("--with-token", action="store_true",
                           help="print the address with ?token=... (opening it once logs the browser in)")

    certs = sub.add_parser("certs", help="the HTTPS certificates: hosts, issuer, expiry, source, errors",
                           description="List the certificates the HTTPS listener serves ([proxy.tls]), "
                           "and every file or ACME host that could not be loaded or issued; `turnout certs "
                           "reload` re-reads the certificate directories now (as SIGHUP does).")
    certs.add_argument("action", nargs="?", choices=("list", "reload"), default="list")
    certs.add_argument("--json", action="store_true")

    history = sub.add_parser("history", help="past deployments of a service, newest first")
    history.add_argument("service")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--steps", action="store_true", help="include every recorded step")
    history.add_argument("--json", action="store_true")

    rollback = sub.add_parser("rollback", help="put the previous version back (or --to VERSION)")
    rollback.add_argument("service")
    rollback.add_argument("--to", dest="to_version")
    rollback.add_argument("--force-past-migration", action="store_true",
                          help="roll back even to a version older than the schema floor a contract hook "
                          "set (it may not read the schema any more)")
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
    which.add_argument("--strategy", choices=SHIFTING)
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
    rehearse.add_argument("--url", help="where to send the load, http:// or https:// [default: the daemon's "
                          "proxy listener]")
    rehearse.add_argument("--cacert", type=Path, metavar="FILE",
                          help="with an https:// --url: PEM file of CAs to trust [the system's]")
    rehearse.add_argument("--connect-to", metavar="ADDR",
                          help="send to ADDR (host:port) instead of the --url's host, which still goes in "
                          "SNI and the Host header (as curl --connect-to)")
    rehearse.add_argument("--html", type=Path, default=Path("turnout-rehearsal.html"),
                          help="HTML report with the timeline chart [turnout-rehearsal.html]")
    rehearse.add_argument("--steps", help="canary weights, e.g. 10,50,100")
    rehearse.add_argument("--step-pause", help="canary pause per step, e.g. 5s")
    rehearse.add_argument("--json", action="store_true", help="print the report as JSON")

    reload = sub.add_parser(
        "reload", help="read the daemon's config file again and apply what can change without a restart",
        description="The daemon reads its --config file again (as on SIGHUP) and applies, without "
        "a restart: the proxy's timeouts, limits and retries, the access log (file, format, sampling), "
        "each service's routing settings (host, path, health, timeouts, rules, ...), static upstreams, "
        "new services; and it re-reads the HTTPS certificates. A file with an error changes nothing and "
        "the error names the key and the file. What needs a restart (listen addresses, the admin API, "
        "the state dir, [proxy.tls] settings, [dashboard]) and what is a deploy (a service's image, "
        "replicas or container definition: `turnout apply`) are listed, not applied. "
        "Exits 0 when applied, 1 when a change failed, 2 when the reload was refused.")
    reload.add_argument("--json", action="store_true", help="the result as JSON")

    logs = sub.add_parser("logs", help="the daemon's logs: `turnout logs reopen` after logrotate moved the "
                          "access log's file", description="reopen: the daemon reopens the access log's file "
                          "([proxy] access_log = \"PATH\"), as SIGHUP does; lines written before go to the "
                          "old file. Nothing to do when the log goes to stderr.")
    logs.add_argument("action", choices=["reopen"])

    rules = sub.add_parser(
        "rules", help="a service's routing rules: list, set (replace all) or clear",
        description="Routing rules send matching requests to a pool (canary, stable or a version), tried "
        "in order after the X-Turnout-Pool override and before the sticky cookie and the weights; a rule "
        "whose pool is not routable falls through. Changes apply at once and are kept in the journal.")
    actions = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the rules in order, where each sends now, and its matches")
    listing.add_argument("service")
    listing.add_argument("--json", action="store_true")
    setting = actions.add_parser(
        "set", help="replace the service's rules with these, in this order",
        description="Replace SERVICE's rules. MATCH is header:NAME=VALUE, cookie:NAME=VALUE, "
        "query:NAME=VALUE (VALUE exact, prefix:..., regex:... matching whole) or hash:cookie:NAME=PERCENT "
        "(stable buckets of that cookie's value; hash:header:NAME=PERCENT for a header). TO is canary, "
        "stable or a version. Example: turnout rules set web --rule insiders header:X-Canary=always canary "
        "--rule beta hash:cookie:account_id=10 canary")
    setting.add_argument("service")
    given = setting.add_mutually_exclusive_group(required=True)
    given.add_argument("--rule", nargs=3, action="append", metavar=("NAME", "MATCH", "TO"),
                       help="one rule (repeat for more; the order is the order of matching)")
    given.add_argument("--file", type=Path,
                       help="a TOML file of [[rules]] tables (name, match, to), as in turnout.toml")
    clearing = actions.add_parser("clear", help="remove every rule of the service")
    clearing.add_argument("service")

    mirror = sub.add_parser(
        "mirror", help="shadow traffic: the report of differences between mirrored answers",
        description="A service with [services.NAME.mirror] copies sampled requests to another pool (the "
        "canary by default) and compares the answers with the clients'. The report groups differences per "
        "endpoint template (GET /items/{id}) with the differing fields; fields that also differ between two "
        "upstreams of the stable pool are learned as noise and left out.")
    reports = mirror.add_subparsers(dest="mirror_command", required=True, metavar="ACTION")
    report = reports.add_parser("report", help="what was copied, and the differences per endpoint")
    report.add_argument("service")
    report.add_argument("--json", action="store_true")

    for name, text in (("promote", "finish the deploy in progress at once (all traffic to the new version); "
                        "a frozen deploy keeps what serves"),
                       ("abort", "stop the deploy in progress and roll back at once")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("service")
        if name == "abort":
            cmd.add_argument("--force", action="store_true",
                             help="also a frozen deploy: roll back past its schema floor")
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
            return _serve_proxy(args) if args.role == "proxy" else _serve(args)
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

    _refuse_flags(args, NODE_ONLY, "only with --role proxy")

    from proxy import socket_activation
    from proxy.log import configure

    from .config.model import Config
    from .config.reader import load_config
    from .daemon import Daemon

    configure(args.log_level)
    try:  # systemd's sockets (a .socket unit, systemd-socket-activate): taken first, the variables unset
        sockets = socket_activation.from_environment()
    except socket_activation.SocketActivationError as exc:
        raise UsageError(f"socket activation: {exc}") from None

    def read_config() -> Config:
        """The config file with this command's flags and systemd's sockets (`turnout reload` again)."""
        config = _with_serve_flags(load_config(args.config), args)
        try:
            return replace(config, proxy=socket_activation.listening_config(config.proxy, sockets))
        except socket_activation.SocketActivationError as exc:
            raise UsageError(f"socket activation: {exc}") from None

    config = read_config()
    if args.watch and args.config is None:
        raise UsageError("--watch: needs --config (the file to watch)")
    daemon = Daemon(config, extra_labels=_labels_from_env(), prune_strays=args.prune_strays,
                    watch=args.watch, takeover=args.takeover, sockets=sockets, read_config=read_config)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(daemon.serve_forever())
    else:
        asyncio.run(daemon.serve_forever())
    return 0


def _with_serve_flags(config: Any, args: argparse.Namespace) -> Any:
    """`turnout serve`'s --listen, --dashboard and --state-dir over the file's values."""
    from dataclasses import replace

    from proxy.config import ProxyConfig

    if args.listen:
        config = replace(config, proxy=replace(config.proxy, listen=_listen_flag(args.listen)))
    if args.dashboard:
        config = replace(config, dashboard=_dashboard_flag(args.dashboard, config))
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
    return config


NODE_ONLY = ("controller", "token", "token_file", "proxy_id", "advertise")
ALL_ONLY = ("dashboard", "prune_strays", "watch", "takeover")


def _refuse_flags(args: argparse.Namespace, names: tuple[str, ...], why: str) -> None:
    """A UsageError naming the first flag of `names` (argparse dests) given, and `why` it is refused."""
    for name in names:
        if getattr(args, name):
            flag = "--id" if name == "proxy_id" else f"--{name.replace('_', '-')}"
            raise UsageError(f"{flag}: {why}")


def _serve_proxy(args: argparse.Namespace) -> int:
    """`serve --role proxy`: the flags checked here, each error naming its flag; then proxy/node.py."""
    from dataclasses import replace

    from proxy.config import check_token
    from proxy.errors import ValidationError
    from proxy.log import configure
    from proxy.node import FollowerRefused, ProxyNode
    from proxy.specs import parse_address

    from .config.reader import load_config

    _refuse_flags(args, ALL_ONLY, "not with --role proxy (it runs the data plane only)")
    if not args.controller:
        raise UsageError("--controller: required with --role proxy (the controller's routing listener, "
                         "e.g. http://10.0.0.1:8002)")
    if not args.controller.startswith(("http://", "https://")) or "/" in args.controller.split("://", 1)[1]:
        raise UsageError(f"--controller: expected http://HOST:PORT, got {args.controller!r}")
    token = args.token
    if args.token_file is not None:
        if token is not None:
            raise UsageError("--token-file: cannot be combined with --token (choose one)")
        token = _read_token_file(args.token_file)
    if not token:
        raise UsageError("--token: required with --role proxy (the controller's [proxy] routing_token), "
                         "or --token-file")
    try:
        check_token("--token", token)
        if args.advertise:
            parse_address("--advertise", args.advertise)
    except ValidationError as exc:
        raise UsageError(f"{exc.field}: {exc.message}") from None
    configure(args.log_level)
    config = load_config(args.config).proxy
    if args.listen:
        config = replace(config, listen=args.listen)
    node = ProxyNode(config, args.controller, token, args.proxy_id, args.advertise)
    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(node.serve_forever())
        else:
            asyncio.run(node.serve_forever())
    except FollowerRefused as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    return 0


def _read_token_file(path: Path) -> str:
    import stat

    try:
        info = path.stat()
        token = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"--token-file: cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise UsageError(f"--token-file: {path} is open to other users (mode {mode:04o}): chmod 600 it")
    if not token:
        raise UsageError(f"--token-file: {path} is empty")
    return token


def _listen_flag(listen: str) -> str:
    """`serve --listen HOST:PORT`, checked as turnout.toml's `proxy.listen` is."""
    from proxy.errors import ValidationError
    from proxy.specs import parse_address

    from .config.model import CLI_SOURCE, ConfigError

    try:
        parse_address("--listen", listen)
    except ValidationError as exc:
        raise ConfigError("--listen", exc.message, CLI_SOURCE) from None
    return listen


def _dashboard_flag(listen: str, config: Any) -> Any:
    """`serve --dashboard HOST:PORT`: the [dashboard] section with this listen address (its token and
    allow_actions kept), checked by the section's own reader."""
    from .config.model import CLI_SOURCE
    from .config.reader import read_dashboard
    from .config.table import Table

    data: dict[str, Any] = {"listen": listen}
    if config.dashboard is not None:
        data.update(token=config.dashboard.token or "", allow_actions=config.dashboard.allow_actions)
    origins = {"listen": ("--dashboard", CLI_SOURCE)}
    return read_dashboard(Table(data, "dashboard", CLI_SOURCE, origins=origins))


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
                                             "max_surge", "max_unavailable", "keep_old", "verify", "match",
                                             "duration", "then")
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


async def _apply(client: Any, args: argparse.Namespace) -> int:
    """`turnout apply`; with --dry-run every error exits 2 (the `kubectl diff` convention)."""
    try:
        return await _apply_file(client, args)
    except TurnoutError as exc:
        if not args.dry_run:
            raise
        print(f"turnout: {exc}", file=sys.stderr)
        return 2


async def _apply_file(client: Any, args: argparse.Namespace) -> int:
    from .config.reader import load_config
    from .config.service_state import service_to_dict

    config = load_config(args.file)  # read here: relative paths and Compose files resolve beside it
    body = {"services": {name: service_to_dict(s) for name, s in config.services.items()},
            "source": str(args.file), "dry_run": args.dry_run, "prune": args.prune,
            "allow_empty": args.allow_empty, "wait": args.wait}
    if args.dry_run or args.detach:
        answer = await client.request("POST", "/v1/apply", body)
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            for line in _plan_lines(answer):
                print(line)
            if args.detach and answer["changed"]:
                print("started; follow with `turnout status`")
        return (1 if answer["changed"] else 0) if args.dry_run else 0
    succeeded = frozen = False
    started = time.monotonic()
    async for event in client.stream("POST", "/v1/apply", body, follow="1"):
        if args.json:
            print(json.dumps(event), flush=True)
        elif event.get("event") == "plan":
            for line in _plan_lines(event):
                print(line, flush=True)
        elif event.get("event") == "service":
            print(f"[{time.monotonic() - started:6.1f}s] {event['service']}: "
                  f"{describe_event(_inner_event(event))}", flush=True)
        elif event.get("event") == "applied":
            succeeded = event["succeeded"]
            frozen = any(r["status"] == "frozen" for r in event["results"])
            for result in event["results"]:
                if result["action"] != "=":
                    print(f"{result['line']}: {result['status']}"
                          + (f" — {result['message']}" if result["message"] else ""), flush=True)
    return 0 if succeeded else FROZEN if frozen else 1


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    lines = [a["line"] for a in plan["actions"]]
    return lines + ([] if plan["changed"] else ["no changes"])


def _inner_event(event: dict[str, Any]) -> dict[str, Any]:
    """A change's own event, out of apply's relay (which tags it with the service)."""
    inner = event.get("of")
    return inner if isinstance(inner, dict) else {}


async def _rollback(client: Any, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"to_version": args.to_version} if args.to_version else {}
    if args.force_past_migration:
        body["force_past_migration"] = True
    path = f"/v1/deployments/{args.service}/rollback"
    if args.detach:
        print(json.dumps(await client.request("POST", path, body)))
        return 0
    return await _follow(client.stream("POST", path, body, follow="1"), args.json)


async def _follow(events: Any, as_json: bool) -> int:
    """Print a deploy's events until it ends: 0 succeeded, 1 failed or rolled back, 3 frozen (it waits in
    the daemon for `promote` or `abort --force`)."""
    status = "unknown"
    started = time.monotonic()
    async for event in events:
        if as_json:
            print(json.dumps(event), flush=True)
        else:
            print(f"[{time.monotonic() - started:6.1f}s] {describe_event(event)}", flush=True)
        if event.get("event") == "finished":
            status = event.get("status", "unknown")
        elif event.get("step") == "frozen":
            return FROZEN
    return 0 if status == "succeeded" else 1


FROZEN = 3  # exit code: the deploy froze (past a schema floor, or cut inside a hook)


async def _status(client: Any, args: argparse.Namespace) -> int:
    if args.watch:
        if args.json or args.service:
            raise UsageError("--watch: shows every service live; it takes no SERVICE and no --json")
        from .dashboard.terminal import watch

        return await watch(client)
    path = f"/v1/status/{args.service}" if args.service else "/v1/status"
    data = await client.request("GET", path)
    if args.json:
        if args.proxies:
            data["proxies"] = (await client.request("GET", "/v1/proxies"))["proxies"]
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
            if d["status"] == "frozen":
                print(f"  FROZEN: {d['message']}")
        if info["previous"]:
            print(f"  previous: {info['previous']['version']} (rollback target)")
    if args.proxies:
        print_nodes(await client.request("GET", "/v1/proxies"))
    proxy = data.get("proxy", {})
    if proxy.get("tls_listen"):
        print(f"https: {proxy['tls_listen']}")
    for warning in proxy.get("tls_warnings", []):
        print(f"warning: {warning}")
    return 0


async def _nodes(client: Any, args: argparse.Namespace) -> int:
    data = await client.request("GET", "/v1/proxies")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print_nodes(data)
    return 0


def print_nodes(data: dict[str, Any]) -> None:
    """The remote proxies as `turnout nodes` and `status --proxies` show them."""
    if data.get("routing_listen") is None:
        print("proxies: none (this daemon has no routing listener: set [proxy] routing_listen and "
              "routing_token, then start `turnout serve --role proxy` on each node)")
        return
    proxies = data["proxies"]
    print(f"proxies following {data['routing_listen']}: {len(proxies)}")
    if proxies:
        print(f"  {'ID':<20} {'ADDRESS':<22} {'LAST SEEN':>9} {'ACKED GEN':>9} {'IN FLIGHT':>9}")
    for p in proxies:
        seen = "polling" if p["connected"] else f"{p['last_seen_seconds']:.1f}s ago"
        print(f"  {p['id']:<20} {p['address'] or '-':<22} {seen:>9} {p['acked_generation']:>9} "
              f"{p['in_flight']:>9}")


async def _dashboard(client: Any, args: argparse.Namespace) -> int:
    info = await client.request("GET", "/v1/dashboard")
    if not info["enabled"]:
        print("turnout: the dashboard is off: add a [dashboard] section to turnout.toml "
              '(listen = "127.0.0.1:8081"), or start `turnout serve --dashboard 127.0.0.1:8081`',
              file=sys.stderr)
        return 1
    if info["token"] and args.with_token:
        print(f"{info['url']}?token={info['token']}")
    else:
        print(info["url"])
        if info["token"]:
            print("it asks for its token once: open it with ?token=<dashboard.token> "
                  "(`turnout dashboard --with-token` prints that address)", file=sys.stderr)
    return 0


async def _certs(client: Any, args: argparse.Namespace) -> int:
    if args.action == "reload":
        data = await client.request("POST", "/v1/certs/reload")
    else:
        data = await client.request("GET", "/v1/certs")
    if args.json:
        print(json.dumps(data, indent=2))
        return 1 if data["errors"] else 0
    reloaded = "" if "changed" not in data else f"; reloaded, {'changed' if data['changed'] else 'no change'}"
    print(f"https: {data['listen']} (no SNI or an unknown name: {data['default']}){reloaded}")
    for cert in data["certificates"]:
        print(f"  {cert['name']:<20} {cert['source']:<6} {', '.join(cert['hosts'])}")
        print(f"  {'':<20} issuer {cert['issuer']}, until {cert['not_after']} ({cert['days_left']} days)")
    if not data["certificates"]:
        print("  no certificate loaded")
    for error in data["errors"]:
        print(f"error: {error['file'] + ': ' if error['file'] else ''}{error['error']}")
    for host in data.get("acme") or []:
        state = "valid" if host["valid"] else "not issued"
        line = f"acme: {host['host']}: {state}"
        if host.get("next_attempt"):
            line += f", next attempt {host['next_attempt']}"
        if host.get("last_error"):
            line += f"; last error: {host['last_error']}"
        print(line)
    return 1 if data["errors"] else 0


async def _history(client: Any, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.steps:
        params["steps"] = "1"
    data = await client.request("GET", f"/v1/history/{args.service}", **params)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for d in data["deployments"]:
        result = (d.get("options") or {}).get("result") or {}
        failed = f"{result['proxy_failed']:>4} failed" if "proxy_failed" in result else " " * 11
        print(f"{d['id']}  {d['strategy']:<9} {d.get('from_version') or '-':>8} -> {d['to_version']:<8} "
              f"{d['status']:<11} {failed}  {d.get('message') or ''}".rstrip())
        for note in result.get("notes") or ():
            print(f"    note: {note}")
        for step in d.get("steps", []):
            hook = describe_hook(step.get("name"), step.get("detail") or {})
            print(f"    {step.get('name')}: {hook or json.dumps(step.get('detail'))}")
    if not data["deployments"]:
        print(f"no deployments of {args.service} yet")
    return 0


async def _reload(client: Any, args: argparse.Namespace) -> int:
    data = await client.request("POST", "/v1/reload")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0 if data["succeeded"] else 1
    print(f"reloaded {data['file']}" + ("" if data["applied"] else ": nothing to change"))
    for line in data["applied"]:
        print(f"  applied: {line}")
    for line in data["needs_restart"]:
        print(f"  needs a restart: {line}")
    for line in data["not_applied"]:
        print(f"  not applied: {line}")
    for result in data["results"]:
        if result["status"] not in ("succeeded", "running"):
            print(f"  failed: services.{result['service']}: {result['message']}")
    return 0 if data["succeeded"] else 1


async def _logs(client: Any, args: argparse.Namespace) -> int:
    data = await client.request("POST", "/v1/logs/reopen")
    print(f"access log reopened: {data['reopened']}" if data["reopened"]
          else "the access log goes to stderr (or is off): no file to reopen")
    return 0


async def _rules(client: Any, args: argparse.Namespace) -> int:
    from .config.reader import match_text

    path = f"/v1/services/{args.service}/rules"
    if args.rules_command == "list":
        data = await client.request("GET", path)
    elif args.rules_command == "clear":
        data = await client.request("DELETE", path)
    else:
        rules = _rules_from_args(args)
        data = await client.request("PUT", path, {"rules": [rule.to_dict() for rule in rules]})
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        return 0
    print(f"{args.service}: {len(data['rules'])} rule(s)" + (", tried in order" if data["rules"] else ""))
    for i, rule in enumerate(data["rules"], 1):
        where = rule["pool"] or "nowhere now: falls through"
        print(f"  {i}. {rule['name']:<16} {match_text(rule['match']):<40} -> {rule['to']} ({where}), "
              f"{rule['matches']} routed")
    return 0


def _rules_from_args(args: argparse.Namespace) -> Any:
    from .config.model import ConfigError
    from .config.overrides import rules_from_flags
    from .config.reader import read_rules
    from .config.table import Table

    if args.rule:
        return rules_from_flags(args.rule)
    import tomllib

    try:
        data = tomllib.loads(args.file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("", f"cannot read rules: {exc}", args.file) from None
    table = Table(data, "", args.file)
    table.reject_unknown({"rules"})
    return read_rules(table)


async def _mirror(client: Any, args: argparse.Namespace) -> int:
    data = await client.request("GET", f"/v1/services/{args.service}/mirror")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    spec, counts = data["mirror"], data["counts"]
    target = data["target_pool"] or "no routable pool now: nothing is copied"
    print(f"{args.service}: mirror to {spec['to']} ({target}), {spec['percent']:g}% of "
          f"{', '.join(spec['methods'])}, at most {spec['max_per_second']}/s, compare "
          f"{'on' if spec['compare'] else 'off'}")
    dropped = counts["dropped_queue_full"] + counts["dropped_rate"] + counts["dropped_body"]
    print(f"  copies: {counts['sampled']} sampled, {counts['sent']} sent, {counts['compared']} compared, "
          f"{counts['failed']} failed, {dropped} dropped (queue full {counts['dropped_queue_full']}, "
          f"rate {counts['dropped_rate']}, body {counts['dropped_body']}), {counts['unanswered']} without "
          "the client's whole answer")
    if data["diff_rate"] is not None:
        print(f"  diff rate: {data['diff_rate']:.1%}")
    for entry in data["endpoints"]:
        print(f"  {entry['endpoint']}: {entry['differing']} of {entry['compared']} differ")
        for item in entry["fields"]:
            print(f"      {item['field']:<28} {item['count']:>6}x  primary {item['primary']}  "
                  f"mirror {item['mirror']}")
        if entry["noise"]:
            print(f"      noise (differs between stable upstreams too): {', '.join(entry['noise'])}")
    return 0


def _signal(command: str) -> Any:
    async def send(client: Any, args: argparse.Namespace) -> int:
        if getattr(args, "traffic", False):
            proxy_command = {"pause": "pause", "resume": "resume"}[command]
            await client.request("POST", f"/v1/services/{args.service}/{proxy_command}")
            print(f"traffic of {args.service}: {'held' if command == 'pause' else 'flowing'}")
            return 0
        params = {"force": "1"} if getattr(args, "force", False) else {}
        data = await client.request("POST", f"/v1/deployments/{args.service}/{command}", **params)
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
    if args.cacert is not None and not args.cacert.is_file():
        raise UsageError(f"--cacert: {args.cacert} is not a readable file")
    if (args.cacert is not None or args.connect_to is not None) and not (args.url or "").startswith(
            ("http://", "https://")):
        raise UsageError("--cacert and --connect-to need --url (e.g. https://app.example.com:8443/)")
    if args.connect_to is not None:
        from proxy.errors import ValidationError
        from proxy.specs import parse_address

        try:
            parse_address("--connect-to", args.connect_to)
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
    strategies = SHIFTING if args.all_strategies else (args.strategy,)
    options = {k: getattr(args, k) for k in ("steps", "step_pause") if getattr(args, k) is not None}
    return RehearsalPlan(
        service=args.service, image=args.image, strategies=tuple(strategies),
        duration=parse_duration(args.duration, "--duration"), rate=args.rate,
        concurrency=args.concurrency or (None if args.rate else 8),
        new_connections=args.new_connections, url=args.url, options=options, max_in_flight=max_in_flight,
        cacert=str(args.cacert) if args.cacert else None, connect_to=args.connect_to)


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
    "apply": _apply,
    "status": _status,
    "nodes": _nodes,
    "dashboard": _dashboard,
    "history": _history,
    "certs": _certs,
    "rollback": _rollback,
    "promote": _signal("promote"),
    "abort": _signal("abort"),
    "pause": _signal("pause"),
    "resume": _signal("resume"),
    "rules": _rules,
    "mirror": _mirror,
    "logs": _logs,
    "reload": _reload,
}


if __name__ == "__main__":
    sys.exit(main())
