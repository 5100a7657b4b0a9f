"""The CLI's exit codes as its help promises them: 2 for bad usage or config, also when the CLI itself
finds the problem; and a closed stdout (`turnout ... | head -1`) ends it quietly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from controller.cli import main

CLI = [sys.executable, "-m", "controller.cli"]


def test_a_usage_error_found_by_the_cli_exits_2(tmp_path, capsys):
    code = main(["--state-dir", str(tmp_path), "rehearse", "web", "--image", "app:v2",
                 "--new-connections", "2"])
    assert code == 2
    assert "--new-connections" in capsys.readouterr().err


def test_a_bad_config_file_exits_2_naming_the_key_and_file(tmp_path):
    config = tmp_path / "turnout.toml"
    config.write_text('[services.web]\nport = "eighty"\n')
    done = subprocess.run([*CLI, "--state-dir", str(tmp_path / "state"), "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "services.web.port" in done.stderr and str(config) in done.stderr


def test_a_closed_stdout_ends_the_cli_quietly(tmp_path):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: every write fails
    try:
        done = subprocess.run([*CLI, "deploy", "--help"], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    finally:
        os.close(write)
    assert done.stderr == ""  # no traceback, no "Exception ignored" at exit
    assert done.returncode == 141  # 128 + SIGPIPE, what a tool ended by the closed pipe reports


def test_a_bad_listen_flag_exits_2_naming_the_flag(tmp_path):
    done = subprocess.run([*CLI, "--state-dir", str(tmp_path / "state"), "serve", "--listen", "bad"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--listen" in done.stderr and "'bad' is not host:port" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_listen_address_that_cannot_be_bound_exits_2_saying_why(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run([*CLI, "--state-dir", str(tmp_path / "state"), "serve", "--listen", listen,
                               "--loop", "asyncio"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"turnout: cannot listen on {listen}: " in done.stderr and "Traceback" not in done.stderr
