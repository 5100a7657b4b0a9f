"""`make demo`: start Turnout on the demo stack, deploy v1, then rehearse a canary to v2 under live load
and print what every client saw. Cleans up after itself unless --keep is given.

  python -m controller.rehearsal.demo [--keep] [--strategy canary|bluegreen|rolling|bigbang|all] [--rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from controller.config.model import SHIFTING

ROOT = Path(__file__).resolve().parents[2]  # the checkout: controller/rehearsal/demo.py
DEMO_CONFIG = ROOT / "compose" / "demo" / "turnout.toml"
STATE_DIR = ROOT / ".turnout-demo"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", "--state-dir", str(STATE_DIR), *args],
                          capture_output=True, text=True, timeout=120)


def _wait_serving(version: str, daemon: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            sys.exit(f"demo: turnout serve exited ({daemon.returncode}); its log:\n{log.read_text()[-3000:]}")
        result = _cli("status", "web", "--json")
        if result.returncode == 0:
            info = json.loads(result.stdout)["services"].get("web") or {}
            if (info.get("stable") or {}).get("version") == version and not info.get("deployment"):
                return
        time.sleep(0.3)
    sys.exit(f"demo: web did not serve {version} within {timeout:.0f}s; log: {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave Turnout and the containers running")
    parser.add_argument("--strategy", default="canary",
                        choices=[*SHIFTING, "all"])
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of the live load [200]")
    parser.add_argument("--duration", default="20s", help="how long the load runs at least [20s]")
    args = parser.parse_args(argv)

    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)  # a fresh journal: the demo always starts from nothing
    STATE_DIR.mkdir(parents=True)
    listen = "127.0.0.1:8000" if _port_free(8000) else f"127.0.0.1:{_free_port()}"
    dashboard = "127.0.0.1:8081" if _port_free(8081) else f"127.0.0.1:{_free_port()}"
    log = STATE_DIR / "serve.log"
    print(f"1. starting Turnout (proxy on {listen}, config {DEMO_CONFIG.relative_to(ROOT)}, "
          f"state {STATE_DIR.relative_to(ROOT)}/)", flush=True)
    with log.open("ab") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "--state-dir", str(STATE_DIR), "serve",
             "--config", str(DEMO_CONFIG), "--listen", listen, "--dashboard", dashboard],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        print("2. deploying the demo app v1 (2 replicas, from compose/demo/compose.yml)", flush=True)
        _wait_serving("v1", daemon, log)
        print(_cli("status", "web").stdout, flush=True)
        strategy = ["--all-strategies"] if args.strategy == "all" else ["--strategy", args.strategy]
        html = STATE_DIR / "rehearsal.html"
        print(f"3. rehearsing v1 -> v2 ({args.strategy}) under {args.rate:.0f} requests/s of live traffic",
              flush=True)
        url = _cli("dashboard").stdout.strip()
        if url:
            print(f"   watch it live: open {url} (the dashboard), or run `.venv/bin/turnout --state-dir "
                  f"{STATE_DIR.relative_to(ROOT)} status --watch`", flush=True)
        rehearse = subprocess.run(
            [sys.executable, "-m", "controller.cli", "--state-dir", str(STATE_DIR), "rehearse", "web",
             "--image", "turnout-testapp:v2", *strategy, "--rate", str(args.rate),
             "--duration", args.duration, "--html", str(html)], timeout=900)
        print("\n4. what the journal recorded:", flush=True)
        print(_cli("history", "web").stdout, flush=True)
        if args.keep:
            print(f"Turnout keeps running (pid {daemon.pid}); try `curl http://{listen}/`, the dashboard "
                  f"at http://{dashboard}/ and `.venv/bin/turnout --state-dir {STATE_DIR} status --watch`.\n"
                  f"Stop it with `kill {daemon.pid}`, then `make clean-containers`.")
            return rehearse.returncode
        return rehearse.returncode
    finally:
        if not args.keep:
            _shutdown(daemon)


def _shutdown(daemon: subprocess.Popen[bytes]) -> None:
    """Stop the daemon by its PID, then remove the demo's containers (by the demo owner's label)."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(5)
    from controller.daemon import remove_containers_of
    from proxy.log import configure

    configure(level="warning")  # the numbered steps say what happens; per-container events are in serve.log
    removed = asyncio.run(remove_containers_of(STATE_DIR))
    print(f"5. cleaned up: Turnout stopped, {removed} demo container(s) removed "
          f"(the report stays in {STATE_DIR.relative_to(ROOT)}/)")


if __name__ == "__main__":
    sys.exit(main())
