"""`turnout apply` against the real engine: a file applied twice restarts nothing (the spec hash on the
containers survives a daemon restart), a tag rebuilt under the same name is a release, --prune removes
what apply created, a deploy in progress is refused by name, `serve --watch` follows the file."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from helpers.daemon import Daemon
from helpers.live import apply, configless_daemon, owner_containers, status

pytestmark = pytest.mark.docker

SERVICE = """
[services.web]
image = "{image}"
port = 8080
replicas = {replicas}
host = "web.localhost"
verify = "0s"
drain_timeout = "2s"
strategy = "canary"
[services.web.health]
interval = "200ms"
healthy = 1
start_timeout = "10s"
[services.web.canary]
steps = [50, 100]
step_pause = "{pause}"
"""
API = """
[services.api]
image = "turnout-testapp:v1"
port = 8080
host = "api.localhost"
verify = "0s"
[services.api.health]
interval = "200ms"
healthy = 1
"""


def file(image: str = "turnout-testapp:v1", replicas: int = 2, pause: str = "200ms",
         api: bool = False) -> str:
    return SERVICE.format(image=image, replicas=replicas, pause=pause) + (API if api else "")


@pytest.fixture
def serve(tmp_path, docker_client, test_run_labels):
    with configless_daemon(tmp_path, test_run_labels, docker_client) as daemon:
        daemon.start()
        yield daemon


@pytest.fixture
def rebuilt_tag(docker_client):
    """A tag of the test image that a test moves (a rebuild under the same name); untagged after."""
    tag = f"turnout-testapp:apply-{uuid.uuid4().hex[:8]}"
    yield tag
    try:
        docker_client.images.remove(tag)
    except Exception:  # the test may not have made it
        pass


def ids(docker_client, serve: Daemon, service: str = "web") -> set[str]:
    return {c.id for c in owner_containers(docker_client, serve)
            if c.labels.get("turnout.service") == service and c.status == "running"}


def test_apply_twice_restarts_nothing_and_a_rebuilt_tag_is_a_release(serve, docker_client, rebuilt_tag):
    image = docker_client.images.get("turnout-testapp:v1")
    image.tag(rebuilt_tag)
    dry = apply(serve, file(rebuilt_tag), "--dry-run")
    assert dry.returncode == 1 and dry.stdout.startswith("+ web: image turnout-testapp:apply-"), dry
    applied = apply(serve, file(rebuilt_tag))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    first = ids(docker_client, serve)
    assert len(first) == 2
    labels = {c.labels.get("turnout.spec-hash") for c in owner_containers(docker_client, serve)}
    assert len(labels) == 1 and labels.pop().startswith("sha256:")

    serve.stop()
    serve.start()  # the spec hash is read back from the containers' labels
    again = apply(serve, file(rebuilt_tag), "--dry-run", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["changed"] is False, again
    assert apply(serve, file(rebuilt_tag)).returncode == 0
    assert ids(docker_client, serve) == first  # nothing restarted
    history = json.loads(serve.cli("history", "web", "--json").stdout)["deployments"]
    assert len(history) == 1, history

    docker_client.images.get("turnout-testapp:v2").tag(rebuilt_tag)  # rebuilt under the same tag
    dry = apply(serve, file(rebuilt_tag), "--dry-run")
    assert dry.returncode == 1 and "rebuilt: a new image ID under the same tag" in dry.stdout, dry
    applied = apply(serve, file(rebuilt_tag))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert not ids(docker_client, serve) & first and len(ids(docker_client, serve)) == 2
    assert web_body(serve) == "v2"


def web_body(serve: Daemon) -> str:
    """What the proxy answers for web's `/` (the test app answers its version)."""
    import urllib.request

    request = urllib.request.Request(serve.url + "/", headers={"Host": "web.localhost"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode().strip()


def test_scale_prune_and_a_deploy_in_progress(serve, docker_client):
    assert apply(serve, file(api=True)).returncode == 0
    web = ids(docker_client, serve)
    scaled = apply(serve, file(replicas=3, api=True))
    assert scaled.returncode == 0 and "~ web: replicas 2 -> 3" in scaled.stdout, scaled.stdout
    assert web < ids(docker_client, serve) and len(ids(docker_client, serve)) == 3

    # A deploy waiting for promote: apply refuses it by name (exit 2), and --wait waits for it.
    started = serve.cli("deploy", "web", "--image", "turnout-testapp:v2", "--step-pause", "manual",
                        "--detach", "--json")
    assert started.returncode == 0, started.stderr
    deployment = json.loads(started.stdout)["id"]
    refused = apply(serve, file(replicas=3))
    assert refused.returncode == 2 and deployment in refused.stderr, refused
    assert ids(docker_client, serve, "api")  # nothing changed
    assert serve.cli("abort", "web").returncode == 0

    pruned = apply(serve, file(replicas=3), "--prune", "--wait")
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "- api: prune" in pruned.stdout
    assert not ids(docker_client, serve, "api") and len(ids(docker_client, serve)) == 3
    assert "api" not in json.loads(serve.cli("status", "--json").stdout)["services"]


def test_serve_watch_applies_the_file_when_it_changes(tmp_path, docker_client, test_run_labels):
    config = tmp_path / "turnout.toml"
    config.write_text(file(replicas=1))
    daemon = Daemon(tmp_path, test_run_labels, config)
    daemon.extra_args = ("--watch",)
    try:
        daemon.start()
        wait_until(lambda: len(ids(docker_client, daemon)) == 1, daemon)
        config.write_text(file(replicas=2))
        wait_until(lambda: len(stable(daemon).get("containers", ())) == 2, daemon)
        config.write_text("[services.web\nbroken")  # refused and logged; nothing changes
        wait_until(lambda: "apply.watch_refused" in daemon.log(), daemon)
        assert len(ids(docker_client, daemon)) == 2
        config.write_text(file(image="turnout-testapp:v2", replicas=2))
        wait_until(lambda: stable(daemon).get("version") == "v2", daemon)
    finally:
        daemon.stop()
        owner_containers(docker_client, daemon, remove=True)


def stable(daemon: Daemon) -> dict:
    """The serving release, {} while the first deploy is still under way."""
    return status(daemon)["stable"] or {}


def wait_until(predicate, daemon: Daemon, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout}s:\n{daemon.log()}")


def test_http_and_exec_hooks_reach_the_new_set(serve):
    """pre_traffic's GET goes through the preview route to the NEW set (the answer's body says which
    version answered), exec runs inside a new container, and a failing GET keeps the old version."""
    base = file(replicas=1)
    assert apply(serve, base).returncode == 0
    hooks = ('[services.web.hooks]\npre_traffic = { http = "/version" }\n'
             'post_switch = { exec = ["cat", "/www/version"] }\n')
    passed = apply(serve, file("turnout-testapp:v2", replicas=1) + hooks)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "pre_traffic http: passed, HTTP 200 for GET /version" in passed.stdout, passed.stdout
    assert "post_switch exec: passed, exit 0" in passed.stdout and "| v2" in passed.stdout, passed.stdout

    failing = '[services.web.hooks]\npre_traffic = { http = "/cgi-bin/fail" }\n'
    failed = apply(serve, file("turnout-testapp:v3", replicas=1) + failing)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "HTTP 500 for GET /cgi-bin/fail" in failed.stdout and "| v3 fail" in failed.stdout, failed.stdout
    assert status(serve)["stable"]["version"] == "v2" and web_body(serve) == "v2"
