"""Shared fixtures. Tests that need Docker use `docker_client`; it fails (never skips) when the engine
is missing, and every container a test run starts is removed by label at the end of the session."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator

import pytest

pytest_plugins = ["pytester"]

# Every container started by this test run carries this label value, so cleanup touches only ours.
TEST_RUN_ID = os.environ.get("TURNOUT_TEST_RUN") or uuid.uuid4().hex[:12]
TEST_RUN_LABEL = "turnout.test-run"


@pytest.fixture(autouse=True)
def _garbage_collected_after_each_test() -> Iterator[None]:
    """TURNOUT_GC_EACH_TEST=1: a full garbage collection after every test, so a socket or transport a
    test left open warns (and fails: warnings are errors) in that test's teardown, not in whichever later
    test the collector happens to run. Off by default: a full collection per test costs time."""
    yield
    if os.environ.get("TURNOUT_GC_EACH_TEST") == "1":
        gc.collect()


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the engine is required: fail loudly, never skip
        pytest.fail(
            f"Docker engine not reachable ({exc}). Run `make test` (it starts dockerd), "
            "or scripts/ensure-docker.sh."
        )
    yield client
    for container in client.containers.list(all=True, filters={"label": f"{TEST_RUN_LABEL}={TEST_RUN_ID}"}):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
    client.close()


@pytest.fixture(scope="session")
def test_run_labels() -> dict[str, str]:
    """Labels to put on every container a test starts (the cleanup above removes by them)."""
    return {TEST_RUN_LABEL: TEST_RUN_ID}
