"""Debian's `pebble` (an ACME test CA) and `pebble-challtestsrv` (its DNS: every name is 127.0.0.1) on
loopback ports, stopped by PID. Pebble validates HTTP-01 challenges on `http_port`: the proxy's plain
listener, so it really fetches them through Turnout. `scripts/ensure-pebble.sh` installs both."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.testing.plugin import free_port

from .certs import CertAuthority


@dataclass
class Pebble:
    directory: str  # the ACME directory URL
    management: str  # https://127.0.0.1:PORT of pebble's management API
    ca: CertAuthority  # signed pebble's own HTTPS certificate: the client's `ca_bundle`
    log: Path

    def root_pem(self) -> bytes:
        """The root pebble issues certificates under (made anew each run)."""
        context = ssl.create_default_context(cafile=str(self.ca.path))
        with urllib.request.urlopen(f"{self.management}/roots/0", context=context, timeout=10) as answer:
            return answer.read()


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:  # required, never skipped: `make test` installs it
        pytest.fail(f"{name} is not installed: run scripts/ensure-pebble.sh (apt-get install pebble)")
    return path


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    name = process.args[0]  # type: ignore[index]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} in {timeout}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running_pebble(workdir: Path, http_port: int) -> Iterator[Pebble]:
    pebble, challtestsrv = _binary("pebble"), _binary("pebble-challtestsrv")
    workdir.mkdir(parents=True, exist_ok=True)
    ca = CertAuthority.create(workdir, "Pebble listener test CA")
    chain, key = ca.leaf(["localhost"], ips=("127.0.0.1",))
    (workdir / "pebble.crt").write_bytes(chain)
    (workdir / "pebble.key").write_bytes(key)
    acme_port, management_port, dns_port, dns_management = (free_port() for _ in range(4))
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}", "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(workdir / "pebble.crt"), "privateKey": str(workdir / "pebble.key"),
        "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}
    (workdir / "pebble.json").write_text(json.dumps(config))
    log = workdir / "pebble.log"
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    processes: list[subprocess.Popen[bytes]] = []
    with log.open("ab") as out:
        try:
            dns = subprocess.Popen([challtestsrv, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                                    "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
                                    "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_management}"],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
            processes.append(dns)
            _wait_listening(dns_management, dns, log)
            server = subprocess.Popen([pebble, "-config", str(workdir / "pebble.json"), "-dnsserver",
                                       f"127.0.0.1:{dns_port}"], stdout=out, stderr=subprocess.STDOUT,
                                      env=env, cwd=workdir)
            processes.append(server)
            _wait_listening(acme_port, server, log)
            yield Pebble(f"https://127.0.0.1:{acme_port}/dir", f"https://127.0.0.1:{management_port}", ca,
                         log)
        finally:
            for process in reversed(processes):  # by PID, never by name
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
