"""Control-plane faults against the real engine: health that flaps, a new version answering 5xx under
load, the Docker engine restarted mid-deploy, `turnout serve` killed at a step of a deploy, and SIGTERM
with requests in flight.

Every case ends the same way, and `assert_consistent` checks it: the old version serves (or the new one,
when promotion had completed), the history says what happened, and every container carrying the
daemon's owner label is one the controller knows (its serving release or the one kept for rollback).

Two image variants (compose/images/testapp/app/start.sh) make health fault deterministic, per probe:
`flaky`'s /healthz alternates pass/fail, `sick`'s passes three probes (enough for readiness with
healthy = 2) and then fails for good."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from test_deploys_live import assert_no_loss

from controller.engine.base import ContainerSpec
from controller.engine.docker import DockerBackend
from controller.journal import Journal
from controller.rehearsal.loadgen import FAILED_BY_PROXY, Outcome
from helpers.daemon import Daemon
from helpers.live import admin_get, owner_containers, status, traffic, wait_for_version

pytestmark = pytest.mark.docker

STRATEGIES = ["bigbang", "bluegreen", "rolling", "canary"]
ROOT = Path(__file__).resolve().parents[2]
DOCKER_PID = Path("/var/run/docker.pid")

FAULTS_CONFIG = """
[services.web]
image = "turnout-testapp:v1"
port = 8080
replicas = 2
drain_timeout = "5s"
hold_timeout = "15s"
verify = "2s"
[services.web.health]
path = "/healthz"
interval = "200ms"
timeout = "1s"
healthy = 2
unhealthy = 2
start_timeout = "3s"
[services.web.canary]
steps = [20, 50, 100]
step_pause = "1s"
analysis_interval = "200ms"
min_requests = 10
max_error_rate = 0.05
"""


def serve(tmp_path, docker_client, labels, config: str = FAULTS_CONFIG):
    daemon = Daemon(tmp_path, labels, config)
    daemon.start()
    try:
        wait_for_version(daemon, "v1")
    except BaseException:
        daemon.stop()
        owner_containers(docker_client, daemon, remove=True)
        raise
    return daemon


@pytest.fixture
def faulty(tmp_path, docker_client, test_run_labels):
    """`turnout serve` with FAULTS_CONFIG, serving turnout-testapp:v1 on 2 replicas."""
    daemon = serve(tmp_path, docker_client, test_run_labels)
    yield daemon
    daemon.stop()
    owner_containers(docker_client, daemon, remove=True)


def history(daemon: Daemon) -> list[dict]:
    """What `turnout history web --json --steps` prints."""
    return admin_get(daemon, "/v1/history/web", limit="20", steps="1")["deployments"]


def assert_consistent(daemon: Daemon, docker_client, version: str) -> dict:
    """`version` serves alone on its 2 replicas, nothing is deploying, and the labelled containers are
    exactly the serving release's (running) plus the rollback target's (stopped)."""
    info = status(daemon)
    stable, previous = info["stable"], info["previous"] or {"containers": []}
    assert stable["version"] == version, info
    assert info["deployment"] is None, info
    assert list(info["pools"]) == [stable["pool"]] and info["pools"][stable["pool"]]["weight"] == 100, info
    assert len(info["pools"][stable["pool"]]["upstreams"]) == 2, info
    containers = owner_containers(docker_client, daemon)
    known = set(stable["containers"]) | set(previous["containers"])
    unknown = [(c.name, c.status) for c in containers if c.id not in known]
    gone = known - {c.id for c in containers}
    assert not unknown and not gone, f"unknown to the journal: {unknown}; known but gone: {gone}"
    running = {c.id for c in containers if c.status == "running"}
    assert running == set(stable["containers"]), info
    assert {c.labels["turnout.version"] for c in containers if c.id in running} == {version}
    return info


async def assert_serves_without_loss(daemon: Daemon, version: str) -> None:
    async with traffic(daemon) as results:
        await asyncio.sleep(1.0)
    assert_no_loss(results[0])
    assert {r.version for r in results[0].records if r.version} == {version}


# ------------------------------------------------------------------ 1) health flaps
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_flapping_health_never_passes_readiness(faulty, docker_client, strategy):
    """/healthz alternates pass/fail: `healthy = 2` consecutive passes never happen, so the version
    never takes traffic, whatever the strategy (big-bang's held gap included)."""
    async with traffic(faulty) as results:
        code, out = await faulty.acli("deploy", "web", "--image", "turnout-testapp:flaky",
                                      "--strategy", strategy)
    assert code == 1, out
    assert "did not become healthy" in out and "/healthz" in out, out
    assert_no_loss(results[0])
    assert {r.version for r in results[0].records if r.version} == {"v1"}
    assert_consistent(faulty, docker_client, "v1")
    last = history(faulty)[0]
    assert last["to_version"] == "flaky" and last["status"] == "failed", last
    assert "did not become healthy" in last["message"]
    assert "switched" not in [s["name"] for s in last["steps"]]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_health_failing_after_readiness_is_rolled_back(faulty, docker_client, strategy):
    """`sick` passes readiness and then fails: the proxy's active checks eject it, and the post-switch
    verification (canary: its step analysis) sees the ejection and rolls back."""
    async with traffic(faulty) as results:
        code, out = await faulty.acli("deploy", "web", "--image", "turnout-testapp:sick",
                                      "--strategy", strategy)
    assert code == 1, out
    assert "ejected" in out, out
    result = results[0]
    assert result.failed_by_proxy == 0 and result.truncated == 0, result.summary()
    assert result.app_errors == 0, result.summary()
    assert_consistent(faulty, docker_client, "v1")
    last = history(faulty)[0]
    assert last["to_version"] == "sick" and last["status"] == "rolled_back", last
    assert "ejected" in last["message"] and "/healthz" in last["message"]
    steps = [s["name"] for s in last["steps"]]
    assert "restored" in steps, steps
    if strategy != "canary":
        assert "verifying" in steps and "verified" not in steps, steps
    await assert_serves_without_loss(faulty, "v1")


# ------------------------------------------------------------------ 2) 5xx under load
@pytest.mark.parametrize("strategy", ["bigbang", "bluegreen", "rolling"])  # canary: test_deploys_live
async def test_5xx_after_the_switch_is_rolled_back(faulty, docker_client, strategy):
    """fail500 is healthy but answers 500: the post-switch verification window sees its error rate over
    the canary's threshold in the proxy's per-pool counters and rolls back."""
    async with traffic(faulty) as results:
        code, out = await faulty.acli("deploy", "web", "--image", "turnout-testapp:fail500",
                                      "--strategy", strategy)
    assert code == 1, out
    assert "error rate" in out and "after the switch" in out, out
    result = results[0]
    lost = "\n".join(result.failure_lines(only=FAILED_BY_PROXY | {Outcome.TRUNCATED}))
    assert result.failed_by_proxy == 0 and result.truncated == 0, lost
    assert result.app_errors > 0  # the window saw real 5xx before it rolled back
    assert result.records[-1].version == "v1"
    assert_consistent(faulty, docker_client, "v1")
    last = history(faulty)[0]
    assert last["to_version"] == "fail500" and last["status"] == "rolled_back", last
    assert "error rate" in last["message"]
    await assert_serves_without_loss(faulty, "v1")


async def test_verification_passes_a_good_version_and_can_be_disabled(faulty, docker_client):
    code, out = await faulty.acli("deploy", "web", "--image", "turnout-testapp:v2", "--strategy", "bluegreen")
    assert code == 0, out
    steps = [s["name"] for s in history(faulty)[0]["steps"]]
    assert steps.index("switched") < steps.index("verifying") < steps.index("verified"), steps
    code, out = await faulty.acli("deploy", "web", "--image", "turnout-testapp:v3", "--strategy", "rolling",
                                  "--verify", "0")
    assert code == 0, out
    assert "verifying" not in [s["name"] for s in history(faulty)[0]["steps"]]
    assert_consistent(faulty, docker_client, "v3")


# ------------------------------------------------------------------ 3) the Docker engine restarts
def engine_pid() -> int | None:
    try:
        pid = int(DOCKER_PID.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def ensure_engine() -> None:
    """Start dockerd the way `make test` does (scripts/ensure-docker.sh; a no-op when it answers)."""
    subprocess.run([str(ROOT / "scripts" / "ensure-docker.sh")], check=True, timeout=120,
                   capture_output=True)


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def process_state(pid: int) -> str:
    """The one-letter state in /proc/PID/stat ('T': stopped by a signal)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


# Per strategy, the most telling moment to lose the engine, how the test gets the deploy there, and what
# the repair after the engine's return must have done (the engine stops every container: Turnout sets
# no restart policy).
ENGINE_MOMENTS = {
    # Waiting for its new set (flaky never passes readiness): v1 still serves, beside a full new set.
    "bluegreen": ("flaky", ["2 stopped container(s) restarted", "unknown container(s) removed"]),
    # Inside its gap: v1 already stopped, requests held, the new version not healthy yet.
    "bigbang": ("flaky", ["2 stopped container(s) restarted", "unknown container(s) removed"]),
    # Between batches: one v1 container already replaced by a v2 one. The daemon freezes itself
    # (TURNOUT_FAULT_STOP_AT) after batch 1 while the engine goes down; it resumes into batch 2.
    "rolling": ("v2", ["1 stopped container(s) restarted", "1 missing container(s) started",
                       "1 unknown container(s) removed"]),
    # At a weight step: 20% on v2, pausing for analysis while its containers die with the engine.
    "canary": ("v2", ["2 stopped container(s) restarted", "2 unknown container(s) removed"]),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", list(ENGINE_MOMENTS))
async def test_engine_restart_mid_deploy_fails_it_and_the_old_version_comes_back(
        tmp_path, docker_client, test_run_labels, strategy):
    """dockerd is stopped (SIGTERM, by PID) at the strategy's most telling moment (ENGINE_MOMENTS): the
    deploy fails saying the engine stopped answering, not blaming the version. The engine stops every
    container, v1's too; once it is back, the daemon's reconcile loop restarts v1 (and tops it up when a
    rolling batch had removed one), reroutes it, removes the dead deploy's leftovers, and journals that
    as a repair."""
    image, repaired = ENGINE_MOMENTS[strategy]
    config = (FAULTS_CONFIG.replace('start_timeout = "3s"', 'start_timeout = "60s"')
              .replace('step_pause = "1s"', 'step_pause = "60s"'))
    daemon = Daemon(tmp_path, test_run_labels, config)
    if strategy == "rolling":
        daemon.extra_env = {"TURNOUT_FAULT_STOP_AT": "batch_done#1@v2"}
    daemon.start()
    try:
        wait_for_version(daemon, "v1")
        deploy = asyncio.create_task(daemon.acli("deploy", "web", "--image", f"turnout-testapp:{image}",
                                                 "--strategy", strategy))
        if strategy == "rolling":
            await wait_until(lambda: process_state(daemon.process.pid) == "T", 30, "the daemon to freeze")
        elif strategy == "canary":
            await wait_until(lambda: status(daemon)["pools"].get("v2", {}).get("weight") == 20, 30,
                             "the canary at 20%")
        else:
            await wait_until(lambda: [c for c in owner_containers(docker_client, daemon)
                                      if c.labels["turnout.version"] == image], 20, f"{image} containers")
        pid = engine_pid()
        assert pid is not None, "no running dockerd found through /var/run/docker.pid"
        os.kill(pid, signal.SIGTERM)
        await wait_until(lambda: not Path(f"/proc/{pid}").exists(), 90, f"dockerd {pid} to exit")
        if strategy == "rolling":
            daemon.process.send_signal(signal.SIGCONT)
        code, out = await asyncio.wait_for(deploy, 60)
        assert code == 1, out
        assert "the Docker engine stopped answering" in out, out
        await asyncio.to_thread(ensure_engine)
        await wait_until(lambda: any(d["strategy"] == "repair" and d["status"] != "running"
                                     for d in history(daemon)), 60, "a repair after the engine restart")
        wait_for_version(daemon, "v1")
        assert_consistent(daemon, docker_client, "v1")
        records = history(daemon)
        repair, failed = records[0], records[1]
        assert failed["to_version"] == image and failed["status"] == "failed", failed
        assert failed["message"].startswith("the Docker engine stopped answering during the deploy"), failed
        assert "v1 is started again once the engine is back" in failed["message"], failed
        assert [s["name"] for s in failed["steps"]][-1] == "restore_failed", failed
        assert repair["strategy"] == "repair" and repair["status"] == "succeeded", repair
        for part in repaired:
            assert part in repair["message"], repair
        await assert_serves_without_loss(daemon, "v1")
    finally:
        if engine_pid() is None:
            await asyncio.to_thread(ensure_engine)
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.send_signal(signal.SIGCONT)  # a frozen daemon cannot act on SIGTERM
        daemon.stop()
        owner_containers(docker_client, daemon, remove=True)


# ------------------------------------------------------------------ 4) SIGKILL at a step, restart
async def fabricate(daemon: Daemon, labels: dict[str, str], strategy: str, steps: list[str],
                    new_containers: int) -> str:
    """The journal and containers a deploy of v2 leaves when killed after `steps` (see
    test_recovery_live.py): returns the deployment id."""
    journal = Journal(daemon.state_dir / "journal.sqlite3")
    record = journal.begin("web", strategy, "v2", "turnout-testapp:v2", "v1", {"pool": "v2"})
    for step in steps:
        journal.step(record.id, step)
    backend = DockerBackend(owner=journal.owner, extra_labels=labels)
    for _ in range(new_containers):
        container = await backend.start(ContainerSpec(service="web", version="v2", image="turnout-testapp:v2",
                                                      port=8080, deployment_id=record.id, pool="v2"))
        journal.record_container(container.id, "web", "v2", record.id)  # as the daemon records its own
    await backend.close()
    journal.close()
    return record.id


async def test_sigkill_in_bigbang_gap_rolls_back_to_the_stopped_old_set(faulty, docker_client,
                                                                       test_run_labels):
    """Killed after big-bang stopped v1 and before v2 was healthy: no switch happened, so recovery
    starts the stopped v1 set again and removes the half-started v2."""
    assert faulty.stop(signal.SIGKILL) == -signal.SIGKILL
    v1 = owner_containers(docker_client, faulty)
    assert len(v1) == 2
    await asyncio.gather(*(asyncio.to_thread(c.stop, timeout=2) for c in v1))
    deployment = await fabricate(faulty, test_run_labels, "bigbang",
                                 ["started", "holding", "drained", "old_stopped", "starting"], 1)
    faulty.start()
    wait_for_version(faulty, "v1")
    info = assert_consistent(faulty, docker_client, "v1")
    assert set(info["stable"]["containers"]) == {c.id for c in v1}  # the same set, started again
    records = {d["id"]: d for d in history(faulty)}
    assert records[deployment]["status"] == "rolled_back" and "restart" in records[deployment]["message"]
    assert not [d for d in records.values() if d["strategy"] == "repair"]  # recovery left it whole
    await assert_serves_without_loss(faulty, "v1")


async def test_sigkill_after_bluegreen_switch_finishes_forward(faulty, docker_client, test_run_labels):
    """Killed after blue-green switched to v2 and before it stopped v1: v2 had served 100%, so recovery
    finishes forward — v2 serves, v1 is stopped and kept as the rollback target."""
    assert faulty.stop(signal.SIGKILL) == -signal.SIGKILL
    v1 = {c.id for c in owner_containers(docker_client, faulty)}
    deployment = await fabricate(faulty, test_run_labels, "bluegreen",
                                 ["started", "starting", "healthy", "switched", "drained"], 2)
    faulty.start()
    wait_for_version(faulty, "v2")
    info = assert_consistent(faulty, docker_client, "v2")
    assert info["previous"]["version"] == "v1" and set(info["previous"]["containers"]) == v1
    records = {d["id"]: d for d in history(faulty)}
    assert records[deployment]["status"] == "succeeded"
    assert "completed after a daemon restart" in records[deployment]["message"]
    assert not [d for d in records.values() if d["strategy"] == "repair"]
    await assert_serves_without_loss(faulty, "v2")
    code, out = await faulty.acli("rollback", "web")  # the kept set really is a rollback target
    assert code == 0, out
    # The rollback reports once switched and drained; the set it left is stopped after that.
    await wait_until(lambda: not [c for c in owner_containers(docker_client, faulty)
                                  if c.status == "running" and c.labels["turnout.version"] == "v2"],
                     30, "v2 stopped after the rollback")
    assert_consistent(faulty, docker_client, "v1")


# ------------------------------------------------------------------ 5) SIGTERM with requests in flight
async def test_sigterm_lets_in_flight_requests_finish_and_exits_0(faulty):
    async def slow(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.get(f"{faulty.url}/cgi-bin/slow?2") as response:
            return response.status, await response.text()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        requests = [asyncio.create_task(slow(session)) for _ in range(8)]
        await asyncio.sleep(0.5)  # all 8 are at the upstream (each takes 2 s)
        assert not any(r.done() for r in requests)
        started = time.monotonic()
        faulty.process.send_signal(signal.SIGTERM)
        answers = await asyncio.gather(*requests)
        code = await asyncio.to_thread(faulty.process.wait, 30)
    assert answers == [(200, "v1 slow\n")] * 8
    assert code == 0, faulty.log()
    assert time.monotonic() - started < 10  # graceful, not a drain deadline or a kill
    assert "daemon.stopped" in faulty.log()


# ------------------------------------------------------------------ 6) a request outlasting the drain
async def test_a_get_outlasting_the_drain_is_answered_by_the_new_version(faulty):
    """Blue-green with a slow request on each v1 container's way out: at the 5 s drain deadline the GET,
    still without a byte of its answer, goes to v2 and is answered there; the POST (which may not go
    twice) ends in 504. The drained step counts one of each."""
    async def slow(session: aiohttp.ClientSession, method: str) -> tuple[int, str, str]:
        async with session.request(method, f"{faulty.url}/cgi-bin/slow?7",
                                   data=b"order=1" if method == "POST" else None) as response:
            return response.status, await response.text(), response.headers.get("X-Turnout-Error", "")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        requests = [asyncio.create_task(slow(session, method)) for method in ("GET", "POST")]
        await asyncio.sleep(0.5)  # both are at v1 (each takes 7 s)
        code, out = await faulty.acli("deploy", "web", "--image", "turnout-testapp:v2",
                                      "--strategy", "bluegreen", "--verify", "0")
        (get_status, get_body, _), (post_status, _, post_error) = await asyncio.gather(*requests)
    assert code == 0, out
    assert (get_status, get_body) == (200, "v2 slow\n")
    assert (post_status, post_error) == (504, "drain-deadline")
    drained = [s["detail"] for s in history(faulty)[0]["steps"] if s["name"] == "drained"]
    assert [(d["aborted"], d["replayed"]) for d in drained] == [(1, 1)], drained
