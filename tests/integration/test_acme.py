"""Built-in ACME against Debian's pebble on loopback: pebble validates HTTP-01 through the proxy's plain
listener, the certificate lands in the state dir (0600) and is served by SNI; an unreachable directory
is retried with backoff while traffic goes on."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.certs import CertAuthority
from helpers.pebble import running_pebble
from helpers.upstreams import RawClient, dead_address, running_proxy, service, wait_for
from proxy.router import Router
from proxy.server import ProxyServer
from proxy.tls.config import AcmeConfig, TlsConfig
from proxy.tls.manager import Https

pytestmark = pytest.mark.timeout(120)


def app_router(address: str) -> Router:
    router = Router()
    router.set_service(service(pools={"blue": (1, [address])}, hosts=["app.test", "static.test"]))
    return router


@contextlib.asynccontextmanager
async def https_with_acme(plain: ProxyServer, router: Router, state: Path, acme: AcmeConfig,
                          certs_dir: Path | None = None) -> AsyncIterator[Https]:
    tls = TlsConfig(listen="127.0.0.1:0", certs_dir=str(certs_dir) if certs_dir else None, acme=acme,
                    state_dir=str(state))
    https = Https(router, replace(plain.config, tls=tls), plain)
    await https.start()
    try:
        yield https
    finally:
        await https.stop(2.0)


async def tls_get(port: int, host: str, context: ssl.SSLContext) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host)
    client = RawClient(reader, writer)
    try:
        return (await client.request("GET", "/", host=host)).status
    finally:
        await client.close()


async def test_acme_issues_through_the_plain_listener_and_keeps_it_in_the_state_dir(ups, tmp_path):
    router = app_router(ups[0].address)
    state = tmp_path / "state"
    async with running_proxy(router, access_log=False) as plain:
        with running_pebble(tmp_path / "pebble", plain.port) as pebble:
            acme = AcmeConfig(directory=pebble.directory, email="ops@app.test", ca_bundle=str(pebble.ca.path),
                              hosts=("app.test",))
            async with https_with_acme(plain, router, state, acme) as https:
                await wait_for(lambda: https.store.map.find("app.test") is not None, timeout=90)
                context = ssl.create_default_context(cadata=pebble.root_pem().decode())
                assert await tls_get(https.server.port, "app.test", context) == 200
                (host,) = https.describe()["acme"]
                assert host["valid"] and host["issued"] == 1 and host["last_error"] is None
                assert plain.front_door.challenges_answered >= 1  # pebble fetched it through Turnout
                assert not https.challenges.tokens  # cleared once validated
                assert "turnout_tls_cert_expiry_seconds{host=\"app.test\"}" in router.metrics.render([])
            for path in (state / "acme" / "account.key", state / "acme" / "certs" / "app.test.crt",
                         state / "acme" / "certs" / "app.test.key"):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            # Started again with the same state dir: served from disk at once, nothing issued.
            async with https_with_acme(plain, router, state, acme) as https:
                assert https.store.map.find("app.test") is not None
                state_of = https.acme.hosts["app.test"]
                await wait_for(lambda: state_of.next_attempt is not None)
                assert state_of.issued == 0 and state_of.failures == 0


async def test_an_unreachable_directory_is_retried_with_backoff_and_holds_up_nothing(ups, tmp_path):
    router = app_router(ups[0].address)
    ca = CertAuthority.create(tmp_path)
    certs = tmp_path / "certs"
    ca.write(certs, "static", ["static.test"])
    acme = AcmeConfig(directory=f"http://{dead_address()}/dir", hosts=("app.test",), retry_min=0.05,
                      retry_max=0.2)
    async with running_proxy(router, access_log=False) as plain, \
            https_with_acme(plain, router, tmp_path / "state", acme, certs_dir=certs) as https:
        state_of = https.acme.hosts["app.test"]
        await wait_for(lambda: state_of.failures >= 3, timeout=30)
        assert "unreachable" in state_of.last_error and acme.directory in state_of.last_error
        assert any("ACME app.test" in w for w in https.warnings())
        assert await tls_get(https.server.port, "static.test", ca.client_context()) == 200
        client = await RawClient.connect(plain.port)
        assert (await client.request("GET", "/", host="app.test")).status == 200  # no cert: plain HTTP
        await client.close()
