"""The HTTPS listener on real loopback sockets: SNI certificates, what the plain listener does, hot reload,
and bad input (garbage, plain HTTP, stalls, old protocols, unknown names, bad certificate files)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.certs import CertAuthority, other_key_pem, serial_of
from helpers.upstreams import RawClient, TestUpstream, running_proxy, service, wait_for
from proxy.config import ProxyConfig
from proxy.router import Router
from proxy.server import ProxyServer
from proxy.tls.config import TlsConfig
from proxy.tls.manager import Https
from proxy.tls.store import SniMap

pytestmark = pytest.mark.timeout(60)


@dataclass
class Front:
    """A plain listener and an HTTPS listener in front of one router, as `turnout serve` runs them."""

    https: Https
    plain: ProxyServer
    ca: CertAuthority
    certs: Path

    @property
    def port(self) -> int:
        return self.https.server.port

    @property
    def plain_port(self) -> int:
        return self.plain.port

    @property
    def failures(self) -> dict[str, int]:
        return {k: v for k, v in self.https.server.failures.items() if v}

    async def connect(self, sni: str | None = "app.test", context: ssl.SSLContext | None = None) -> RawClient:
        if context is None:
            context = self.ca.client_context()
            if sni is None:
                context.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=context,
                                                       server_hostname=sni or "", limit=1 << 20)
        return RawClient(reader, writer)


@contextlib.asynccontextmanager
async def front_door(tmp_path: Path, router: Router, ca: CertAuthority | None = None,
                     **tls: object) -> AsyncIterator[Front]:
    ca = ca or CertAuthority.create(tmp_path)
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    if not any(certs.iterdir()):
        ca.write(certs, "app", ["app.test"])
    tls_config = TlsConfig(**{"listen": "127.0.0.1:0", "certs_dir": str(certs), **tls})  # type: ignore[arg-type]
    async with running_proxy(router, tls=tls_config, access_log=False) as plain:
        https = Https(router, plain.config, plain)
        await https.start()
        try:
            yield Front(https, plain, ca, certs)
        finally:
            await https.stop(2.0)


def app_router(up: TestUpstream, **fields: object) -> Router:
    router = Router()
    fields.setdefault("hosts", ["app.test", "x.wild.test", "other.test"])
    router.set_service(service(pools={"blue": (1, [up.address])}, **fields))
    return router


def served_serial(client: RawClient) -> int:
    return serial_of(client.writer.get_extra_info("ssl_object").getpeercert(binary_form=True))


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes; a reset counts as closed too."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, ssl.SSLError):
        return b""


async def refused(front: Front, **connect: object) -> BaseException:
    with pytest.raises((ssl.SSLError, ConnectionResetError, ConnectionAbortedError)) as info:
        client = await front.connect(**connect)  # type: ignore[arg-type]
        await client.request("GET", "/")
    return info.value


# ------------------------------------------------------------------------------------------ serving
async def test_https_proxies_like_the_plain_listener_and_says_https(ups, tmp_path):
    a = ups[0]
    async with front_door(tmp_path, app_router(a)) as front:
        client = await front.connect()
        r = await client.request("GET", "/headers")
        assert r.status == 200 and r.header("via") == "1.1 turnout"
        assert b"X-Forwarded-Proto: https\r\n" in r.body
        assert b"X-Forwarded-Port: %d\r\n" % front.port in r.body
        assert b"X-Forwarded-For: 127.0.0.1\r\n" in r.body
        for _ in range(3):  # keep-alive over TLS, bodies both ways
            r = await client.request("POST", "/echo", body=b"x" * 100_000)
            assert (r.status, len(r.body)) == (200, 100_000)
        r = await client.request("GET", "/chunked")
        assert r.body == b"hello chunked world"
        await client.close()
        plain = await RawClient.connect(front.plain_port)  # the plain listener still says http
        r = await plain.request("GET", "/headers", host="other.test")
        assert b"X-Forwarded-Proto: http\r\n" in r.body
        assert b"X-Forwarded-Port: %d\r\n" % front.plain_port in r.body
        await plain.close()
    assert a.connections == 1  # both listeners share the upstream's pooled connections


async def test_alpn_offers_http11_only(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        context = front.ca.client_context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        client = await front.connect(context=context)
        assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        await client.close()
        context = front.ca.client_context()
        context.set_alpn_protocols(["h2"])  # HTTP/2 only: no protocol agreed, HTTP/1.1 all the same
        client = await front.connect(context=context)
        assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        assert (await client.request("GET", "/")).status == 200
        await client.close()


async def test_sni_picks_exact_names_before_wildcards(ups, tmp_path):
    ca = CertAuthority.create(tmp_path)
    certs = tmp_path / "certs"
    wild = ca.write(certs, "wild", ["*.wild.test"])
    exact = ca.write(certs, "exact", ["x.wild.test"])
    app = ca.write(certs, "app", ["app.test"])
    serial = {p: serial_of_file(p) for p in (wild, exact, app)}
    async with front_door(tmp_path, app_router(ups[0]), ca=ca) as front:
        for host, expected in (("x.wild.test", exact), ("y.wild.test", wild), ("app.test", app),
                               ("APP.test", app)):
            client = await front.connect(sni=host)
            assert served_serial(client) == serial[expected], host
            await client.close()
        # A wildcard covers one label only.
        await refused(front, sni="a.b.wild.test")
        assert front.failures == {"unknown-sni": 1}


def serial_of_file(path: Path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificates(path.read_bytes())[0].serial_number


def test_sni_map_lookup_order():
    exact, wild = object(), object()
    sni = SniMap(exact={"x.a.test": exact}, wildcard={"a.test": wild})  # type: ignore[dict-item]
    assert sni.find("x.a.test") is exact
    assert sni.find("y.a.test") is wild
    assert sni.find("a.test") is None and sni.find("z.y.a.test") is None and sni.find("") is None


async def test_sticky_cookie_is_secure_on_https_only(ups, tmp_path):
    a, b = ups[0], ups[1]
    router = Router()
    router.set_service(service(pools={"blue": (1, [a.address]), "green": (1, [b.address])}, sticky=True))
    async with front_door(tmp_path, router, redirect_http=False) as front:
        client = await front.connect()
        cookie = (await client.request("GET", "/")).header("set-cookie")
        assert cookie is not None and cookie.endswith("; Secure"), cookie
        await client.close()
        plain = await RawClient.connect(front.plain_port)
        cookie = (await plain.request("GET", "/")).header("set-cookie")
        assert cookie is not None and "Secure" not in cookie, cookie
        await plain.close()


async def test_hsts_on_every_https_answer_when_configured(ups, tmp_path):
    router = Router()
    router.set_service(service(pools={"blue": (1, [ups[0].address]), "green": (1, [ups[1].address])},
                               sticky=True))
    async with front_door(tmp_path, router, hsts=86400.0) as front:
        client = await front.connect()
        first = await client.request("GET", "/")  # sets the sticky cookie too
        again = await client.request("GET", "/", headers={"Cookie": first.header("set-cookie").split(";")[0]})
        for r in (first, again, await client.request("GET", "/status/404")):
            assert r.header("strict-transport-security") == "max-age=86400"
        assert first.header("set-cookie") is not None and again.header("set-cookie") is None
        await client.close()
    async with front_door(tmp_path / "none", app_router(ups[0])) as front:
        client = await front.connect()
        assert (await client.request("GET", "/")).header("strict-transport-security") is None
        await client.close()


# ------------------------------------------------------------------------------------------ plain side
async def test_plain_listener_redirects_hosts_with_a_certificate(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        plain = await RawClient.connect(front.plain_port)
        r = await plain.request("GET", "/a/b?c=d", host="app.test:8000")
        assert r.status == 308 and r.header("location") == f"https://app.test:{front.port}/a/b?c=d"
        assert r.header("x-turnout-error") is None
        r = await plain.request("GET", "/", host="other.test")  # no certificate: served in plain HTTP
        assert (r.status, r.body) == (200, b"a")
        r = await plain.request("POST", "/echo", body=b"abc", host="app.test")  # answered, then closed
        assert r.status == 308 and r.header("connection") == "close"
        await plain.close()
    async with front_door(tmp_path / "off", app_router(ups[0]), redirect_http=False) as front:
        plain = await RawClient.connect(front.plain_port)
        assert (await plain.request("GET", "/", host="app.test")).status == 200
        await plain.close()


async def test_plain_listener_answers_acme_challenges_before_redirecting(ups, tmp_path):
    from proxy.tls.frontdoor import Challenges

    async with front_door(tmp_path, app_router(ups[0])) as front:
        challenges = Challenges()  # what ACME fills while a host is being validated
        front.plain.front_door.challenges = challenges  # type: ignore[attr-defined]
        challenges.tokens["tok123"] = "tok123.thumbprint"
        plain = await RawClient.connect(front.plain_port)
        r = await plain.request("GET", "/.well-known/acme-challenge/tok123", host="app.test")
        assert (r.status, r.body) == (200, b"tok123.thumbprint")
        r = await plain.request("GET", "/.well-known/acme-challenge/unknown", host="other.test")
        assert (r.status, r.body) == (200, b"a")  # not ours: the app's
        r = await plain.request("GET", "/.well-known/acme-challenge/unknown", host="app.test")
        assert (r.status, r.body) == (200, b"a")  # never redirected: the app may answer its own
        await plain.close()


# ------------------------------------------------------------------------------------------ bad input
async def test_unknown_and_missing_sni_are_refused_with_default_reject(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        await refused(front, sni="nope.test")
        await refused(front, sni=None)
        assert front.failures == {"unknown-sni": 1, "no-sni": 1}
        client = await front.connect()  # and the listener goes on
        assert (await client.request("GET", "/")).status == 200
        await client.close()


async def test_default_host_serves_its_certificate_without_sni(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), default="app.test") as front:
        context = front.ca.client_context()
        context.check_hostname = False
        for sni in (None, "nope.test"):
            client = await front.connect(sni=sni, context=context)
            assert (await client.request("GET", "/")).status == 200
            await client.close()
        assert front.failures == {}


async def test_tls10_and_tls11_are_refused(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        for version in ("TLSv1", "TLSv1_1"):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_ciphers("ALL:@SECLEVEL=0")
            with pytest.warns(DeprecationWarning):
                context.minimum_version = context.maximum_version = getattr(ssl.TLSVersion, version)
            await refused(front, context=context)
        assert front.failures == {"protocol-version": 2}


async def test_min_version_tls13_refuses_tls12(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), min_version="TLSv1.3") as front:
        context = front.ca.client_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        await refused(front, context=context)
        assert front.failures == {"protocol-version": 1}


@pytest.mark.parametrize(("sent", "reason"), [
    (b"\x16\x03\x01\x00\x05garbage-garbage", "malformed"),
    (b"\x16\x03\x01\x40\x00" + b"\x01" * 64, "timeout"),  # a record that never completes: stalls
    (b"\x16", "timeout"),  # the first byte of a handshake, and nothing more
    (b"\x00" * 100, "malformed"),
])
async def test_garbage_is_closed_and_counted(ups, tmp_path, sent, reason):
    async with front_door(tmp_path, app_router(ups[0]), handshake_timeout=0.3) as front:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.write(sent)
        assert await closed_by_server(reader) == b""
        writer.close()
        await wait_for(lambda: front.failures == {reason: 1})
        assert not front.https.server.handshakes and not front.https.server.per_client
        client = await front.connect()
        assert (await client.request("GET", "/")).status == 200
        await client.close()


async def test_plain_http_to_the_https_port_gets_a_plain_400(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        client = await RawClient.connect(front.port)
        r = await client.request("GET", "/")
        assert r.status == 400 and r.header("x-turnout-error") == "plain-http-to-https-port"
        assert r.header("connection") == "close" and await closed_by_server(client.reader) == b""
        await client.close()
        assert front.failures == {"plain-http": 1} and not front.https.server.per_client
        assert ups[0].requests == []  # nothing went upstream


async def test_a_client_closing_before_any_byte_is_counted(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        _, writer = await asyncio.open_connection("127.0.0.1", front.port)
        writer.close()
        await wait_for(lambda: front.failures == {"client-closed": 1})
        assert not front.https.server.per_client


async def test_a_silent_client_is_closed_at_the_handshake_timeout(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), handshake_timeout=0.2) as front:
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        assert await closed_by_server(reader) == b""
        writer.close()
        await wait_for(lambda: front.failures == {"timeout": 1})


async def stalled(front: Front, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`n` connections to the HTTPS port that have sent nothing yet (a client held up, or a proxy whose
    loop stalled with their handshakes in the kernel)."""
    return [await asyncio.open_connection("127.0.0.1", front.port, limit=1 << 20) for _ in range(n)]


async def test_handshakes_over_the_per_address_bound_wait_for_a_slot_and_all_complete(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), max_handshakes_per_client=2,
                          handshake_timeout=30.0) as front:
        server = front.https.server
        held = await stalled(front, 7)  # 2 under way, 5 waiting for a slot of 127.0.0.1
        await wait_for(lambda: (server.per_client["127.0.0.1"], server.waiting["127.0.0.1"]) == (2, 5))
        context = front.ca.client_context()

        async def handshake_then_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
            await writer.start_tls(context, server_hostname="app.test")
            client = RawClient(reader, writer)
            status = (await client.request("GET", "/")).status
            await client.close()
            return status

        async def new_client() -> int:  # its ClientHello arrives at once, while it waits
            client = await front.connect()
            status = (await client.request("GET", "/")).status
            await client.close()
            return status

        statuses = await asyncio.gather(*(handshake_then_get(r, w) for r, w in held),
                                        *(new_client() for _ in range(3)))
        assert statuses == [200] * 10
        assert front.failures == {} and server.waits >= 5
        await wait_for(lambda: not server.per_client and not server.waiting and not server.queues)
        assert f"turnout_tls_handshake_waits_total {server.waits}" in server.metrics_lines()


async def test_a_flood_beyond_the_waiting_bound_is_cut_and_the_address_may_handshake_again(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), max_handshakes_per_client=2,
                          handshake_timeout=30.0) as front:
        server = front.https.server
        assert front.https.tls.max_waiting_per_client == 8
        held = await stalled(front, 10)
        await wait_for(lambda: (server.per_client["127.0.0.1"], server.waiting["127.0.0.1"]) == (2, 8))
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        assert await closed_by_server(reader) == b""  # the eleventh is cut before any handshake
        writer.close()
        assert front.failures == {"too-many-handshakes": 1} and server.waits == 8
        for _, w in held:
            w.close()
        await wait_for(lambda: not server.per_client and not server.waiting and not server.queues)
        client = await front.connect()  # the address may handshake again
        assert (await client.request("GET", "/")).status == 200
        await client.close()


async def test_a_waiter_past_its_deadline_is_closed(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), max_handshakes_per_client=1,
                          handshake_timeout=1.0) as front:
        server = front.https.server
        ((a_reader, a_writer),) = await stalled(front, 1)
        await wait_for(lambda: server.per_client.get("127.0.0.1") == 1)
        ((b_reader, b_writer),) = await stalled(front, 1)
        await wait_for(lambda: server.waiting.get("127.0.0.1") == 1)
        # A's handshake starts only now (one byte of a record): handshake_timeout from here, so it holds
        # the slot past B's deadline, which counted from B's accept.
        a_writer.write(b"\x16")
        assert await closed_by_server(b_reader) == b""
        assert await closed_by_server(a_reader) == b""
        await wait_for(lambda: front.failures == {"wait-timeout": 1, "timeout": 1})
        for w in (a_writer, b_writer):
            w.close()
        assert not server.per_client and not server.waiting and not server.handshakes


async def test_stop_ends_handshakes_under_way(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), handshake_timeout=30.0) as front:
        server = front.https.server
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        await wait_for(lambda: len(server.handshakes) == 1)
        stopping = asyncio.create_task(front.https.stop(5.0))
        assert await closed_by_server(reader) == b""
        assert await stopping == 0
        writer.close()


# ------------------------------------------------------------------------------------------ reload
async def test_reload_swaps_certificates_and_leaves_open_connections_alone(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        old_client = await front.connect()
        old_serial = served_serial(old_client)
        crt = front.ca.write(front.certs, "app", ["app.test"], days=30)
        new_serial = serial_of_file(crt)
        assert new_serial != old_serial
        assert front.https.reload()["changed"] is True
        new_client = await front.connect()
        assert served_serial(new_client) == new_serial
        assert (await old_client.request("GET", "/")).status == 200  # still on its old certificate
        assert served_serial(old_client) == old_serial
        assert front.https.reload()["changed"] is False  # nothing new on disk: nothing re-read
        for client in (old_client, new_client):
            await client.close()


@pytest.mark.parametrize("damage", ["mismatched-key", "expired", "no-san", "not-yet-valid", "not-pem",
                                    "missing-key", "encrypted-key"])
async def test_a_bad_pair_keeps_the_old_certificate_and_names_the_file(ups, tmp_path, damage):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        crt, key = front.certs / "app.crt", front.certs / "app.key"
        serial = serial_of_file(crt)
        if damage == "mismatched-key":
            key.write_bytes(other_key_pem())
            at, words = key, "does not match"
        elif damage == "expired":
            front.ca.write(front.certs, "app", ["app.test"], days=-1, not_before_days=-10)
            at, words = crt, "expired"
        elif damage == "no-san":
            front.ca.write(front.certs, "app", [])
            at, words = crt, "subjectAltName"
        elif damage == "not-yet-valid":
            front.ca.write(front.certs, "app", ["app.test"], not_before_days=2)
            at, words = crt, "not valid before"
        elif damage == "not-pem":
            crt.write_bytes(b"hello")
            at, words = crt, "not a PEM certificate"
        elif damage == "missing-key":
            key.unlink()
            at, words = key, "missing"
        else:
            from cryptography.hazmat.primitives import serialization

            private = serialization.load_pem_private_key(key.read_bytes(), None)
            key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.BestAvailableEncryption(b"secret")))
            at, words = key, "passphrase"
        described = front.https.reload()
        assert described["changed"] is False
        (error,) = described["errors"]
        assert error["file"] == str(at) and words in error["error"], error
        client = await front.connect()
        assert served_serial(client) == serial  # the last good certificate is still served
        await client.close()
        assert any(str(at) in w for w in front.https.warnings())


async def test_an_unreadable_certs_dir_keeps_what_was_loaded(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        moved = front.certs.rename(tmp_path / "elsewhere")
        described = front.https.reload()
        (error,) = described["errors"]
        assert error["file"] == str(front.certs) and "cannot be read" in error["error"]
        client = await front.connect()
        assert (await client.request("GET", "/")).status == 200
        await client.close()
        moved.rename(front.certs)
        assert front.https.reload()["errors"] == []


async def test_a_removed_pair_is_no_longer_served(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        front.ca.write(front.certs, "other", ["other.test"])
        front.https.reload()
        client = await front.connect(sni="other.test")
        await client.close()
        (front.certs / "other.crt").unlink()
        assert front.https.reload()["changed"] is True
        await refused(front, sni="other.test")


async def test_the_directory_is_re_read_every_interval(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0]), reload_interval=0.05) as front:
        front.ca.write(front.certs, "other", ["other.test"])
        await wait_for(lambda: front.https.store.map.find("other.test") is not None)
        client = await front.connect(sni="other.test")
        assert (await client.request("GET", "/", host="other.test")).status == 200
        await client.close()


async def test_metrics_say_expiry_per_host_and_failures_by_reason(ups, tmp_path):
    async with front_door(tmp_path, app_router(ups[0])) as front:
        await refused(front, sni="nope.test")
        text = front.https.server.router.metrics.render([])
        assert 'turnout_tls_handshake_failures_total{reason="unknown-sni"} 1' in text
        expiry = 'turnout_tls_cert_expiry_seconds{host="app.test"}'
        line = next(x for x in text.splitlines() if x.startswith(expiry))
        assert 89 * 86400 < float(line.split()[-1]) <= 90 * 86400


def test_proxy_config_refuses_the_same_address_twice():
    from proxy.errors import ValidationError

    with pytest.raises(ValidationError, match=r"tls\.listen"):
        ProxyConfig(listen="127.0.0.1:8000", tls=TlsConfig(listen="127.0.0.1:8000", certs_dir="x"))


async def test_load_generator_speaks_https_with_cacert_and_connect_to(ups, tmp_path):
    from controller.rehearsal.loadgen import LoadConfig, run_load

    async with front_door(tmp_path, app_router(ups[0])) as front:
        config = LoadConfig(url=f"https://app.test:{front.port}/", duration=0.5, concurrency=4,
                            new_connections=0.5, cacert=str(front.ca.path),
                            connect_to=f"127.0.0.1:{front.port}")
        result = await run_load(config)
        assert result.sent > 10 and result.succeeded == result.sent, result.summary()
        assert result.versions() == ["a"]
        assert front.https.server.completed >= result.sent // 2  # half the requests on a fresh connection
        wrong = LoadConfig(url=f"https://app.test:{front.port}/", duration=0.2, concurrency=1,
                           connect_to=f"127.0.0.1:{front.port}")  # the system's CAs: not the test CA
        result = await run_load(wrong)
        assert result.sent and result.succeeded == 0


@pytest.mark.parametrize("tickets", [True, False])
async def test_session_tickets_resume_unless_turned_off(ups, tmp_path, tickets):
    async with front_door(tmp_path, app_router(ups[0]), session_tickets=tickets) as front:
        context = front.ca.client_context()

        def visit(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
            import socket

            with socket.create_connection(("127.0.0.1", front.port)) as raw, \
                    context.wrap_socket(raw, server_hostname="app.test", session=session) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                while tls.recv(65536):  # to the end: the tickets come before the answer
                    pass
                return tls.session, tls.session_reused

        loop = asyncio.get_running_loop()
        session, reused = await loop.run_in_executor(None, visit, None)
        assert not reused
        _, reused = await loop.run_in_executor(None, visit, session)
        assert reused is tickets
        server = front.https.server
        assert (server.completed, server.resumed) == (2, 1 if tickets else 0)


# ------------------------------------------------------------------------------------------ uvloop
def test_the_listener_on_uvloop_serves_resumes_refuses_and_stops(tmp_path):
    """`turnout serve` runs uvloop, whose TLS layer is its own: the same listener on it, end to end
    (the other tests run asyncio's loop)."""
    import socket

    import uvloop

    async def scenario() -> None:
        up = await TestUpstream("a").start()
        try:
            async with front_door(tmp_path, app_router(up), handshake_timeout=30.0) as front:
                server = front.https.server
                assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
                client = await front.connect()
                r = await client.request("POST", "/echo", body=b"x" * 100_000)
                assert (r.status, len(r.body)) == (200, 100_000)
                await client.close()
                context = front.ca.client_context()

                def visit(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
                    with socket.create_connection(("127.0.0.1", front.port)) as raw, \
                            context.wrap_socket(raw, server_hostname="app.test", session=session) as tls:
                        tls.sendall(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                        while tls.recv(65536):
                            pass
                        return tls.session, tls.session_reused

                loop = asyncio.get_running_loop()
                session, _ = await loop.run_in_executor(None, visit, None)
                _, reused = await loop.run_in_executor(None, visit, session)
                assert reused
                await wait_for(lambda: (server.completed, server.resumed) == (3, 1))
                plain = await RawClient.connect(front.port)
                r = await plain.request("GET", "/")
                assert r.status == 400 and r.header("x-turnout-error") == "plain-http-to-https-port"
                await plain.close()
                await refused(front, sni="nope.test")
                assert front.failures == {"plain-http": 1, "unknown-sni": 1}
                reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
                writer.write(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that stalls: TLS has started
                await wait_for(lambda: [h.waiter is not None for h in server.handshakes] == [True])
                stopping = asyncio.create_task(front.https.stop(5.0))
                assert await closed_by_server(reader) == b""
                assert await stopping == 0
                writer.close()
                assert front.failures == {"plain-http": 1, "unknown-sni": 1}  # stopping is no failure
                assert (server.completed, server.resumed) == (3, 1)  # nor a handshake done
        finally:
            await up.close()

    uvloop.run(scenario())
