"""The README's first command: the demo runs end to end, reports no lost request, and cleans up."""

import re
import subprocess
import sys

import pytest

from controller.daemon import owner_of
from controller.rehearsal.demo import STATE_DIR

pytestmark = pytest.mark.docker


@pytest.mark.timeout(300)
def test_demo_rehearses_a_canary_and_cleans_up(docker_client):
    demo = [sys.executable, "-m", "controller.rehearsal.demo", "--rate", "100", "--duration", "3s"]
    result = subprocess.run(demo, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Rehearsal of web: canary v1 -> v2  [succeeded]" in out
    assert "Verdict: no request lost" in out
    assert re.search(r"watch it live: open http://127\.0\.0\.1:\d+/ \(the dashboard\)", out), out[:2000]
    assert (STATE_DIR / "rehearsal.html").exists()
    left = docker_client.containers.list(all=True, filters={"label": f"turnout.owner={owner_of(STATE_DIR)}"})
    assert left == []
