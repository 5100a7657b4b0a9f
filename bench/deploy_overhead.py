"""Deploy overhead: each strategy's wall time split into phases, against `docker run` + first healthy
probe of the same image measured in the same run.

A `turnout serve` (controller.testing.plugin.TurnoutDaemon: its own state dir, an ephemeral loopback
port) runs a service `web` of `--replicas` turnout-testapp containers. Each round runs, in an order that
rotates from round to round, for every strategy: first the reference, then a deploy with that strategy that
alternates between turnout-testapp:v1 and :v2. No load is sent (drains are empty; see zero_loss.py
for deploys under load).

reference  `--replicas` containers of the same image created and started in parallel with the Docker SDK
           (create + start: never a pull), published on 127.0.0.1, /healthz polled every 5 ms until
           each answered 200; then `docker stop` of them is timed too (a deploy stops the old set).
deploy     `turnout deploy web --image ... --strategy S --json`; the JSON events give the split:
           start+health (timings.start_and_health), switch (time from the event before `switched` to
           `switched`), drain (timings.drain), stop/remove old (from `drained` to the next step),
           canary pauses (from each `weight` step to the next event) and the post-switch verification
           window (`timings.verify`), the rest = bookkeeping.
overhead   deploy seconds (inside the daemon) minus the reference run+healthy of the same round; also
           minus the reference stop time, and the time to the switch minus the reference.

    .venv/bin/python bench/deploy_overhead.py                   # 3 rounds x 4 strategies: about 2-3 min
    .venv/bin/python bench/deploy_overhead.py --rounds 5 --replicas 1

Containers carry the label turnout.bench=1 and are all removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import fmt, machine_line, md_table, med, remove_bench_containers

from controller.config.model import SHIFTING

BENCH_LABELS = {"turnout.bench": "1"}
IMAGES = ("turnout-testapp:v1", "turnout-testapp:v2")


# ------------------------------------------------------------------------------------------ reference
def _healthy(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"reference container on :{port} not healthy in time")


def _run_one(client, image: str) -> tuple[object, float]:
    started = time.monotonic()
    container = client.containers.create(
        image,
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", None)},
        labels=BENCH_LABELS,
        restart_policy={"Name": "no"},
    )
    container.start()
    container.reload()
    port = int(container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    _healthy(port, started + 30)
    return container, time.monotonic() - started


def reference(image: str, replicas: int) -> dict[str, float]:
    """`replicas` containers started in parallel until each answered /healthz 200; then stopped."""
    import docker

    client = docker.from_env()
    try:
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(replicas) as pool:
            results = list(pool.map(lambda _: _run_one(client, image), range(replicas)))
        run_healthy = time.monotonic() - started
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(replicas) as pool:
            list(pool.map(lambda c: c.stop(timeout=10), [c for c, _ in results]))
        stop = time.monotonic() - started
        for container, _ in results:
            container.remove(force=True)
        return {"run_healthy": run_healthy, "stop": stop}
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ deploys
def split(events: list[dict]) -> dict[str, float]:
    """Phases of one deploy from its JSON events (see the module doc)."""
    finished = next(e for e in events if e.get("event") == "finished")
    timings = finished.get("timings") or {}
    steps = [e for e in events if e.get("event") in ("step", "finished")]
    t0 = steps[0]["time"]
    switch = stop_old = pauses = 0.0
    to_switch = None
    for prev, cur in itertools.pairwise(steps):
        if cur.get("step") == "switched":
            if prev.get("step") != "weight":  # after a canary step the wait is the pause, counted below
                switch += cur["time"] - prev["time"]
            to_switch = cur["time"] - t0
        if prev.get("step") == "drained" and cur.get("step") in ("old_stopped", "old_removed", "batch_done"):
            stop_old += cur["time"] - prev["time"]
        if prev.get("step") == "weight":
            pauses += cur["time"] - prev["time"]
    seconds = float(finished.get("seconds", 0.0))
    start_health = float(timings.get("start_and_health", 0.0))
    drain = float(timings.get("drain", 0.0))
    # The post-switch verification window (`verify`, default 2 s) is a deliberate wait, like a canary
    # step pause: it is counted with the pauses, not as overhead.
    pauses += float(timings.get("verify", 0.0))
    rest = seconds - start_health - switch - drain - stop_old - pauses
    return {
        "status": finished.get("status"),
        "seconds": seconds,
        "start_health": start_health,
        "switch": switch,
        "drain": drain,
        "stop_old": stop_old,
        "pauses": pauses,
        "rest": rest,
        "to_switch": to_switch if to_switch is not None else float("nan"),
        "gap": float(timings.get("gap", float("nan"))),
    }


def deploy(daemon, image: str, strategy: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = ["deploy", "web", "--image", image, "--strategy", strategy, "--json"]
    if strategy == "canary":
        cmd += ["--steps", "50,100", "--step-pause", args.step_pause]
    started = time.monotonic()
    result = daemon.cli(*cmd, timeout=180)
    wall = time.monotonic() - started
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not events:
        raise RuntimeError(
            f"turnout {' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return {**split(events), "cli_wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds (each: every strategy + its reference) [3]"
    )
    parser.add_argument("--replicas", type=int, default=2, help="containers per version [2]")
    parser.add_argument("--strategies", default=",".join(SHIFTING))
    parser.add_argument("--step-pause", default="0.2s", help="canary pause per step (steps 50,100) [0.2s]")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (daemon log, state)")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]

    from controller.testing.plugin import TurnoutDaemon
    from proxy.log import configure

    configure("warning")  # this process's own log lines (container removal) stay off the table output

    work = Path(tempfile.mkdtemp(prefix="turnout-deploybench-"))
    daemon = TurnoutDaemon(work, dict(BENCH_LABELS))
    results: dict[str, list[dict]] = {s: [] for s in strategies}
    refs: list[dict] = []
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
        for rnd in range(args.rounds):
            order = strategies[rnd % len(strategies) :] + strategies[: rnd % len(strategies)]
            for strategy in order:
                image = IMAGES[1 - serving]
                ref = reference(image, args.replicas)
                refs.append(ref)
                d = deploy(daemon, image, strategy, args)
                serving = 1 - serving
                d["ref_run_healthy"], d["ref_stop"] = ref["run_healthy"], ref["stop"]
                results[strategy].append(d)
                print(
                    f"round {rnd + 1}/{args.rounds} {strategy:<9} {d['status']:<9} {d['seconds']:6.3f}s "
                    f"(start+health {d['start_health']:.3f}, ref run+healthy {ref['run_healthy']:.3f}, "
                    f"ref stop {ref['stop']:.3f})",
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
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)

    ms = lambda v: fmt(v * 1e3, 0)  # noqa: E731
    rows, over = [], []
    for strategy in strategies:
        rs = results[strategy]
        if not rs:
            continue
        m = {k: med([r[k] for r in rs]) for k in rs[0] if k != "status"}
        ok = sum(r["status"] == "succeeded" for r in rs)
        rows.append(
            [
                strategy,
                f"{ok}/{len(rs)}",
                ms(m["seconds"]),
                ms(m["cli_wall"]),
                ms(m["start_health"]),
                ms(m["switch"]),
                ms(m["drain"]),
                ms(m["stop_old"]),
                ms(m["pauses"]),
                ms(m["rest"]),
                ms(m["ref_run_healthy"]),
                ms(m["ref_stop"]),
            ]
        )
        o_total = med([r["seconds"] - r["ref_run_healthy"] for r in rs])
        # The target counts Turnout's own work: the deliberate waits (canary pauses, the post-switch
        # verification window) are configuration, not overhead.
        o_work = med([r["seconds"] - r["ref_run_healthy"] - r["pauses"] for r in rs])
        o_nostop = med([r["seconds"] - r["ref_run_healthy"] - r["ref_stop"] - r["pauses"] for r in rs])
        o_start = med([r["start_health"] - r["ref_run_healthy"] for r in rs])
        o_switch = med([r["to_switch"] - r["ref_run_healthy"] for r in rs])
        ratio = med([r["start_health"] / r["ref_run_healthy"] for r in rs])
        target = (
            ("**≤ 0.5 s: " + ("met" if o_work <= 0.5 else "missed") + "**")
            if strategy == "bluegreen"
            else ""
        )
        over.append([strategy, ms(o_total), ms(o_work), ms(o_nostop), ms(o_start), fmt(ratio, 2),
                     ms(o_switch), target])
    print(
        f"\ndeploy overhead: {args.replicas} replicas of turnout-testapp, {args.rounds} rounds, medians "
        f"(ms); canary steps 50,100 with a {args.step_pause} pause; no load\n"
    )
    print(
        md_table(
            [
                "strategy",
                "ok",
                "deploy total",
                "CLI wall",
                "start+health",
                "switch",
                "drain",
                "stop/remove old",
                "canary pauses",
                "rest (bookkeeping)",
                "ref: run+healthy",
                "ref: docker stop",
            ],
            rows,
        )
    )
    print(
        "\nTurnout's overhead beyond the reference of the same round (medians of the per-round "
        "differences, ms):\n"
    )
    print(
        md_table(
            [
                "strategy",
                "total - ref run+healthy",
                "… - pauses (own work)",
                "… also - ref stop - pauses",
                "start+health - ref",
                "start+health / ref",
                "time to switch - ref",
                "target",
            ],
            over,
        )
    )
    print(f"\nran {time.monotonic() - t_begin:.0f} s; machine: {machine_line()}")


if __name__ == "__main__":
    main()
