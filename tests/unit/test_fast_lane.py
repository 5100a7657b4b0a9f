"""The hot path's fast lanes do exactly what the full path does, only for what they may carry.

`ClientConnection._fast` takes a plain request (its head remembered, or just validated) straight to an
upstream connection;
`ClientConnection.answered_whole` ends an exchange whose whole answer came in one read under a known
head (and `LoggedClientConnection.answered_whole`, its copy for when the access log is on). Each is
checked against the full path (`_feed` → `_request` → `_route` → `_dispatch` → `_bind`; llhttp →
`response_started` → `upstream_complete`) on the same input: same bytes upstream and to the client, same
connection state, same counters (and, with the log on, the same access lines). Real connection objects,
fake transports (no sockets).
"""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest

from helpers.fake_transport import FakeTransport
from helpers.upstreams import LogCapture
from proxy import forward
from proxy.access_log import AccessLog
from proxy.config import ProxyConfig
from proxy.forward import ClientConnection, LoggedClientConnection
from proxy.http import RequestHeads, parse_request_head
from proxy.router import Router
from proxy.server import ProxyServer
from proxy.specs import ServiceSpec
from proxy.upstream_conn import UpstreamConnection

HEAD = b"GET /page?x=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t\r\n\r\n"
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
          b"Date: Tue, 01 Dec 2026 08:40:00 GMT\r\n\r\nok\n")
# What a request leaves on its client connection while it is in flight / once it is over.
STATE = ("busy", "http11", "keep_alive", "is_head", "websocket", "status", "attempts", "dkind",
         "reading_body", "head_sent", "resp_extra", "rpause", "_dispatch_needed", "task", "buf", "pending",
         "closed", "tunnel", "chunker", "body_left")


class Rig:
    """One proxy with one client connection and `idle` pooled connections to its first upstream."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pools: list[dict] | None = None, idle: int = 1,
                 others: tuple[dict, ...] = (), logged: bool = False, **service: object) -> None:
        config = ProxyConfig(listen="127.0.0.1:0", access_log=False)
        self.router = Router()
        pools = pools or [{"name": "main", "weight": 1, "upstreams": ["127.0.0.1:9001"]}]
        self.router.set_service(ServiceSpec.from_dict({"name": "web", "pools": pools, **service}))
        for other in others:  # more services on the same proxy
            self.router.set_service(ServiceSpec.from_dict(other))
        self.server = ProxyServer(self.router, config)
        self.server.loop = loop
        self.log: LogCapture | None = None
        if logged:  # the access log on, as `turnout serve` runs by default
            self.log = LogCapture(interval=3600)
            self.server.access_log = AccessLog(self.log.writer)
        self.upstream = self.router.upstreams[pools[0]["upstreams"][0]]
        self.conns = []
        for _ in range(idle):
            conn = UpstreamConnection(self.upstream)
            conn.connection_made(FakeTransport())  # type: ignore[arg-type]
            self.upstream.idle.append(conn)
            self.conns.append(conn)
        self.client = (LoggedClientConnection if logged else ClientConnection)(self.server)
        self.client_transport = FakeTransport()
        self.client.connection_made(self.client_transport)  # type: ignore[arg-type]

    def state(self) -> dict[str, object]:
        c = self.client
        s = {name: getattr(c, name) for name in STATE}
        s["task"] = c.task is not None  # connecting
        s["pending"] = None if c.pending is None else [_any_id(b) for b in c.pending]
        s["req.target"] = c.req.target if c.req is not None else None
        s["service"] = c.service.name if c.service is not None else None
        s["pool"] = c.pool.name if c.pool is not None else None
        s["upstream"] = c.upstream.address if c.upstream is not None else None
        s["upconn"] = self.conns.index(c.upconn) if c.upconn in self.conns else c.upconn
        s["deadline-t0"] = round(c.deadline - c.t0, 6) if c.dkind == forward.D_UPSTREAM else None
        pool_stats = self.router.table.services["web"].pools[0].stats
        s["inflight"] = (len(self.upstream.inflight), pool_stats.inflight)
        s["unrouted"] = list(self.router.metrics.unrouted)
        s["idle"] = [self.conns.index(x) for x in self.upstream.idle]
        if self.log is not None:  # what the access log will read
            s["log"] = (c.sent, c.lmark, _any_id(c.lhead), c.lpool and c.lpool.name, c.lup and c.lup.address,
                        c.lerror)
        return s

    def log_lines(self) -> list[dict]:
        """The access log's lines so far, without what differs between runs (times, request ids)."""
        assert self.log is not None
        lines = [json.loads(line) for line in self.log.lines()]
        for line in lines:
            for key in ("time", "timestamp", "duration_ms", "request_id"):
                line.pop(key)
        return lines

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        task = self.client.task
        if task is not None:
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))

    def upstream_bytes(self) -> list[bytes]:
        return [_any_id(b) for x in self.conns for b in x.transport.written]


def _any_id(head: bytes) -> bytes:
    return re.sub(rb"X-Request-Id: [^\r]*", b"X-Request-Id: *", head)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def heads(monkeypatch):
    """A fresh request-head store, so each test sees its heads first as misses."""
    store = RequestHeads()
    monkeypatch.setattr(forward, "HEADS", store)
    return store


def without_fast_lane(monkeypatch) -> None:
    monkeypatch.setattr(ClientConnection, "_fast", lambda self, head, cached: False)


def count_fast(monkeypatch) -> list[bytes]:
    taken: list[bytes] = []
    real = ClientConnection._fast

    def spy(self, head, cached):
        done = real(self, head, cached)
        if done:
            taken.append(head)
        return done
    monkeypatch.setattr(ClientConnection, "_fast", spy)
    return taken


@pytest.mark.parametrize("head", [
    HEAD,
    b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: abc\r\n\r\n",  # the client's id is kept
    b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\n\r\n",
    b"DELETE /item/7 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\n\r\n",
])
@pytest.mark.parametrize("remembered", [True, False], ids=["hit", "miss-then-hit"])
@pytest.mark.parametrize("logged", [False, True], ids=["", "logged"])
def test_the_fast_lane_leaves_what_the_full_path_leaves(loop, heads, monkeypatch, head, remembered, logged):
    full = Rig(loop, logged=logged)
    with monkeypatch.context() as m:
        without_fast_lane(m)
        full.client.data_received(head)  # a miss: validated and remembered
        full.client.upconn.data_received(ANSWER)
        full.client.data_received(head)  # a hit, still through the full path
        in_flight_full = full.state()
        bytes_full = full.upstream_bytes()

    if not remembered:
        heads.entries.clear()  # the first request is validated again, then takes the lane
    fast = Rig(loop, logged=logged)
    taken = count_fast(monkeypatch)
    fast.client.data_received(head)
    fast.client.upconn.data_received(ANSWER)
    fast.client.data_received(head)
    assert taken == [head, head]
    assert (head, fast.client.head_tag) in heads.entries
    assert fast.state() == in_flight_full
    assert fast.upstream_bytes() == bytes_full
    if logged:
        assert fast.log_lines() == full.log_lines()


def test_every_fast_request_gets_its_own_request_id(loop, heads):
    rig = Rig(loop)
    for _ in range(3):
        rig.client.data_received(HEAD)
        rig.client.upconn.data_received(ANSWER)
    ids = [re.search(rb"X-Request-Id: ([^\r]*)", b).group(1) for b in rig.conns[0].transport.written]
    assert len(ids) == 3 and len(set(ids)) == 3


@pytest.mark.parametrize("head", [
    b"HEAD / HTTP/1.1\r\nHost: app.test\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: app.test\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Turnout-Pool: main\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: app.test\r\nCookie: turnout-web=main\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n",
])
def test_requests_that_are_not_plain_never_take_the_fast_lane(head):
    assert parse_request_head(head).plain is False


@pytest.mark.parametrize("head", [HEAD, b"GET / HTTP/1.1\r\nHost: a\r\nCookie: session=1\r\n\r\n"])
def test_plain_requests(head):
    assert parse_request_head(head).plain is True


TWO_POOLS = [{"name": "blue", "weight": 50, "upstreams": ["127.0.0.1:9001"]},
             {"name": "green", "weight": 50, "upstreams": ["127.0.0.1:9002"]}]
TWO_UPSTREAMS = [{"name": "main", "weight": 1, "upstreams": ["127.0.0.1:9001", "127.0.0.1:9002"]}]
OTHER_HOST = {"name": "other", "hosts": ["other.test"],
              "pools": [{"name": "main", "weight": 1, "upstreams": ["127.0.0.1:9003"]}]}
# A rule sends the request to the weight-0 pool `main` (whose upstream has the idle connections); another
# rule's pool is absent, so it falls through; one that does not match the head changes nothing.
RULED = [{"name": "main", "weight": 0, "upstreams": ["127.0.0.1:9001"]},
         {"name": "other", "weight": 1, "upstreams": ["127.0.0.1:9002"]}]
RULES = [{"name": "absent", "match": {"query": {"x": "1"}}, "to": "v9"},
         {"name": "agent", "match": {"header": {"user-agent": "t"}, "query": {"x": "prefix:"}}, "to": "main"}]
NOT_MATCHING = [{"name": "other-agent", "match": {"header": {"User-Agent": "regex:[^t].*"}}, "to": "main"}]


@pytest.mark.parametrize("rig_args", [
    {"pools": TWO_POOLS},
    {"pools": TWO_UPSTREAMS},
    {"pools": TWO_UPSTREAMS, "balance": "least_outstanding"},
    {"idle": 0},
    {"hosts": ["app.test"], "others": (OTHER_HOST,)},
    {"path_prefix": "/page", "others": ({**OTHER_HOST, "hosts": []},)},
    {"pools": RULED, "rules": RULES},
    {"pools": [RULED[0] | {"weight": 1}, RULED[1]], "rules": NOT_MATCHING},
], ids=["two-pools", "two-upstreams", "least-outstanding", "no-idle-connection", "by-host", "by-path",
        "rule", "rule-not-matching"])
def test_draws_and_connects_as_the_full_path_does(loop, heads, monkeypatch, rig_args):
    """Each request: same pool, same upstream, same connection (or a connect), same state."""
    runs = []
    for lane in ("full", "fast"):
        random.seed(7)  # Service.choose draws from the global RNG
        rig = Rig(loop, **rig_args)
        with monkeypatch.context() as m:
            if lane == "full":
                without_fast_lane(m)
            taken = count_fast(m)
            states = []
            for _ in range(8):
                rig.client.data_received(HEAD)
                states.append(rig.state())
                if rig.client.upconn is None:  # connecting: that is as far as a socket-free test goes
                    break
                rig.client.upconn.data_received(ANSWER)
            rig.close(loop)
        rule_matches = {key: stats.matches for key, stats in rig.router.metrics.rules.items()}
        runs.append((states, rig.upstream_bytes(), len(taken), rule_matches))
    (full_states, full_bytes, _, full_matches), (fast_states, fast_bytes, fast_taken, fast_matches) = runs
    assert fast_states == full_states
    assert fast_bytes == full_bytes
    assert fast_matches == full_matches
    assert fast_taken == len(fast_states)  # the full run left the head remembered: the lane took each


@pytest.mark.parametrize("why, rig_args", [
    ("sticky cookie to set", {"sticky": True}),
    ("sticky, several pools", {"sticky": True, "pools": TWO_POOLS}),
    ("mirrored: requests are sampled on the full path", {"pools": TWO_POOLS, "mirror": {"to": "green"}}),
    ("no route: a path prefix that does not match", {"path_prefix": "/api"}),
    ("no route: another host", {"hosts": ["elsewhere.test"], "others": (OTHER_HOST,)}),
])
def test_the_fast_lane_declines_and_changes_nothing(loop, heads, monkeypatch, why, rig_args):
    rig = Rig(loop, **rig_args)
    before = rig.state()
    cached = heads.miss((HEAD, rig.client.head_tag), rig.client.peer, False, rig.client.suffix)
    assert rig.client._fast(HEAD, cached) is False, why
    assert rig.state() == before


def test_a_paused_service_is_not_taken_by_the_fast_lane(loop, heads, monkeypatch):
    rig = Rig(loop)
    taken = count_fast(monkeypatch)
    rig.client.data_received(HEAD)
    rig.client.upconn.data_received(ANSWER)
    rig.router.set_state("web", "paused")
    rig.client.data_received(HEAD)
    assert taken == [HEAD]  # the first request only
    task = rig.client.task
    assert rig.client.busy and rig.client.upconn is None and task is not None  # held
    task.cancel()
    loop.run_until_complete(asyncio.gather(task, return_exceptions=True))


def test_a_closed_idle_connection_is_skipped(loop, heads):
    rig = Rig(loop, idle=2)
    rig.client.data_received(HEAD)
    rig.client.upconn.data_received(ANSWER)  # remembered; the LIFO pool now ends with that connection
    used = rig.upstream.idle[-1]
    used.closed = True
    rig.client.data_received(HEAD)
    assert rig.client.upconn is not None and rig.client.upconn is not used
    assert used not in rig.upstream.idle


def test_two_heads_in_one_read_go_through_the_full_path_in_order(loop, heads, monkeypatch):
    rig = Rig(loop)
    rig.client.data_received(HEAD)
    rig.client.upconn.data_received(ANSWER)
    taken = count_fast(monkeypatch)
    rig.client.data_received(HEAD + HEAD)
    assert taken == []
    rig.client.upconn.data_received(ANSWER)  # the first answer; the second request goes out after it
    rig.client.upconn.data_received(ANSWER)
    assert len(rig.conns[0].transport.written) == 3
    assert b"".join(rig.client_transport.written).count(b"200 OK") == 3


@pytest.mark.parametrize("answer", [
    ANSWER,
    ANSWER.replace(b"Content-Length: 3", b"Content-Length: 0").replace(b"ok\n", b""),
])
def test_a_whole_known_answer_ends_the_exchange_as_the_parser_does(loop, heads, monkeypatch, answer):
    parsed, known = Rig(loop), Rig(loop)
    for rig in (parsed, known):
        rig.client.data_received(HEAD)
        rig.client.upconn.data_received(answer)  # first time: llhttp, the head becomes known
        rig.client.data_received(HEAD)
    with monkeypatch.context() as m:
        m.setattr("proxy.upstream_conn._KNOWN_ANSWERS", {})  # forgotten: through llhttp again
        parsed.client.upconn.data_received(answer)
    whole = count_calls(monkeypatch, ClientConnection, "answered_whole")
    known.client.upconn.data_received(answer)
    assert whole == [1]
    assert known.state() == parsed.state()
    assert known.client_transport.written == parsed.client_transport.written
    assert known.client.deadline - known.client.t_end == pytest.approx(parsed.client.deadline
                                                                        - parsed.client.t_end)
    for rig in (parsed, known):
        stats = rig.router.metrics.pool("web", "main")
        assert (stats.by_class[2], stats.inflight, sum(stats.buckets)) == (2, 0, 2)


def count_calls(monkeypatch, cls, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(cls, name)

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(cls, name, spy)
    return calls


@pytest.mark.parametrize("answer", [
    ANSWER,
    ANSWER.replace(b"Content-Length: 3", b"Content-Length: 0").replace(b"ok\n", b""),
])
def test_with_the_log_on_a_whole_answer_is_counted_and_logged_as_parsed(loop, heads, monkeypatch, answer):
    parsed, known = Rig(loop, logged=True), Rig(loop, logged=True)
    for rig in (parsed, known):
        rig.client.data_received(HEAD)
        rig.client.upconn.data_received(answer)
        rig.client.data_received(HEAD)
    with monkeypatch.context() as m:
        m.setattr("proxy.upstream_conn._KNOWN_ANSWERS", {})
        parsed.client.upconn.data_received(answer)
    whole = count_calls(monkeypatch, LoggedClientConnection, "answered_whole")
    known.client.upconn.data_received(answer)
    assert whole == [1]
    assert known.state() == parsed.state()
    assert known.client_transport.written == parsed.client_transport.written
    assert known.client.sent == sum(len(b) for b in known.client_transport.written)
    lines = known.log_lines()
    assert lines == parsed.log_lines() and len(lines) == 2
    assert [line["bytes_sent"] for line in lines] == [len(b) for b in known.client_transport.written]
