"""`turnout status --watch` draws the feed's picture: pools with set weight and observed share, upstream
health, a deploy's planned weights, countdown, analysis verdict and steps, the last deployments."""

from __future__ import annotations

import time

from rich.console import Console

from controller.dashboard.terminal import Picture

SERVICES = {"web": {"name": "web", "managed": True, "strategy": "canary", "hosts": [], "state": "active",
                    "stable": "v1", "stable_pool": "v1", "previous": None, "draining": [
                        {"address": "127.0.0.1:7003", "pool": "v0", "in_flight": 2}],
                    "pools": [{"name": "v1", "weight": 80, "upstreams": [
                                  {"address": "127.0.0.1:7001", "health": "healthy", "eligible": True,
                                   "in_flight": 3}]},
                              {"name": "v2", "weight": 20, "upstreams": [
                                  {"address": "127.0.0.1:7002", "health": "unhealthy", "eligible": False,
                                   "in_flight": 0}]}]}}
DEPLOYMENT = {"id": "d-000007", "strategy": "canary", "version": "v2", "image": "app:v2", "started": 100.0}


def draw(picture: Picture) -> str:
    console = Console(record=True, width=180, color_system=None)
    console.print(picture.render())
    return console.export_text()


def test_the_picture_follows_the_feed():
    picture = Picture()
    picture.apply({"kind": "snapshot", "t": time.time(), "interval": 1.0, "services": SERVICES,
                   "series": [], "markers": [], "deployments": {},
                   "history": {"web": [{"id": "d-000006", "strategy": "rolling", "from_version": None,
                                        "to_version": "v1", "status": "succeeded", "started_at": 50.0,
                                        "seconds": 3.2, "message": ""}]}})
    for event in ({"event": "step", "step": "started", "time": 100.0},
                  {"event": "plan", "steps": [20, 50, 100], "step_pause": 30.0, "time": 100.1},
                  {"event": "step", "step": "weight", "weights": {"v1": 80, "v2": 20}, "time": 101.0},
                  {"event": "analysis", "verdict": "passing", "requests": 40, "error_rate": 0.0,
                   "max_error_rate": 0.05, "time": 102.0}):
        picture.apply({"kind": "deploy", "service": "web", "deployment": DEPLOYMENT, "event": event})
    picture.apply({"kind": "tick", "t": time.time(), "services": SERVICES,
                   "rates": {"web": {"v1": {"rps": 80.0, "errors": 0.0, "p99": 0.005, "share": 0.79},
                                     "v2": {"rps": 21.0, "errors": 1.0, "p99": 0.01, "share": 0.21}}},
                   "deployments": {"web": {**DEPLOYMENT, "status": "running", "paused": False,
                                           "step_ends_at": time.time() + 12}}})
    text = draw(picture)
    assert "1 service(s) · 1 deploying" in text
    assert "v1" in text and "80%" in text and "79.0%" in text and "21.0%" in text and "≤5ms" in text
    assert "127.0.0.1:7001 healthy · 3" in text and "127.0.0.1:7002 unhealthy · 0" in text
    assert "127.0.0.1:7003 draining · 2" in text
    assert "deploying v2 with canary (d-000007) running" in text
    assert "weights:  20%  50%  100%" in text
    assert "next step in 1" in text  # 12 s, give or take the time this test takes
    assert "analysis: passing: 0.0% 5xx over 40 requests" in text
    assert "steps: started (+0.0s) → weight (+1.0s)" in text
    assert "d-000006" in text and "rolling" in text

    picture.apply({"kind": "deploy", "service": "web", "deployment": DEPLOYMENT,
                   "event": {"event": "finished", "status": "rolled_back", "message": "canary v2 error rate",
                             "time": 103.0}})
    text = draw(picture)
    assert "last deploy v2 with canary (d-000007) rolled_back" in text and "next step" not in text
