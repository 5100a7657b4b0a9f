"""`Https`: the front door's parts put together for a proxy that has `[proxy.tls]`.

Lifecycle: `Https(router, config, plain)` turns the plain listener into a front door (ACME challenges,
redirects); `start()` reads the certificates, listens, re-reads them every `reload_interval` and starts
ACME; `reload()` re-reads now (SIGHUP, `turnout certs reload`); `stop()` undoes it in reverse.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import structlog

from ..config import ProxyConfig
from ..router import Router
from ..server import ProxyServer
from .certs import utcnow
from .frontdoor import Challenges, FrontDoor, FrontDoorConnection
from .listener import TlsServer
from .store import CertStore

log = structlog.get_logger("turnout.proxy.tls")

EXPIRY_WARNING_DAYS = 14  # `turnout status` warns about certificates closer than this to their end


def acme_dir(state_dir: str | Path) -> Path:
    """Where ACME keeps its account key and certificates (files 0600)."""
    return Path(state_dir) / "acme"


class Https:
    def __init__(self, router: Router, config: ProxyConfig, plain: ProxyServer) -> None:
        tls = config.tls
        assert tls is not None
        self.tls = tls
        directories: list[tuple[Path, str]] = []
        if tls.certs_dir is not None:
            directories.append((Path(tls.certs_dir), "static"))
        if tls.acme is not None:
            directories.append((acme_dir(tls.state_dir) / "certs", "acme"))
        self.store = CertStore(tls, directories)
        self.server = TlsServer(router, config, tls, self.store)
        self.challenges = Challenges() if tls.acme is not None else None
        plain.connection_class = FrontDoorConnection
        plain.front_door = FrontDoor(self.store, lambda: self.server.port, tls.redirect_http,  # type: ignore
                                     self.challenges)
        router.metrics.sources.append(self.metrics_lines)
        self.acme: Any = None  # proxy/tls/acme.py's AcmeManager, once started
        self._reloader: asyncio.Task[None] | None = None

    async def start(self, acme_hosts: tuple[str, ...] = ()) -> None:
        self.store.reload()
        await self.server.start()
        self._reloader = asyncio.get_running_loop().create_task(self._reload_forever())
        if self.tls.acme is not None:
            from .acme import AcmeManager  # the ACME client library is loaded only when ACME is on

            hosts = self.tls.acme.hosts or acme_hosts
            self.acme = AcmeManager(self.tls.acme, acme_dir(self.tls.state_dir), hosts, self.store,
                                    self.challenges)  # type: ignore[arg-type]
            self.acme.start()

    async def stop(self, timeout: float = 10.0) -> int:
        if self.acme is not None:
            await self.acme.stop()
        if self._reloader is not None:
            self._reloader.cancel()
            await asyncio.gather(self._reloader, return_exceptions=True)
            self._reloader = None
        return await self.server.stop(timeout)

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tls.reload_interval)
            try:
                self.store.reload()
            except Exception:  # the loop must outlive one bad pass; bad files never raise
                log.exception("tls.reload_failed")

    def reload(self) -> dict[str, Any]:
        """Re-read the certificates now; what is served afterwards."""
        changed = self.store.reload()
        log.info("tls.reloaded", changed=changed)
        return {"changed": changed, **self.describe()}

    # ------------------------------------------------------------------ reading the state
    def describe(self, now: dt.datetime | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"listen": f"{self.tls.listen.rpartition(':')[0]}:{self.server.port}",
                                **self.store.describe(now)}
        data["acme"] = self.acme.describe() if self.acme is not None else None
        return data

    def warnings(self, now: dt.datetime | None = None) -> list[str]:
        """What `turnout status` warns about: certificates ending within EXPIRY_WARNING_DAYS, and files
        that could not be loaded."""
        now = now or utcnow()
        out = []
        for cert in sorted(self.store.certificates(), key=lambda c: c.not_after):
            days = cert.seconds_left(now) / 86400
            if days < EXPIRY_WARNING_DAYS:
                state = "expired" if days <= 0 else f"expires in {days:.1f} days"
                out.append(f"certificate {cert.name} ({', '.join(cert.hosts)}) {state} "
                           f"({cert.not_after:%Y-%m-%d %H:%M} UTC, {cert.source})")
        out += [f"{e['file']}: {e['error']}" if e["file"] else e["error"] for e in self.store.errors()]
        if self.acme is not None:
            out += [f"ACME {h['host']}: {h['last_error']}" for h in self.acme.describe()
                    if h.get("last_error") and not h.get("valid")]
        return out

    def metrics_lines(self) -> list[str]:
        now = utcnow()
        out = ["# HELP turnout_tls_cert_expiry_seconds Seconds until the certificate served for a host ends.",
               "# TYPE turnout_tls_cert_expiry_seconds gauge"]
        sni = self.store.map
        for host, cert in sorted([*sni.exact.items(), *(("*." + k, v) for k, v in sni.wildcard.items())]):
            out.append(f'turnout_tls_cert_expiry_seconds{{host="{host}"}} {cert.seconds_left(now):.0f}')
        return out + self.server.metrics_lines()
