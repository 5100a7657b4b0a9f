"""The access log's options in config, and its lines made without sockets: fields, format, escaping of
what clients control (valid JSON whatever they send), nginx's combined format, sampling."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

from controller.config.model import ConfigError
from controller.config.reader import load_config, parse_config
from helpers.upstreams import LogCapture
from proxy.__main__ import main
from proxy.access_log import FIELDS, AccessLog, clf_text, format_time, json_text
from proxy.config import ProxyConfig
from proxy.errors import ValidationError
from proxy.http import RequestHead, parse_request_head
from proxy.router import Router
from proxy.specs import ServiceSpec


def write_config(tmp_path, proxy: str):
    path = tmp_path / "turnout.toml"
    path.write_text("[proxy]\n" + textwrap.dedent(proxy))
    return path


# ------------------------------------------------------------------ options
def test_the_access_log_is_on_by_default_for_the_daemon_in_json_every_request():
    for config in (ProxyConfig(), parse_config({}).proxy):
        assert (config.access_log, config.access_log_format, config.access_log_sample) == (True, "json", 1.0)


@pytest.mark.parametrize("value", [True, False])
def test_turnout_toml_proxy_table_switches_the_access_log(tmp_path, value):
    path = write_config(tmp_path, f"access_log = {str(value).lower()}\n")
    assert load_config(path).proxy.access_log is value


def test_a_path_is_a_file_beside_the_config_and_its_format_and_sample(tmp_path):
    (tmp_path / "logs").mkdir()
    path = write_config(tmp_path, """
        access_log = "logs/access.log"
        access_log_format = "combined"
        access_log_sample = 0.1
    """)
    proxy = load_config(path).proxy
    assert proxy.access_log == str(tmp_path / "logs" / "access.log")
    assert (proxy.access_log_format, proxy.access_log_sample) == ("combined", 0.1)


@pytest.mark.parametrize(("line", "key", "problem"), [
    ("access_log = 1", "proxy.access_log", "must be true, false or a file path"),
    ('access_log = ""', "proxy.access_log", "must be true, false or a file path"),
    ('access_log = "missing/access.log"', "proxy.access_log", "does not exist"),
    ('access_log = "."', "proxy.access_log", "is a directory"),
    ('access_log_format = "xml"', "proxy.access_log_format", "must be one of json, combined"),
    ("access_log_sample = 0", "proxy.access_log_sample", "greater than 0"),
    ("access_log_sample = 1.5", "proxy.access_log_sample", "at most 1.0"),
    ('access_log_sample = "10%"', "proxy.access_log_sample", "must be a number"),
])
def test_a_bad_access_log_option_is_an_error_naming_key_and_file(tmp_path, line, key, problem):
    path = write_config(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.key, err.value.source) == (key, path)
    assert problem in err.value.problem


@pytest.mark.parametrize("options", [{"access_log": 0}, {"access_log": " "},
                                     {"access_log_format": "clf"}, {"access_log_sample": 0.0},
                                     {"access_log_sample": True}])
def test_proxy_config_refuses_bad_values_itself(options):
    with pytest.raises(ValidationError) as err:
        ProxyConfig(**options)
    assert err.value.key == next(iter(options))


def test_standalone_proxy_help_documents_the_switch_default_off(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--access-log, --no-access-log" in out and "default: off" in out


# ------------------------------------------------------------------ the pieces
def test_fields_are_fixed_and_ordered():
    assert FIELDS == ("time", "client", "method", "path", "host", "status", "bytes_sent", "duration_ms",
                      "service", "pool", "upstream", "request_id", "error")


def test_format_time_is_utc_iso_with_milliseconds():
    assert format_time(0.25) == "1970-01-01T00:00:00.250Z"
    assert format_time(86400 + 3661.75) == "1970-01-02T01:01:01.750Z"
    assert format_time(86400 + 3661.5) == "1970-01-02T01:01:01.500Z"  # the cached second is reused
    assert format_time(86400 + 3662.0) == "1970-01-02T01:01:02.000Z"


HOSTILE = ['a"b', "a\\b", "tab\there", "nul\x00", "esc\x1b[31m", "del\x7f", "é", "\xff\xfe", "\u2028",
           'x", "status": 999, "y": "', "\\u0041", "{}\n{}", ""]


@pytest.mark.parametrize("text", HOSTILE)
def test_json_text_is_what_json_writes_between_the_quotes(text):
    inside = json_text(text)
    assert inside.isascii() and all(" " <= c <= "~" for c in inside)
    assert json.loads(f'"{inside}"') == text
    assert inside == json.dumps(text)[1:-1]


def test_json_text_passes_plain_printable_ascii_as_it_is():
    text = "/api/v1/items-42_x.json;a=b~!$&'()*+,:@"
    assert json_text(text) is text


@pytest.mark.parametrize(("text", "escaped"), [
    ('a"b', "a\\x22b"), ("a\\b", "a\\x5Cb"), ("t\tx", "t\\x09x"), ("é", "\\xE9"), ("ok /x", "ok /x"),
])
def test_clf_text_escapes_as_nginx_does(text, escaped):
    assert clf_text(text) == escaped


# ------------------------------------------------------------------ whole lines
class Exchange:
    """The fields AccessLog.emit reads off a client connection."""

    def __init__(self, router: Router, req: RequestHead | None, head: bytes = b"", status: int = 200,
                 sent: int = 100, peer: bytes = b"192.0.2.7", error: str = "") -> None:
        self.router = router
        service = router.table.services["web"]
        self.service = service if req is not None else None
        self.req = req
        self.t0 = time.monotonic() - 0.0123
        self.t_end = self.t0 + 0.0123
        self.peer = peer
        self.status = status
        self.sent, self.lmark = sent, 0
        self.lhead = head
        self.lpool = service.pools[0] if req is not None else None
        self.lup = self.lpool.upstreams[0] if self.lpool is not None else None
        self.lerror = error
        self.lsame: tuple | None = None
        self.lparts: tuple = ()

    def again(self, head: bytes, status: int = 200, sent: int = 100, error: str = "") -> Exchange:
        """The next exchange on this connection (its log fields set as the proxy sets them)."""
        service = self.router.table.services["web"]
        self.service, self.lpool = service, service.pools[0]
        self.lup = self.lpool.upstreams[0]
        self.lhead, self.status, self.lerror = head, status, error
        self.sent += sent
        return self


@pytest.fixture
def router() -> Router:
    router = Router()
    router.set_service(ServiceSpec.from_dict({"name": "web", "pools": [
        {"name": "blue", "weight": 1, "upstreams": ["127.0.0.1:9001"]}]}))
    return router


def emitted(fmt: str, *exchanges: Exchange, sample: float = 1.0, errors: tuple[str, ...] = ()) -> list[str]:
    capture = LogCapture()
    log = AccessLog(capture.writer, fmt, sample)
    for i, exchange in enumerate(exchanges):
        log.emit(exchange, errors[i] if i < len(errors) else "")
    lines = capture.lines()
    capture.writer.close()
    return lines


def test_a_json_line_has_every_field_in_order_and_the_exchange_values(router):
    head = b"GET /items?secret=1 HTTP/1.1\r\nHost: App.Test:8000\r\n\r\n"
    upstream_head = b"GET /items?secret=1 HTTP/1.1\r\nHost: App.Test:8000\r\nX-Request-Id: abc123-2a\r\n\r\n"
    before = time.time()
    [line] = emitted("json", Exchange(router, parse_request_head(head), upstream_head, sent=321))
    event = json.loads(line)
    assert list(event) == ["event", *FIELDS, "level", "timestamp"]
    assert event == {**event, "event": "http.access", "client": "192.0.2.7", "method": "GET",
                     "path": "/items", "host": "app.test:8000", "status": 200, "bytes_sent": 321,
                     "duration_ms": 12.3, "service": "web", "pool": "blue", "upstream": "127.0.0.1:9001",
                     "request_id": "abc123-2a", "error": "", "level": "info"}
    earliest, latest = format_time(before - 0.0123 - 0.002), format_time(time.time())
    assert earliest <= event["time"] <= event["timestamp"] <= latest


def test_hostile_strings_make_valid_json_lines_with_the_exact_values(router):
    """What validation lets through from clients (quotes and backslashes in paths, any visible bytes in
    X-Request-Id), and what it does not (controls, non-ASCII: the log must not depend on it)."""
    wire = parse_request_head(b'GET /a"b\\c HTTP/1.1\r\nHost: x\r\nX-Request-Id: q"\\\xff\tz\r\n\r\n')
    odd = RequestHead(b"G\x01T", b"/", True)
    odd.path = "/\x00\x1f\x7f\xe9\"\\\n"
    odd.host_raw = "h\x00\"\\\xe9".encode("latin-1")
    odd.request_id = True
    upstream_head = b"GET / HTTP/1.1\r\nX-Request-Id:  \x00\"\\\x7f\xe9 \t\r\n\r\n"
    wire_head = b'GET /a"b\\c HTTP/1.1\r\nX-Request-Id: q"\\\xff\tz\r\n\r\n'
    lines = emitted("json", Exchange(router, wire, wire_head), Exchange(router, odd, upstream_head))
    first, second = (json.loads(line) for line in lines)
    assert all(line.isascii() and "\n" not in line for line in lines)
    assert (first["path"], first["request_id"]) == ('/a"b\\c', 'q"\\\xff\tz')
    assert (second["method"], second["path"], second["host"]) == ("G\x01T", "/\x00\x1f\x7f\xe9\"\\\n",
                                                                  "h\x00\"\\\xe9")
    assert second["request_id"] == "\x00\"\\\x7f\xe9"


def test_an_exchange_refused_before_its_head_was_understood(router):
    [line] = emitted("json", Exchange(router, None, status=400, sent=211, error="bad-request"))
    event = json.loads(line)
    assert (event["method"], event["path"], event["host"], event["request_id"]) == ("", "", "", "")
    assert (event["status"], event["error"], event["service"]) == (400, "bad-request", "")
    assert event["duration_ms"] == 0.0


def test_combined_is_nginx_format_with_its_escaping(router):
    head = b'GET /p"q?x=1 HTTP/1.1\r\nHost: a\r\nReferer: http://r/\r\nUser-Agent: curl/8 "x"\r\n\r\n'
    bare = b"GET / HTTP/1.0\r\n\r\n"
    lines = emitted("combined", Exchange(router, parse_request_head(head), head + b"", sent=77),
                    Exchange(router, parse_request_head(bare), bare, status=404, sent=9),
                    Exchange(router, None, status=400, sent=211))
    stamp = time.strftime("%d/%b/%Y:%H:%M", time.gmtime())
    first, second, third = lines
    assert first.startswith(f"192.0.2.7 - - [{stamp}")
    assert first.endswith(' +0000] "GET /p\\x22q HTTP/1.1" 200 77 "http://r/" "curl/8 \\x22x\\x22"')
    assert second.endswith(' +0000] "GET / HTTP/1.0" 404 9 "-" "-"')
    assert third.endswith(' +0000] "-" 400 211 "-" "-"')


def test_sampling_keeps_that_share_of_2xx_evenly_and_every_error(router):
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: p-1\r\n\r\n"
    ok = [Exchange(router, req, head, status=200) for _ in range(100)]
    lines = emitted("json", *ok, sample=0.1)
    assert len(lines) == 10
    mixed = [Exchange(router, req, head, status=s) for s in (204, 301, 404, 500, 502, 200, 200)]
    errors = ("", "", "", "", "upstream-closed", "cut", "client-closed")
    kept = [json.loads(line) for line in emitted("json", *mixed, sample=0.01, errors=errors)]
    # 2xx: the first of a run is kept; 3xx, 4xx, 5xx and every exchange with an error always.
    assert [(e["status"], e["error"]) for e in kept] == [
        (204, ""), (301, ""), (404, ""), (500, ""), (502, "upstream-closed"), (200, "cut"),
        (200, "client-closed")]


def test_remembered_parts_follow_what_changed_between_exchanges(router):
    req = parse_request_head(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    head = b"GET /a HTTP/1.1\r\nHost: a\r\nX-Request-Id: p-1\r\n\r\n"
    first = Exchange(router, req, head)
    router.set_weights("web", {"blue": 1})  # a new snapshot: new service and pool objects
    second = Exchange(router, req, head.replace(b"p-1", b"p-2"))
    router.set_service(ServiceSpec.from_dict({"name": "web", "pools": [
        {"name": "green", "weight": 1, "upstreams": ["127.0.0.1:9002"]}]}))
    third = Exchange(router, req, head.replace(b"p-1", b"p-3"))
    events = [json.loads(line) for line in emitted("json", first, second, third)]
    assert [(e["pool"], e["upstream"], e["request_id"]) for e in events] == [
        ("blue", "127.0.0.1:9001", "p-1"), ("blue", "127.0.0.1:9001", "p-2"),
        ("green", "127.0.0.1:9002", "p-3")]


def test_remembered_parts_are_forgotten_each_second_so_old_snapshots_are_not_kept(router, monkeypatch):
    import proxy.access_log as access_log

    clock = [1_764_612_128_000_000_000]
    monkeypatch.setattr(access_log, "_wall_ns", lambda: clock[0])
    capture = LogCapture()
    log = AccessLog(capture.writer)
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: p-1\r\n\r\n"
    for weight in range(2, 7):  # five swaps within one second: five snapshots' routes remembered
        router.set_weights("web", {"blue": weight})
        log.emit(Exchange(router, req, head), "")
    assert len(log._routes) == 5
    clock[0] += 1_000_000_000
    log.emit(Exchange(router, req, head), "")
    assert len(log._routes) == 1 and len(log._requests) == 1  # only what the new second used
    assert len(capture.lines()) == 6
    capture.writer.close()


def test_a_connections_next_line_reuses_its_last_ones_texts_only_where_nothing_changed(router):
    req = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: p-%d\r\n\r\n"
    capture = LogCapture()
    log = AccessLog(capture.writer)
    c = Exchange(router, req, head % 1)
    log.emit(c, "")
    log.emit(c.again(head % 2), "")  # the same but for the request id
    log.emit(c.again(head % 3, sent=99), "")
    log.emit(c.again(head % 4, status=404), "")
    log.emit(c.again(head % 5, status=502, error="upstream-closed"), "")
    router.set_service(ServiceSpec.from_dict({"name": "web", "pools": [
        {"name": "green", "weight": 1, "upstreams": ["127.0.0.1:9002"]}]}))
    log.emit(c.again(head % 6), "")
    log.emit(c.again(head % 7), "cut")
    events = [json.loads(line) for line in capture.lines()]
    capture.writer.close()
    assert [(e["request_id"], e["status"], e["bytes_sent"], e["pool"], e["error"]) for e in events] == [
        ("p-1", 200, 100, "blue", ""), ("p-2", 200, 100, "blue", ""), ("p-3", 200, 99, "blue", ""),
        ("p-4", 404, 100, "blue", ""), ("p-5", 502, 100, "blue", "upstream-closed"),
        ("p-6", 200, 100, "green", ""), ("p-7", 200, 100, "green", "cut")]
