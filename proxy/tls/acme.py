"""Certificates fetched by Turnout itself (RFC 8555) with certbot's `acme` client, HTTP-01 answered by the
plain listener (`frontdoor.Challenges`).

One task per host keeps it covered: a host with no valid certificate is issued at once; an ACME
certificate is renewed at two-thirds of its lifetime (with a per-certificate jitter of +/- 1/30 of it);
a failure is retried after `retry_min`, doubling up to `retry_max`. A host covered by a static
certificate (`certs_dir`) is left alone. The protocol runs in a thread (the library is blocking), so
nothing here ever holds up traffic; files are written on the event loop, then the store re-reads them
through the same validation as static pairs. The account key and every certificate and key live in
`<state_dir>/acme/`, files 0600.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .certs import Certificate, utcnow
from .config import AcmeConfig
from .frontdoor import Challenges
from .store import CertStore

log = structlog.get_logger("turnout.proxy.tls.acme")

RENEW_AT = 2 / 3  # of a certificate's lifetime
JITTER = 1 / 30  # +/- this share of the lifetime, per certificate, so renewals of many hosts spread
RECHECK = 3600.0  # seconds: a host with nothing to do is looked at again this often at least
ORDER_DEADLINE = 90.0  # seconds for the CA to validate and issue one order
NETWORK_TIMEOUT = 30  # seconds per ACME request
FILE_MODE = 0o600
T = TypeVar("T")


def renewal_due(cert: Certificate) -> dt.datetime:
    """When an ACME certificate is renewed: two-thirds into its lifetime, +/- a jitter that is stable for
    one certificate (seeded by its serial), so a restart does not move it."""
    lifetime = cert.not_after - cert.not_before
    jitter = random.Random(cert.serial).uniform(-JITTER, JITTER)
    return cert.not_before + lifetime * (RENEW_AT + jitter)


def retry_delay(failures: int, config: AcmeConfig, rng: random.Random | None = None) -> float:
    """Seconds before the next try after `failures` failures in a row: doubling, bounded, +/- 10%."""
    base = min(config.retry_max, config.retry_min * 2 ** max(0, failures - 1))
    return base * (rng or random).uniform(0.9, 1.1)


@dataclass
class HostState:
    host: str
    failures: int = 0
    last_error: str | None = None
    next_attempt: dt.datetime | None = None
    issued: int = 0  # certificates issued for it by this process

    def describe(self, cert: Certificate | None, now: dt.datetime) -> dict[str, Any]:
        return {"host": self.host, "valid": cert is not None and cert.not_after > now,
                "source": cert.source if cert is not None else None,
                "not_after": cert.not_after.isoformat() if cert is not None else None,
                "next_attempt": self.next_attempt.isoformat() if self.next_attempt else None,
                "failures": self.failures, "last_error": self.last_error, "issued": self.issued}


class AcmeManager:
    def __init__(self, config: AcmeConfig, directory: Path, hosts: tuple[str, ...], store: CertStore,
                 challenges: Challenges) -> None:
        self.config = config
        self.directory = directory  # <state_dir>/acme
        self.certs_dir = directory / "certs"
        self.store = store
        self.challenges = challenges
        self.hosts = {host: HostState(host) for host in hosts}
        self.tasks: list[asyncio.Task[None]] = []
        self._account_lock = threading.Lock()  # one account made at a time, whichever host asks first

    def start(self) -> None:
        for path in (self.directory, self.certs_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._keep(state)) for state in self.hosts.values()]
        if not self.hosts:
            log.warning("acme.no_hosts", hint="set proxy.tls.acme.hosts or give services a host")

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    def describe(self) -> list[dict[str, Any]]:
        now = utcnow()
        return [state.describe(self.store.map.find(host), now) for host, state in sorted(self.hosts.items())]

    # ------------------------------------------------------------------ one host
    async def _keep(self, state: HostState) -> None:
        while True:
            wait = self._wait_before_issuing(state)
            if wait > 0:
                state.next_attempt = utcnow() + dt.timedelta(seconds=wait)
                await asyncio.sleep(min(wait, RECHECK))
                continue
            state.next_attempt = None
            try:
                key_pem, chain_pem = await _in_thread(lambda: self._issue(state.host))
                self._save(state.host, key_pem, chain_pem)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: keep what is served, retry later
                state.failures += 1
                state.last_error = _describe_error(exc, self.config.directory)
                delay = retry_delay(state.failures, self.config)
                state.next_attempt = utcnow() + dt.timedelta(seconds=delay)
                log.error("acme.issue_failed", host=state.host, error=state.last_error,
                          failures=state.failures, retry_in=round(delay, 1))
                await asyncio.sleep(delay)
                continue
            state.failures = 0
            state.last_error = None
            state.issued += 1

    def _wait_before_issuing(self, state: HostState) -> float:
        """Seconds until this host needs a certificate (0: now)."""
        cert = self.store.map.find(state.host)
        now = utcnow()
        if cert is None or cert.not_after <= now:
            return 0.0
        if cert.source != "acme":
            return RECHECK  # the operator's own certificate covers it
        return max(0.0, (renewal_due(cert) - now).total_seconds())

    def _save(self, host: str, key_pem: bytes, chain_pem: bytes) -> None:
        """Write the pair (0600, each file replaced whole), then have the store validate and load it."""
        for suffix, data in ((".key", key_pem), (".crt", chain_pem)):
            _write_private(self.certs_dir / f"{host}{suffix}", data)
        self.store.reload()
        cert = self.store.map.find(host)
        if cert is None or cert.source != "acme" or cert.cert_path != self.certs_dir / f"{host}.crt":
            errors = [e["error"] for e in self.store.errors() if host in e["file"]]
            raise RuntimeError(f"the issued certificate was not loaded: {'; '.join(errors) or 'unknown'}")
        log.info("acme.issued", host=host, not_after=cert.not_after.isoformat(), issuer=cert.issuer,
                 renew_at=renewal_due(cert).isoformat())

    # ------------------------------------------------------------------ the protocol (in a thread)
    def _issue(self, host: str) -> tuple[bytes, bytes]:
        import josepy
        from acme import challenges, client, crypto_util, errors, messages

        account_key = self._account_key()
        jwk = josepy.JWKRSA(key=account_key)
        net = client.ClientNetwork(jwk, user_agent="turnout", timeout=NETWORK_TIMEOUT,
                                   verify_ssl=self.config.ca_bundle or True)  # type: ignore[arg-type]
        directory = client.ClientV2.get_directory(self.config.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(email=self.config.email,
                                                          terms_of_service_agreed=True)
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:  # the key has an account already: use it
            known = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
            acme.query_registration(known)
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        order = acme.new_order(crypto_util.make_csr(key_pem, [host]))
        tokens = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                challenge = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                                 None)
                if challenge is None:
                    raise RuntimeError(f"the CA offers no HTTP-01 challenge for {host}")
                response, validation = challenge.response_and_validation(jwk)
                token = challenge.chall.encode("token")
                tokens.append(token)
                self.challenges.tokens[token] = validation  # one dict store: safe beside the loop's reads
                acme.answer_challenge(challenge, response)
            deadline = dt.datetime.now() + dt.timedelta(seconds=ORDER_DEADLINE)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                self.challenges.tokens.pop(token, None)
        return key_pem, order.fullchain_pem.encode()

    def _account_key(self) -> rsa.RSAPrivateKey:
        """The account key in <state_dir>/acme/account.key (0600), made once."""
        path = self.directory / "account.key"
        with self._account_lock:
            if not path.exists():
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                _write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
                log.info("acme.account_key_created", file=str(path))
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise RuntimeError(f"{path}: not an RSA key")
        return loaded


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` whole with `data`, mode 0600 from the start (never readable by others)."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _describe_error(exc: BaseException, directory: str) -> str:
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    if "Connection" in name or "Timeout" in name or "SSL" in name:
        return f"ACME directory {directory} unreachable: {name}: {text[:300]}"
    return f"{name}: {text[:500]}"


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking `fn` in a daemon thread: unlike the default executor, one stuck on the network
    never holds up the process's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name="turnout-acme", daemon=True).start()
    return await future
