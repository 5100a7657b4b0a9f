"""Passing descriptors for a hand-over (proxy/handover.py), the state dir's lock (controller/state_lock.py)
and what the two daemons compare (controller/handover.py). Real sockets: descriptors only exist there."""

from __future__ import annotations

import os
import socket

import pytest

from controller.handover import differences, route_differences
from controller.state_lock import StateDirInUse, StateLock
from proxy.handover import HandoverProtocolError, recv_fds, send_fds


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_a_listening_socket_passed_over_a_unix_socket_accepts_in_the_receiver(pair):
    sender, receiver = pair
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    send_fds(sender.fileno(), {"names": ["http"]}, [listener.fileno()])
    listener.close()  # the sender's copy goes: the socket lives on in the receiver
    payload, fds, rest = recv_fds(receiver)
    assert payload == {"names": ["http"]} and len(fds) == 1 and rest == b""
    received = socket.socket(fileno=fds[0])
    try:
        assert received.getsockname() == ("127.0.0.1", port)
        assert not os.get_inheritable(received.fileno())  # close-on-exec: no hook command inherits it
        received.settimeout(5)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            conn, _ = received.accept()
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()
    finally:
        received.close()


def test_several_descriptors_arrive_in_order_with_what_follows_the_frame(pair):
    sender, receiver = pair
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    send_fds(sender.fileno(), {"names": ["a", "b"]}, [w1, w2])
    sender.sendall(b"HTTP/1.1 200 OK\r\n")
    payload, fds, rest = recv_fds(receiver)
    rest += receiver.recv(100) if len(rest) < 17 else b""
    assert payload["names"] == ["a", "b"] and rest == b"HTTP/1.1 200 OK\r\n"
    os.write(fds[0], b"1")
    os.write(fds[1], b"2")
    assert os.read(r1, 1) == b"1" and os.read(r2, 1) == b"2"
    for fd in (r1, w1, r2, w2, *fds):
        os.close(fd)


def test_an_answer_without_a_frame_is_handed_back_to_be_read_as_one(pair):
    sender, receiver = pair
    sender.sendall(b'HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}')
    with pytest.raises(HandoverProtocolError) as caught:
        recv_fds(receiver)
    assert caught.value.data.startswith(b"HTTP/1.1 409")


def test_a_frame_cut_short_is_an_error_not_a_hang(pair):
    sender, receiver = pair
    sender.sendall(b"TOFD\x00\x00\x00\x10{")
    sender.shutdown(socket.SHUT_WR)
    with pytest.raises(HandoverProtocolError, match="closed before the frame ended"):
        recv_fds(receiver)


def test_a_second_owner_of_a_state_dir_is_refused_naming_the_first(tmp_path):
    lock = StateLock.acquire(tmp_path)
    try:
        with pytest.raises(StateDirInUse, match=rf"in use by a running turnout serve \(pid {os.getpid()}\).*"
                                                r"--takeover"):
            StateLock.acquire(tmp_path)
        assert StateLock.held(tmp_path) == str(os.getpid())
    finally:
        lock.release()
    assert StateLock.held(tmp_path) is None
    StateLock.acquire(tmp_path).release()  # free again once released


def test_the_passed_lock_stays_held_when_the_sender_closes_its_copy(tmp_path, pair):
    sender, receiver = pair
    lock = StateLock.acquire(tmp_path)
    send_fds(sender.fileno(), {"names": ["lock"]}, [lock.fd])
    _, fds, _ = recv_fds(receiver)
    lock.release()  # the old daemon lets go of its descriptor ...
    with pytest.raises(StateDirInUse):  # ... and the lock is still held, by the same open file
        StateLock.acquire(tmp_path)
    inherited = StateLock.inherited(fds[0], tmp_path)
    inherited.release()
    assert StateLock.held(tmp_path) is None


def test_differences_name_each_fact_and_both_values():
    ours = {"state_dir": "/s", "listen": "127.0.0.1:80", "tls_listen": None, "config_file": "/t.toml",
            "config_sha256": "aa"}
    assert differences(ours, dict(ours), 7) == []
    listen = differences(ours, {**ours, "listen": "127.0.0.1:81"}, 7)
    assert listen == ["proxy.listen: 127.0.0.1:80 in the running daemon (pid 7), 127.0.0.1:81 here"]
    edited = differences(ours, {**ours, "config_sha256": "bb"}, 7)
    assert edited == ["config file /t.toml changed since the running daemon (pid 7) read it"]
    tls = differences(ours, {**ours, "tls_listen": "0.0.0.0:443"}, 7)
    assert tls == ["proxy.tls.listen: (none) in the running daemon (pid 7), 0.0.0.0:443 here"]


def test_route_differences_show_the_running_table_beside_the_rebuilt_one():
    web = {"state": "active", "hosts": [], "path_prefix": "/", "pools": [["v1", 100, ["127.0.0.1:1"]]]}
    assert route_differences({"web": web}, {"web": dict(web)}) == []
    other = {**web, "pools": [["v1", 100, ["127.0.0.1:2"]]]}
    (line,) = route_differences({"web": web}, {"web": other})
    assert line.startswith("service web: ") and "127.0.0.1:2" in line and "127.0.0.1:1" in line
    assert route_differences({}, {"web": web})[0].endswith("null rebuilt here")
