"""The real daemon's admin API access: a unix socket 0600 in a 0700 state dir, no browser requests."""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest

from helpers.daemon import Daemon

PAUSE = b"POST /v1/services/nope/pause HTTP/1.1\r\nHost: turnout\r\n"


def admin(path: str, request: bytes) -> tuple[int, bytes]:
    """One raw HTTP/1.1 exchange over the admin unix socket: (status, whole answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    answer = b"".join(chunks)
    return int(answer.split(b" ", 2)[1]), answer


@pytest.mark.docker
def test_admin_socket_is_private_and_refuses_browsers(tmp_path, docker_client, test_run_labels):
    serve = Daemon(tmp_path, test_run_labels)
    serve.start()
    try:
        sock = serve.state_dir / "admin.sock"
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert os.stat(sock).st_mode & 0o777 == 0o600
        assert os.stat(serve.state_dir).st_mode & 0o777 == 0o700
        path = str(sock)
        # The control: a plain read works, so the refusals below are the guard's doing.
        status, _ = admin(path, b"GET /v1/table HTTP/1.1\r\nHost: turnout\r\nConnection: close\r\n\r\n")
        assert status == 200
        status, answer = admin(path, b"GET /v1/table HTTP/1.1\r\nHost: turnout\r\nOrigin: http://evil.test\r\n"
                                     b"Connection: close\r\n\r\n")
        assert status == 403 and b"Origin" in answer
        # A change without X-Turnout-Client (what a cross-site form could send) is refused ...
        status, answer = admin(path, PAUSE + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert status == 403 and b"X-Turnout-Client" in answer
        # ... also with the header but an Origin too ...
        status, _ = admin(path, PAUSE + b"X-Turnout-Client: t\r\nOrigin: http://evil.test\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert status == 403
        # ... while with the header alone it reaches the handler (unknown service: 404, not 403).
        status, _ = admin(path, PAUSE + b"X-Turnout-Client: t\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
        assert status == 404
    finally:
        code = serve.stop()
    assert code == 0, serve.log()


@pytest.mark.docker
def test_a_bad_version_is_refused_with_400_from_the_api_and_the_cli(tmp_path, docker_client, test_run_labels):
    """Issue 18: a CR/LF in the deploy's version put headers on sticky responses and broke /metrics."""
    serve = Daemon(tmp_path, test_run_labels)
    serve.start()
    try:
        path = str(serve.state_dir / "admin.sock")
        body = json.dumps({"service": "web", "image": "turnout-test/app:v1", "flags": {"port": 8080},
                           "version": "v2\r\nX-Injected: 1"}).encode()
        status, answer = admin(path, b"POST /v1/deploy HTTP/1.1\r\nHost: turnout\r\nX-Turnout-Client: t\r\n"
                                     b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                                     b"Connection: close\r\n\r\n%s" % (len(body), body))
        error = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert status == 400 and error["field"] == "version", answer
        assert "is not a valid version" in error["error"] and "X-Injected" in error["error"]
        cli = serve.cli("deploy", "web", "--image", "turnout-test/app:v1", "--port", "8080",
                        "--version", "v2\n", timeout=60)
        assert cli.returncode != 0 and "version" in cli.stderr + cli.stdout and "not a valid" in cli.stderr
        history = serve.cli("history", "web", "--json", timeout=60)
        assert json.loads(history.stdout)["deployments"] == []  # nothing started, nothing journalled
    finally:
        code = serve.stop()
    assert code == 0, serve.log()
