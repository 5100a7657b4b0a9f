"""Reading systemd's sockets (proxy/socket_activation.py) on real descriptors: names, the unnamed order,
LISTEN_PID, the variables unset, and a clear error for each kind of descriptor that cannot serve. The
daemon under `systemd-socket-activate` is tried in tests/docker/test_socket_activation_live.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from controller.testing.plugin import CLI
from proxy import socket_activation as sa
from proxy.config import ProxyConfig
from proxy.tls.config import TlsConfig

ACTIVATE = shutil.which("systemd-socket-activate")

# A child that lays out the descriptors the test passes as 3, 4, ... (what systemd does) and prints
# what from_environment made of them, or the error.
CHILD = """
import json, os, sys
from proxy import socket_activation as sa
fds = [int(f) for f in sys.argv[1].split(",") if f]
for i, fd in enumerate(fds):
    os.dup2(fd, 100 + i)
for i in range(len(fds)):
    os.dup2(100 + i, sa.FIRST_FD + i)
env = dict(os.environ)
if env.get("LISTEN_PID") == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
try:
    got = sa.from_environment()
except sa.SocketActivationError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"sockets": {n: sa.address_of(s) for n, s in got.items()},
                      "left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
                      "cloexec": all(not s.get_inheritable() for s in got.values())}))
"""


def activate(sockets: list[socket.socket], names: str | None = None, pid: str = "self",
             count: int | None = None) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env.update(LISTEN_PID=pid, LISTEN_FDS=str(len(sockets) if count is None else count))
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    fds = [s.fileno() for s in sockets]
    out = subprocess.run([sys.executable, "-c", CHILD, ",".join(map(str, fds))], pass_fds=fds, env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def listening():
    made: list[socket.socket] = []

    def make(family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM, listen: bool = True):
        s = socket.socket(family, kind)
        s.bind("" if family == socket.AF_UNIX else ("127.0.0.1", 0))  # "": an abstract name of its own
        if listen and kind == socket.SOCK_STREAM:
            s.listen(8)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def test_named_sockets_are_taken_by_name_and_the_variables_unset(listening):
    https, http = listening(), listening()
    got = activate([https, http], names="https:http")
    assert got["sockets"] == {"https": f"127.0.0.1:{https.getsockname()[1]}",
                              "http": f"127.0.0.1:{http.getsockname()[1]}"}
    assert got["left"] == [] and got["cloexec"]


def test_unnamed_sockets_are_http_then_https(listening):
    first, second = listening(), listening()
    assert activate([first, second])["sockets"] == {"http": f"127.0.0.1:{first.getsockname()[1]}",
                                                    "https": f"127.0.0.1:{second.getsockname()[1]}"}
    # systemd's "unknown" for a socket unit without FileDescriptorName=, beside a named one
    assert activate([first, second], names="unknown:http")["sockets"]["https"] == \
        f"127.0.0.1:{first.getsockname()[1]}"


def test_sockets_for_another_process_are_ignored_and_unset(listening):
    got = activate([listening()], pid="1")
    assert got["sockets"] == {} and got["left"] == []


@pytest.mark.parametrize("kind, problem", [
    ("udp", "descriptor 3 (http): not a stream socket"),
    ("unix", "descriptor 3 (http): a unix socket"),
    ("not-listening", "descriptor 3 (http): a TCP socket that is not listening"),
    ("file", "descriptor 3 (http): not a socket"),
])
def test_a_descriptor_that_cannot_serve_is_named(listening, tmp_path, kind, problem):
    if kind == "file":
        with open(tmp_path / "f", "wb") as f:
            got = activate([f])  # type: ignore[list-item]
    else:
        sock = {"udp": lambda: listening(kind=socket.SOCK_DGRAM),
                "unix": lambda: listening(family=socket.AF_UNIX),
                "not-listening": lambda: listening(listen=False)}[kind]()
        got = activate([sock])
    assert problem in got["error"]


@pytest.mark.parametrize("names, problem", [
    ("http:admin", "descriptor 4 is named 'admin' (LISTEN_FDNAMES); Turnout takes 'http' and 'https'"),
    ("http:http", "descriptors 3 and 4 are both named 'http'"),
    ("http", "LISTEN_FDNAMES='http' names 1 descriptor(s) but LISTEN_FDS=2"),
])
def test_bad_names_are_refused(listening, names, problem):
    assert problem in activate([listening(), listening()], names=names)["error"]


def test_the_sockets_must_match_the_listeners_of_the_config(listening, tmp_path):
    http, https = listening(), listening()
    tls = TlsConfig(listen="127.0.0.1:8443", certs_dir=str(tmp_path))
    with pytest.raises(sa.SocketActivationError, match=r"the config has \[proxy.tls\] but systemd passed "
                       r"only descriptor .* \(http\): add a socket named 'https'"):
        sa.listening_config(ProxyConfig(tls=tls), {"http": http})
    with pytest.raises(sa.SocketActivationError,
                       match=r"named 'https', but the config has no \[proxy.tls\]"):
        sa.listening_config(ProxyConfig(), {"http": http, "https": https})
    with pytest.raises(sa.SocketActivationError, match="none named 'http'"):
        sa.listening_config(ProxyConfig(tls=tls), {"https": https})
    both = sa.listening_config(ProxyConfig(tls=tls), {"http": http, "https": https})
    assert both == replace(ProxyConfig(tls=replace(tls, listen=f"127.0.0.1:{https.getsockname()[1]}")),
                           listen=f"127.0.0.1:{http.getsockname()[1]}")


async def test_serve_refuses_a_datagram_socket_naming_it(tmp_path):
    """`ListenDatagram=` by mistake: `turnout serve` exits 2 naming the descriptor, before it listens."""
    assert ACTIVATE is not None, "systemd-socket-activate missing: scripts/ensure-systemd-socket-activate.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        ACTIVATE, "--datagram", "-l", f"127.0.0.1:{port}", "--fdname=http",
        *(["--setenv=PYTHONPATH"] if "PYTHONPATH" in env else []), "--",  # its child's env is fresh
        *CLI, "--state-dir", str(tmp_path / "state"), "serve", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(300):  # a datagram makes it exec turnout: sent until one arrives after its bind
                udp.sendto(b"x", ("127.0.0.1", port))
                try:
                    await asyncio.wait_for(asyncio.shield(process.wait()), 0.2)
                    break
                except TimeoutError:
                    continue
        out, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = out.decode(errors="replace")
    assert process.returncode == 2, text
    assert "socket activation: descriptor 3 (http): not a stream socket" in text, text
