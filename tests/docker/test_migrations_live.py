"""Migrations against the real engine, with the schema test app (turnout-testapp:schema-v1/-v2/-v3: each
reads the schema number on its volume only within its turnout.schema range, 500 otherwise; /app/migrate
expand|contract sets it): expand -> mixed window -> contract under load with nothing failed, a rollback
below the floor refused, a failure after the contract freezing the deploy, and a daemon SIGKILLed inside
`migrate` coming back frozen instead of running it again."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from controller.journal import Journal
from controller.rehearsal.loadgen import LoadConfig, run_load
from helpers.daemon import Daemon
from helpers.live import apply, configless_daemon, owner_containers, status

pytestmark = pytest.mark.docker

FILE = """
[services.web]
image = "turnout-testapp:schema-{version}"
port = 8080
replicas = 2
volumes = ["{data}:/data"]
verify = "0s"
drain_timeout = "2s"
strategy = "canary"
[services.web.health]
interval = "200ms"
healthy = 1
start_timeout = "10s"
[services.web.canary]
steps = [50, 100]
step_pause = "1s"
min_requests = 1000
[services.web.hooks]
migrate = {{ oneoff = ["/app/migrate", "expand"{migrate_seconds}] }}
contract = {{ oneoff = ["/app/migrate", "contract"] }}
{extra}
"""


def spec(data: Path, version: str, migrate_seconds: int = 0, extra: str = "") -> str:
    seconds = f', "{migrate_seconds}"' if migrate_seconds else ""
    return FILE.format(version=version, data=data, migrate_seconds=seconds, extra=extra)


@pytest.fixture
def serve(tmp_path, docker_client, test_run_labels):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "schema").write_text("1\n")
    with configless_daemon(tmp_path, test_run_labels, docker_client, signal.SIGKILL) as daemon:
        yield daemon


def schema(serve: Daemon) -> str:
    return (serve.workdir / "data" / "schema").read_text().strip()


def migrations(serve: Daemon) -> list[str]:
    return (serve.workdir / "data" / "migrations.log").read_text().splitlines()


def test_expand_mixed_contract_under_load_then_no_rollback_below_the_floor(serve):
    data = serve.workdir / "data"
    serve.start()
    first = apply(serve, spec(data, "v1"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert schema(serve) == "2"  # v1 reads 1-2: expand kept 1, contract moved to 2

    async def deploy_under_load():
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(LoadConfig(url=serve.url, duration=60, concurrency=4,
                                                       new_connections=0.3, timeout=10.0), stop=stop))
        await asyncio.sleep(0.3)
        code, out = await serve.acli("apply", "-f", str(serve.workdir / "turnout.toml"))
        await asyncio.sleep(0.3)
        stop.set()
        return code, out, await load

    (serve.workdir / "turnout.toml").write_text(spec(data, "v2"))
    code, out, result = asyncio.run(deploy_under_load())
    assert code == 0, out
    summary = result.summary()
    assert result.failed_by_proxy == 0 and result.truncated == 0 and result.app_errors == 0, summary
    assert {"v1", "v2"} <= set(result.versions()), summary  # the mixed window: both answered
    assert schema(serve) == "3"
    assert migrations(serve)[-2:] == ["migrate schema-v2 expand -> 2",
                                       "contract schema-v2 contract -> 3"], \
        migrations(serve)
    hooks = [line for line in out.splitlines() if "hook_finished" in line]
    assert len(hooks) == 2 and all("passed, exit 0" in line for line in hooks), out

    deployment = json.loads(serve.cli("history", "web", "--json").stdout)["deployments"][0]["id"]
    refused = serve.cli("rollback", "web")
    assert refused.returncode == 2, refused
    assert f"deployment {deployment} (schema-v2) ran its contract hook" in refused.stderr, refused.stderr
    assert status(serve)["stable"]["version"] == "schema-v2"


def test_a_failure_after_the_contract_freezes_until_promote(serve):
    data = serve.workdir / "data"
    serve.start()
    assert apply(serve, spec(data, "v2")).returncode == 0  # 2-3: schema 3 now
    failing = 'post_deploy = { oneoff = ["/bin/sh", "-c", "echo smoke test failed; exit 4"] }'
    frozen = apply(serve, spec(data, "v3", extra=failing))
    assert frozen.returncode == 3, frozen.stdout + frozen.stderr
    assert "post_deploy oneoff: FAILED, exit 4" in frozen.stdout and "smoke test failed" in frozen.stdout
    info = status(serve)
    assert info["deployment"]["status"] == "frozen" and info["stable"]["version"] == "schema-v3", info
    assert "contract hook of schema-v3 finished" in info["deployment"]["message"]
    assert {p["weight"] for p in info["pools"].values()} == {100} and "schema-v3" in info["pools"]

    refused = serve.cli("abort", "web")
    assert refused.returncode == 2 and "is frozen" in refused.stderr, refused
    assert serve.cli("promote", "web").returncode == 0
    deadline = time.monotonic() + 20
    while status(serve)["deployment"] is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    record = json.loads(serve.cli("history", "web", "--json").stdout)["deployments"][0]
    assert record["status"] == "succeeded" and "then promoted: schema-v3 serves" in record["message"], record


def test_sigkill_during_migrate_freezes_and_never_runs_it_again(serve, docker_client):
    data = serve.workdir / "data"
    serve.start()
    assert apply(serve, spec(data, "v1")).returncode == 0
    serve.stop()
    serve.extra_env = {"TURNOUT_FAULT_KILL_AT": "after:hook_container@schema-v2"}  # the one-off runs
    serve.start()
    cut = apply(serve, spec(data, "v2", migrate_seconds=2))
    assert cut.returncode != 0
    assert serve.process.wait(30) == -signal.SIGKILL, serve.log()

    serve.extra_env = {}
    serve.start()
    info = status(serve)
    assert info["deployment"]["status"] == "frozen", info
    assert "the migrate hook ran; it is not run again" in info["deployment"]["message"]
    assert info["stable"]["version"] == "schema-v1"  # what served keeps serving
    hook_containers = [c for c in owner_containers(docker_client, serve)
                       if c.labels.get("turnout.pool") == "hook-migrate"]
    assert len(hook_containers) == 1  # kept for the operator, and no second one

    with Journal(serve.state_dir / "journal.sqlite3") as journal:
        record = journal.history("web")[0]
        started = [s for s in journal.steps(record.id) if s.name == "hook_started"]
    assert record.status == "running" and len(started) == 1
    hook_containers[0].wait(timeout=30)  # the cut migration finishes on its own, once
    assert migrations(serve)[-1] == "migrate schema-v2 expand -> 2", migrations(serve)

    ended = serve.cli("abort", "web", "--force")
    assert ended.returncode == 0, ended.stderr
    deadline = time.monotonic() + 20
    while status(serve)["deployment"] is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in owner_containers(docker_client, serve)
                if c.labels.get("turnout.pool") == "hook-migrate"]
    record = json.loads(serve.cli("history", "web", "--json").stdout)["deployments"][0]
    assert record["status"] == "aborted" and "ended by abort --force: schema-v1 serves" in record["message"]
