"""A bug of the proxy's own is not an upstream fault: an exception raised inside the upstream side's parser
callbacks (httptools wraps it as `HttpParserCallbackError`) is logged with the original exception,
counted in `turnout_internal_errors_total`, and answered 500 `internal` — never 502 `upstream-protocol`
in silence, and never, for a HEAD, taken as the complete answer."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from helpers.upstreams import RawClient, running_proxy, service, start_upstreams
from proxy.forward import ClientConnection
from proxy.router import Router


class Bug(RuntimeError):
    pass


@pytest.fixture
async def up():
    (upstream,) = await start_upstreams("a")
    yield upstream
    await upstream.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_an_exception_in_a_parser_callback_is_logged_counted_and_a_500(up, monkeypatch, method):
    def buggy(self, status):  # raised inside on_headers_complete, after the HEAD answer's head was read
        raise Bug("boom")

    monkeypatch.setattr(ClientConnection, "response_started", buggy)
    monkeypatch.setattr("proxy.upstream_conn._KNOWN_ANSWERS", {})  # through llhttp, even if seen before
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    async with running_proxy(router) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            with capture_logs() as logs:
                r = await client.request(method, "/")
            assert (r.status, r.header("x-turnout-error")) == (500, "internal")
            assert r.header("connection") == "close"
            assert await client.at_eof()
        finally:
            await client.close()
        metrics = router.metrics.render([])
    failed = [e for e in logs if e["event"] == "proxy.request_failed"]
    assert len(failed) == 1, logs
    assert failed[0]["where"] == "upstream-parser" and failed[0]["log_level"] == "error"
    assert isinstance(failed[0]["exc_info"], Bug)  # the original exception, not httptools' wrapper
    assert failed[0]["upstream"] == up.address
    assert "turnout_internal_errors_total 1\n" in metrics


async def test_the_client_sides_error_boundary_counts_too(up, monkeypatch):
    def buggy(self, table):
        raise Bug("boom")

    monkeypatch.setattr(ClientConnection, "_route", buggy)
    router = Router()
    router.set_service(service(pools={"blue": (1, [up.address])}))
    async with running_proxy(router) as proxy:
        client = await RawClient.connect(proxy.port)
        try:
            with capture_logs() as logs:
                r = await client.request("POST", "/echo", body=b"x")  # not plain: the full path routes it
            assert (r.status, r.header("x-turnout-error")) == (500, "internal")
        finally:
            await client.close()
    assert [e["where"] for e in logs if e["event"] == "proxy.request_failed"] == ["client"]
    assert router.metrics.internal_errors == 1
