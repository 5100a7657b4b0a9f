"""`turnout serve` as a real subprocess for tests: its own state dir, a free loopback port, extra
labels so the session cleanup removes its containers, and the CLI run against it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "controller.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, workdir: Path, labels: dict[str, str], config: str | None = None) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.labels = labels
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = workdir / "turnout.toml"
            self.config_path.write_text(config)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "serve.log"

    @property
    def env(self) -> dict[str, str]:
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items())
        return {**os.environ, "TURNOUT_CONTAINER_LABELS": labels}

    def start(self, timeout: float = 30.0) -> None:
        args = [*CLI, "--state-dir", str(self.state_dir), "serve", "--listen", f"127.0.0.1:{self.port}"]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"turnout serve exited with {self.process.returncode}:\n{self.log()}")
            if (self.state_dir / "admin.sock").exists() and self._answers():
                return
            time.sleep(0.05)
        raise AssertionError(f"turnout serve did not come up in {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
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

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `turnout ARGS` against this daemon and wait for it."""
        return subprocess.run([*CLI, "--state-dir", str(self.state_dir), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env, cwd=self.workdir)

    async def acli(self, *args: str, timeout: float = 120.0) -> tuple[int, str]:
        """The CLI without blocking the event loop (traffic keeps flowing meanwhile)."""
        process = await asyncio.create_subprocess_exec(
            *CLI, "--state-dir", str(self.state_dir), *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=self.workdir)
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
        return process.returncode or 0, out.decode(errors="replace")
