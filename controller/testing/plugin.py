"""Turnout's pytest plugin (entry point `turnout`): test that *your* app deploys without losing requests.

    def test_v2_rolls_out_without_loss(turnout):
        turnout.deploy("web", image="myapp:v1", port=8080, replicas=2)
        with turnout.traffic("web") as report:
            turnout.deploy("web", image="myapp:v2", strategy="canary", steps="50,100", step_pause="1s")
        assert report.failed == 0
        assert "v2" in report.versions

The `turnout` fixture runs a real `turnout serve` (its own state dir, an ephemeral loopback port),
labels every container it starts, and removes them all when the test ends. Options (pytest.ini):
`turnout_config` — a turnout.toml to serve with (optional).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "controller.cli"]
RUN_LABEL = "turnout.test-run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TurnoutDaemon:
    """`turnout serve` as a subprocess, and the CLI run against it."""

    def __init__(self, workdir: Path, labels: dict[str, str], config: str | Path | None = None) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.labels = labels
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path: Path | None = None
        if isinstance(config, str):
            self.config_path = workdir / "turnout.toml"
            self.config_path.write_text(config)
        elif isinstance(config, Path):
            self.config_path = config
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "serve.log"

    @property
    def env(self) -> dict[str, str]:
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return {**os.environ, "TURNOUT_CONTAINER_LABELS": labels}

    def serve_args(self) -> list[str]:
        args = [*CLI, "--state-dir", str(self.state_dir), "serve", "--listen", f"127.0.0.1:{self.port}"]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        return args

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = self.serve_args()
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnout serve exited with {self.process.returncode}:\n{self.log()}")
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"turnout serve did not come up in {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        """The proxy and the admin API both accept connections (the admin socket's file may be a killed
        daemon's, and the admin API starts last, after recovery)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
                admin.settimeout(0.2)
                admin.connect(str(self.state_dir / "admin.sock"))
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def cli(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run `turnout ARGS` against this daemon and wait for it."""
        return subprocess.run([*CLI, "--state-dir", str(self.state_dir), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env, cwd=self.workdir)

    async def acli(self, *args: str, timeout: float = 300.0) -> tuple[int, str]:
        """The CLI without blocking the event loop (traffic keeps flowing meanwhile)."""
        process = await asyncio.create_subprocess_exec(
            *CLI, "--state-dir", str(self.state_dir), *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.workdir)
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
        return process.returncode or 0, out.decode(errors="replace")

    def remove_containers(self) -> int:
        """Remove every container (slot) this daemon's owner label marks, on the engine its config
        names (the test's cleanup)."""
        from ..config.model import ConfigError, EngineConfig
        from ..config.reader import load_config
        from ..daemon import remove_containers_of

        try:
            engine = load_config(self.config_path).engine if self.config_path else EngineConfig()
        except ConfigError:  # a config the daemon refused: it started nothing on another engine
            engine = EngineConfig()
        return asyncio.run(remove_containers_of(self.state_dir, engine))


class DeployFailed(AssertionError):
    """`turnout deploy` exited non-zero; the message carries its output."""


@dataclass
class TrafficReport:
    """What the clients saw while the `traffic()` block ran (filled in when the block exits)."""

    sent: int = 0
    succeeded: int = 0
    failed: int = 0  # failed by the proxy: refused, reset, timed out, proxy-made 502/503/504
    truncated: int = 0
    app_errors: int = 0
    versions: set[str] = field(default_factory=set)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        """Requests a client lost: failed by the proxy or cut short."""
        return self.failed + self.truncated


class Turnout:
    """The handle the `turnout` fixture gives a test."""

    def __init__(self, daemon: TurnoutDaemon) -> None:
        self.daemon = daemon
        self.url = daemon.url

    def deploy(self, service: str, image: str, strategy: str | None = None, **options: Any) -> str:
        """`turnout deploy`; options are its flags (port=8080, replicas=2, steps="50,100", ...)."""
        args = ["deploy", service, "--image", image]
        if strategy:
            args += ["--strategy", strategy]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        result = self.daemon.cli(*args)
        if result.returncode != 0:
            raise DeployFailed(f"turnout {' '.join(args)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return result.stdout

    def status(self, service: str) -> dict[str, Any]:
        result = self.daemon.cli("status", service, "--json")
        if result.returncode != 0:
            raise AssertionError(result.stderr)
        return json.loads(result.stdout)["services"][service]

    @contextmanager
    def traffic(self, service: str | None = None, concurrency: int = 6, new_connections: float = 0.2,
                path: str = "/", max_seconds: float = 300.0) -> Iterator[TrafficReport]:
        """Send load through the proxy for as long as the block runs; the report fills in at exit.

        `service` is informational (the proxy routes by Host; a single service is the default)."""
        from ..rehearsal.loadgen import LoadConfig, run_load

        report = TrafficReport()
        config = LoadConfig(url=self.url, duration=max_seconds, concurrency=concurrency,
                            new_connections=new_connections, path=path, timeout=30.0)
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            asyncio.set_event_loop(loop)
            outcome["result"] = loop.run_until_complete(run_load(config, stop=stop))

        thread = threading.Thread(target=run, name="turnout-traffic", daemon=True)
        thread.start()
        time.sleep(0.5)  # traffic flows before the block starts changing things
        try:
            yield report
        finally:
            time.sleep(0.5)
            loop.call_soon_threadsafe(stop.set)
            thread.join(max_seconds + 60)
            loop.close()
        result = outcome["result"]
        report.sent, report.succeeded = result.sent, result.succeeded
        report.failed, report.truncated = result.failed_by_proxy, result.truncated
        report.app_errors = result.app_errors
        report.versions = {r.version for r in result.records if r.version}
        report.summary = result.summary()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("turnout_config", "turnout.toml for the `turnout` fixture (optional)", default="")


@pytest.fixture
def turnout(request: pytest.FixtureRequest) -> Iterator[Turnout]:
    """A running Turnout daemon for this test; its containers are removed afterwards."""
    config = request.config.getini("turnout_config") or None
    # A short path of its own: the admin socket's path must fit in 107 bytes, pytest's tmp paths may not.
    workdir = Path(tempfile.mkdtemp(prefix="turnout-"))
    labels = {RUN_LABEL: os.environ.get("TURNOUT_TEST_RUN") or uuid.uuid4().hex[:12]}
    daemon = TurnoutDaemon(workdir, labels, Path(request.config.rootpath, config) if config else None)
    try:
        daemon.start()
        yield Turnout(daemon)
    finally:
        if daemon.process is not None:
            daemon.stop()
        daemon.remove_containers()
        shutil.rmtree(workdir, ignore_errors=True)
