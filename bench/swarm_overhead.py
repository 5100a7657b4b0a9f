"""Swarm deploy overhead: `turnout deploy --strategy rolling` of 4 replicas against the same slot steps
done by hand on the Swarm lab (scripts/swarm-lab.sh: two dockerd in two network namespaces).

Rounds interleave the two, the order alternating from round to round, each moving its service from
turnout-testapp:v1 to :v2 and back (the image the round starts from is the one it left):

turnout  `turnout deploy web --image ... --strategy rolling --json` against a `turnout serve` with
         `[engine] kind = "swarm"` on the lab's manager (its slots: one-replica services, each task's port
         published in host mode). Rolling with max_surge 1: per slot, start one new, wait until healthy,
         route, wait for the proxies, drain the old one, stop it (scale to 0, wait for its task to end),
         remove it; then the switch and the post-switch verification window (`verify`, 2 s: a deliberate
         wait, reported apart). No load is sent, so drains are empty. The split is read from the
         deploy's JSON events (deploy_overhead.split).
by hand  the same steps through the Docker SDK against the manager, one slot after the other: create a
         one-replica service of the new image with the same spec as Turnout's (labels, host-mode publish
         of 8080, restart condition none, json-file logs), poll its tasks every 20 ms until one runs
         and has its port, probe http://<node address>:<port>/healthz every 20 ms until it answers 200
         (Turnout's readiness probes every 50 ms, from the same network namespace), then remove the old
         service (`docker service rm`: it returns at once; the old task ends on its own).

Medians over the rounds; the ratio is turnout's deploy (without the verification window) / by hand.

    flock -x -o /tmp/turnout-machine.lock .venv/bin/python bench/swarm_overhead.py   # 3 rounds, ~2 min
    .venv/bin/python bench/swarm_overhead.py --rounds 5 --json

Needs the lab up (`scripts/swarm-lab.sh up`, as root). Every service carries turnout.bench=1 and is
removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import fmt, machine_line, md_table, med
from deploy_overhead import split

BENCH_LABELS = {"turnout.bench": "1"}
IMAGES = ("turnout-testapp:v1", "turnout-testapp:v2")
MANAGER = "unix:///run/turnout-lab/n1.sock"
POLL = 0.02  # seconds between the hand-made steps' looks (tasks, then /healthz)
STEP_TIMEOUT = 60.0
CONFIG = f"""
[engine]
kind = "swarm"
host = "{MANAGER}"
[services.web]
image = "{IMAGES[0]}"
port = 8080
replicas = 4
drain_timeout = "5s"
[services.web.health]
path = "/healthz"
interval = "200ms"
timeout = "1s"
healthy = 1
unhealthy = 2
start_timeout = "15s"
"""


# ------------------------------------------------------------------------------------------ by hand
def _create(client, image: str, number: int):
    from docker.types import EndpointSpec, RestartPolicy, ServiceMode

    return client.services.create(
        image=image, name=f"bench-hand-{number}-{time.monotonic_ns() % 10**9}",
        labels=BENCH_LABELS, container_labels=BENCH_LABELS, mode=ServiceMode("replicated", replicas=1),
        endpoint_spec=EndpointSpec(ports=[{"Protocol": "tcp", "TargetPort": 8080, "PublishMode": "host"}]),
        restart_policy=RestartPolicy(condition="none"), log_driver="json-file",
        log_driver_options={"max-size": "10m", "max-file": "3"})


def _running_at(client, service, deadline: float, nodes: dict[str, str]) -> tuple[str, int]:
    """Until the service's task runs with its host port: (node address, port)."""
    while time.monotonic() < deadline:
        for task in service.tasks():
            status = task.get("Status") or {}
            ports = (status.get("PortStatus") or {}).get("Ports") or ()
            if status.get("State") == "running" and ports:
                node = task["NodeID"]
                if node not in nodes:
                    nodes[node] = client.nodes.get(node).attrs["Status"]["Addr"]
                return nodes[node], int(ports[0]["PublishedPort"])
        time.sleep(POLL)
    raise RuntimeError(f"service {service.name}: no running task within {STEP_TIMEOUT:g}s")


def _healthy(host: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=1.0)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            finally:
                conn.close()
        except OSError:
            pass
        time.sleep(POLL)
    raise RuntimeError(f"{host}:{port}: /healthz not 200 within {STEP_TIMEOUT:g}s")


def by_hand(client, old: list, image: str, nodes: dict[str, str]) -> tuple[list, float]:
    """Replace each of `old` (services) by a new one of `image`, slot after slot; (new ones, seconds)."""
    new = []
    started = time.monotonic()
    for number, previous in enumerate(old):
        service = _create(client, image, number)
        deadline = time.monotonic() + STEP_TIMEOUT
        _healthy(*_running_at(client, service, deadline, nodes), deadline)
        previous.remove()
        new.append(service)
    return new, time.monotonic() - started


# ------------------------------------------------------------------------------------------ turnout
def deploy(daemon, image: str) -> dict[str, float]:
    cmd = ["deploy", "web", "--image", image, "--strategy", "rolling", "--json"]
    started = time.monotonic()
    result = daemon.cli(*cmd, timeout=300)
    wall = time.monotonic() - started
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not events:
        raise RuntimeError(f"turnout {' '.join(cmd)} exited {result.returncode}:\n"
                           f"{result.stdout}\n{result.stderr}")
    return {**split(events), "cli_wall": wall}


def wait_serving(daemon, version: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = daemon.cli("status", "web", "--json")
        if done.returncode == 0:
            info = json.loads(done.stdout)["services"]["web"]
            if not info.get("deployment") and (info.get("stable") or {}).get("version") == version:
                return
        time.sleep(0.5)
    raise RuntimeError(f"web {version} not serving within {timeout:g}s:\n{daemon.log()}")


def remove_bench_services(client) -> int:
    import docker.errors

    services = client.services.list(filters={"label": "turnout.bench=1"})
    for service in services:
        try:
            service.remove()
        except docker.errors.NotFound:  # gone meanwhile
            pass
    return len(services)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each one turnout deploy and one by hand [3]")
    parser.add_argument("--json", action="store_true", help="print the per-round figures as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (daemon log, state)")
    args = parser.parse_args()

    import docker

    from controller.testing.plugin import TurnoutDaemon
    from proxy.log import configure

    configure("warning")
    client = docker.DockerClient(base_url=MANAGER)
    if len([n for n in client.nodes.list() if n.attrs["Status"]["State"] == "ready"]) < 2:
        raise SystemExit("the Swarm lab is not up with two ready nodes: scripts/swarm-lab.sh up")
    work = Path(tempfile.mkdtemp(prefix="turnout-swarmbench-"))
    daemon = TurnoutDaemon(work, dict(BENCH_LABELS), CONFIG)
    turnout: list[dict[str, float]] = []
    hand: list[float] = []
    nodes: dict[str, str] = {}
    t_begin = time.monotonic()
    try:
        daemon.start()
        wait_serving(daemon, "v1")  # the config's service: `turnout serve` deploys it on its own
        hand_services = []
        for number in range(4):  # the hand-made set starts as 4 slots of v1 too
            service = _create(client, IMAGES[0], number)
            deadline = time.monotonic() + STEP_TIMEOUT
            _healthy(*_running_at(client, service, deadline, nodes), deadline)
            hand_services.append(service)
        serving = 0
        for rnd in range(args.rounds):
            image = IMAGES[1 - serving]
            for which in (("turnout", "hand") if rnd % 2 == 0 else ("hand", "turnout")):
                if which == "turnout":
                    d = deploy(daemon, image)
                    turnout.append(d)
                    print(f"round {rnd + 1}/{args.rounds} turnout {d['status']} {d['seconds']:.3f}s "
                          f"(verify {d['pauses']:.3f}, start+health {d['start_health']:.3f})",
                          file=sys.stderr, flush=True)
                else:
                    hand_services, seconds = by_hand(client, hand_services, image, nodes)
                    hand.append(seconds)
                    print(f"round {rnd + 1}/{args.rounds} by hand {seconds:.3f}s", file=sys.stderr,
                          flush=True)
            serving = 1 - serving
    finally:
        try:
            daemon.stop()
        finally:
            daemon.remove_containers()
            remove_bench_services(client)
            client.close()
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)

    ms = lambda v: fmt(v * 1e3, 0)  # noqa: E731
    own = [d["seconds"] - d["pauses"] for d in turnout]
    m = {k: med([d[k] for d in turnout]) for k in turnout[0] if k != "status"}
    ratio = med(own) / med(hand)
    print(f"\nSwarm rolling, 4 replicas of turnout-testapp, v1 <-> v2, {args.rounds} rounds interleaved, "
          f"medians (ms); no load\n")
    print(md_table(
        ["", "ok", "total", "CLI wall", "start+health", "switch", "drain", "stop/remove old",
         "verify window", "rest (bookkeeping)", "total - verify"],
        [["turnout deploy", f"{sum(d['status'] == 'succeeded' for d in turnout)}/{len(turnout)}",
          ms(m["seconds"]), ms(m["cli_wall"]), ms(m["start_health"]), ms(m["switch"]), ms(m["drain"]),
          ms(m["stop_old"]), ms(m["pauses"]), ms(m["rest"]), ms(med(own))],
         ["by hand (SDK)", f"{len(hand)}/{len(hand)}", ms(med(hand)), "-", "-", "-", "-", "-", "-", "-",
          ms(med(hand))]]))
    print(f"\nturnout (total - verify) / by hand: {fmt(ratio, 2)}x; difference {ms(med(own) - med(hand))} ms "
          f"({ms((med(own) - med(hand)) / 4)} ms a slot)")
    print(f"per round: turnout {' '.join(ms(v) for v in own)}; by hand {' '.join(ms(v) for v in hand)}")
    print(f"\nran {time.monotonic() - t_begin:.0f} s; machine: {machine_line()}")
    if args.json:
        print(json.dumps({"turnout": turnout, "hand": hand, "ratio": ratio}))


if __name__ == "__main__":
    main()
