"""Every container `turnout serve` deploys gets the hardening of controller/hardening.py (a PIDs limit,
`no-new-privileges`, all capabilities dropped but a small set), a service may change it, and the test
app (busybox httpd, FROM scratch) serves under both: checked on the real engine, in HostConfig and in
what the kernel says about the container's PID 1."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

from controller.hardening import DEFAULT_CAP_ADD, DEFAULT_PIDS_LIMIT
from helpers.daemon import Daemon
from helpers.live import CONFIG, owner_containers, wait_for_version

pytestmark = pytest.mark.docker

# capabilities(7) bit numbers of DEFAULT_CAP_ADD.
BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6, "SETUID": 7,
        "NET_BIND_SERVICE": 10}

TIGHT = """
[services.tight]
image = "turnout-testapp:v1"
port = 8080
host = "tight.localhost"
health = { path = "/healthz", interval = "200ms", healthy = 1, start_timeout = "4s" }
cap_add = []
pids_limit = 64
mem_limit = "64m"
cpus = 0.5
security_opt = ["no-new-privileges:true"]
"""


def wait_serving(serve: Daemon, service: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = serve.cli("status", service, "--json")
        if result.returncode == 0:
            info = json.loads(result.stdout)["services"].get(service) or {}
            if (info.get("stable") or {}).get("version") and not info.get("deployment"):
                return
        time.sleep(0.2)
    raise AssertionError(f"{service} never served:\n{serve.log()}")


def get(url: str, host: str) -> tuple[int, str]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def kernel_view(container) -> dict[str, str]:
    """PID 1's capability sets and no_new_privs flag, as /proc says."""
    code, output = container.exec_run(["cat", "/proc/1/status"])
    assert code == 0, output
    return dict(line.split(":\t", 1) for line in output.decode().splitlines() if ":\t" in line)


def test_deployed_containers_carry_the_default_hardening_or_their_services_own(
        tmp_path, docker_client, test_run_labels):
    config = CONFIG.replace("[services.web]\n", '[services.web]\nhost = "web.localhost"\n', 1) + TIGHT
    serve = Daemon(tmp_path, test_run_labels, config)
    try:
        serve.start()
        wait_for_version(serve, "v1")
        wait_serving(serve, "tight")
        containers = {c.labels["turnout.service"]: c for c in owner_containers(docker_client, serve)}
        web, tight = containers["web"], containers["tight"]

        host = web.attrs["HostConfig"]
        assert host["PidsLimit"] == DEFAULT_PIDS_LIMIT
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["CapDrop"] == ["ALL"]
        assert {c.removeprefix("CAP_") for c in host["CapAdd"]} == set(DEFAULT_CAP_ADD)
        assert host["Privileged"] is False
        assert (host["Memory"], host["NanoCpus"]) == (0, 0)  # no default memory or CPU limit (SECURITY.md)
        kernel = kernel_view(web)
        assert int(kernel["CapEff"], 16) == sum(1 << BITS[c] for c in DEFAULT_CAP_ADD)  # NET_RAW & co gone
        assert int(kernel["CapBnd"], 16) == int(kernel["CapEff"], 16)  # nothing left to regain
        assert kernel["NoNewPrivs"] == "1"

        host = tight.attrs["HostConfig"]
        assert (host["PidsLimit"], host["CapDrop"], host["CapAdd"] or []) == (64, ["ALL"], [])
        assert host["SecurityOpt"] == ["no-new-privileges:true"]
        assert (host["Memory"], host["NanoCpus"]) == (64 * 1024 * 1024, 500_000_000)
        assert int(kernel_view(tight)["CapEff"], 16) == 0  # the test app serves with no capability at all

        for name in ("web.localhost", "tight.localhost"):  # both answer through the proxy
            assert get(serve.url, name) == (200, "v1\n")
    finally:
        code = serve.stop()
        owner_containers(docker_client, serve, remove=True)
    assert code == 0, serve.log()
