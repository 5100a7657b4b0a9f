"""`turnout serve` SIGKILLed at every step of a real v1 -> v2 deploy, for every strategy, then started again.

The daemon is started with the test-only hook TURNOUT_FAULT_KILL_AT (controller/testing/faults.py), which
makes it SIGKILL itself right after the journal write of one step, or right before it for the steps that
follow a change to containers or saved state (helpers/fault_points.py; tests/unit/test_fault_points.py keeps
the lists true to what the strategies journal). Started again without the hook, recovery must leave v1
serving when the deploy had not switched, v2 (with v1 kept as the rollback target) when it had, a history
entry saying which, only containers the journal knows, and traffic flowing without loss.

Each case is a daemon of its own (own state dir, owner label, port), so a strategy's cases run
PARALLEL at a time: most of a case is waiting for containers and health probes, not CPU.
"""

from __future__ import annotations

import asyncio
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest
from test_faults_control_plane import assert_consistent, history

from controller.journal import Journal
from controller.rehearsal.loadgen import LoadConfig, run_load
from helpers.daemon import Daemon
from helpers.fault_points import JOURNALLED_STEPS, KILL_CONFIG, fault_points, promoted
from helpers.live import admin_post, owner_containers, wait_for_version

pytestmark = pytest.mark.docker

PARALLEL = 3  # cases at a time


def journalled(daemon: Daemon) -> tuple[str, str, list[str]]:
    """The v2 deployment as the dead daemon left it: (id, status, step names)."""
    with Journal(daemon.state_dir / "journal.sqlite3") as journal:
        record = next(d for d in journal.history("web") if d.to_version == "v2")
        return record.id, record.status, [s.name for s in journal.steps(record.id)]


def expected_steps(strategy: str, point: str, before: bool) -> list[str]:
    """The steps journalled when the hook fires at `point`: up to it, without it when `before`."""
    name, n = point.split("#")
    steps, seen = JOURNALLED_STEPS[strategy], 0
    for i, step in enumerate(steps):
        seen += step == name
        if step == name and seen == int(n):
            return steps[:i] if before else steps[:i + 1]
    raise AssertionError(f"{point} is not a step of {strategy}")


def start_deploy(daemon: Daemon, image: str, strategy: str) -> None:
    """`turnout deploy web --image IMAGE --strategy STRATEGY --detach` as the CLI sends it (POST /v1/deploy),
    without a CLI process (~0.5 s of CPU) per case: answered 202, unless the daemon died answering."""
    body = {"service": "web", "image": image, "strategy": strategy, "version": None, "flags": {},
            "options": {}}
    try:
        code, answer = admin_post(daemon, "/v1/deploy", body)
    except (ConnectionResetError, BrokenPipeError):  # http.client.RemoteDisconnected is one: it died
        return
    assert code == 202, (code, answer)


def assert_traffic_flows(daemon: Daemon, version: str) -> None:
    """A short burst (keep-alive and new connections) all answered by `version`, none lost."""
    result = asyncio.run(run_load(LoadConfig(url=daemon.url, duration=0.6, concurrency=4,
                                             new_connections=0.3, timeout=10.0)))
    summary = result.summary()
    assert result.sent > 20 and result.versions() == [version], summary
    assert result.failed_by_proxy == 0 and result.truncated == 0 and result.app_errors == 0, summary


def kill_and_recover(workdir: Path, labels: dict[str, str], strategy: str, point: str, before: bool) -> None:
    """One case: deploy v2 with the hook at `point`, see the daemon die there, start it again, check."""
    client = docker.from_env()  # one per thread
    workdir.mkdir()
    daemon = Daemon(workdir, labels, KILL_CONFIG)
    daemon.extra_env = {"TURNOUT_FAULT_KILL_AT": f"{'before:' if before else ''}{point}@v2"}
    try:
        daemon.start()
        wait_for_version(daemon, "v1")
        v1 = {c.id for c in owner_containers(client, daemon)}
        start_deploy(daemon, "turnout-testapp:v2", strategy)
        assert daemon.process.wait(30) == -signal.SIGKILL, daemon.log()
        deployment, status, steps = journalled(daemon)
        assert steps == expected_steps(strategy, point, before), steps
        switched = promoted(strategy, steps)  # and verified, where the strategy verifies

        daemon.extra_env = {}
        daemon.start()
        expected = "v2" if switched else "v1"
        wait_for_version(daemon, expected)
        info = assert_consistent(daemon, client, expected)
        records = {d["id"]: d for d in history(daemon)}
        record = records[deployment]
        if status == "succeeded":  # blue-green's old set is stopped after the deploy reported success
            assert record["status"] == "succeeded" and strategy == "bluegreen", record
        elif switched:
            assert record["status"] == "succeeded", record
            assert record["message"] == "completed after a daemon restart", record
        elif "switched" in steps:  # switched, but killed before its verification passed
            assert record["status"] == "rolled_back", record
            assert "before the post-switch verification passed; rolled back" in record["message"], record
        else:
            assert record["status"] == "rolled_back", record
            assert record["message"] == "interrupted by a daemon restart; rolled back", record
        if switched:
            assert info["previous"]["version"] == "v1", info  # the rollback target survived
            # Kept (stopped) unless the strategy had removed them: rolling batch by batch, canary
            # once switched (`old_removed` is journalled after the removal).
            removed = strategy == "rolling" or "old_removed" in steps or point == "old_removed#1"
            assert set(info["previous"]["containers"]) == (set() if removed else v1), info
        else:
            assert info["previous"] is None, info
            repairs = [d for d in records.values() if d["strategy"] == "repair"]
            # Rolling removes an old container after its `drained` and before its `batch_done`.
            lost = steps.count("batch_done") + (before and point.startswith("batch_done"))
            assert len(set(info["stable"]["containers"]) & v1) == 2 - lost, info
            assert [r["status"] for r in repairs] == (["succeeded"] if lost else []), repairs
        assert_traffic_flows(daemon, expected)
    finally:
        if daemon.process is not None:
            daemon.stop(signal.SIGKILL)  # nothing left to finish gracefully: the suite's time counts
        for container in owner_containers(client, daemon):
            container.remove(force=True)
        client.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", list(JOURNALLED_STEPS))
def test_sigkill_at_every_step_then_restart_recovers(tmp_path, docker_client, test_run_labels, strategy):
    points = fault_points(strategy)

    def case(n: int) -> str | None:
        point, before = points[n]
        try:  # a short workdir: the admin socket's path must fit in 107 bytes
            kill_and_recover(tmp_path / f"c{n}", test_run_labels, strategy, point, before)
        except Exception as exc:
            return f"{'before' if before else 'after'} {point}: {type(exc).__name__}: {exc}"
        return None

    with ThreadPoolExecutor(PARALLEL) as pool:
        failures = [f for f in pool.map(case, range(len(points))) if f]
    assert not failures, f"{len(failures)} of {len(points)} cases failed:\n\n" + "\n\n".join(failures)


@pytest.mark.timeout(120)
def test_sigkill_during_verification_of_a_5xx_version_rolls_it_back(tmp_path, docker_client,
                                                                   test_run_labels):
    """A rolling deploy of fail500 (healthy, answers 500) killed once it switched and began its
    post-switch verification: finishing it forward would keep a version failing every request, so
    recovery rolls back, and v1 (whose containers the rolling update had removed) is started again."""
    daemon = Daemon(tmp_path, test_run_labels, KILL_CONFIG)
    daemon.extra_env = {"TURNOUT_FAULT_KILL_AT": "verifying@fail500"}
    try:
        daemon.start()
        wait_for_version(daemon, "v1")
        start_deploy(daemon, "turnout-testapp:fail500", "rolling")
        assert daemon.process.wait(30) == -signal.SIGKILL, daemon.log()
        daemon.extra_env = {}
        daemon.start()
        wait_for_version(daemon, "v1")
        assert_consistent(daemon, docker_client, "v1")
        records = history(daemon)
        failed = next(d for d in records if d["to_version"] == "fail500")
        assert failed["status"] == "rolled_back", failed
        assert "before the post-switch verification passed" in failed["message"], failed
        assert records[0]["strategy"] == "repair" and records[0]["status"] == "succeeded", records[0]
        assert_traffic_flows(daemon, "v1")
    finally:
        if daemon.process is not None:
            daemon.stop(signal.SIGKILL)
        owner_containers(docker_client, daemon, remove=True)
