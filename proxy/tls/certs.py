"""One certificate and its key: loaded, validated and made into its own server context.

`load_pair` reads `NAME.crt` (PEM: the leaf, then its chain) and `NAME.key`, and refuses a pair whose
files do not parse, whose key does not match the leaf, whose leaf is expired (or not yet valid), or
that names no DNS host in its subjectAltName. Every refusal is a `CertError` naming the file at fault.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ..errors import ProxyError
from .config import HOST_RE

ALPN = ["http/1.1"]  # HTTP/2 is out of scope: a client that asks for h2 only gets no ALPN match


class CertError(ProxyError, ValueError):
    """A certificate pair that cannot be served: `path` is the file at fault."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Certificate:
    name: str  # the files' stem (NAME.crt / NAME.key), or the host for ACME certificates
    source: str  # "static" (certs_dir) or "acme"
    cert_path: Path
    hosts: tuple[str, ...]  # DNS names of the leaf's subjectAltName, lower-case ("*.example.com" too)
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    context: ssl.SSLContext

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or utcnow())).total_seconds()

    def describe(self, now: dt.datetime | None = None) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "file": str(self.cert_path),
                "hosts": list(self.hosts), "issuer": self.issuer, "not_after": self.not_after.isoformat(),
                "days_left": round(self.seconds_left(now) / 86400, 1), "serial": f"{self.serial:x}"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def server_context(min_version: ssl.TLSVersion, tickets: bool = True) -> ssl.SSLContext:
    """A server context with Turnout's protocol settings and no certificate yet. `tickets`: session
    tickets for resumption (OpenSSL's two per TLS 1.3 handshake); off, every handshake is a full one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    context.set_alpn_protocols(ALPN)
    return context


def load_pair(cert_path: Path, key_path: Path, *, source: str, min_version: ssl.TLSVersion,
              now: dt.datetime | None = None, tickets: bool = True) -> Certificate:
    """Read, validate and load one pair into a fresh context (raises CertError naming the file)."""
    cert_bytes = _read(cert_path)
    key_bytes = _read(key_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_bytes)
    except ValueError:
        raise CertError(cert_path, "not a PEM certificate (expected the leaf, then its chain)") from None
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError:
        raise CertError(key_path, "the key is encrypted with a passphrase (Turnout needs it unencrypted, "
                        "mode 0600)") from None
    except ValueError:
        raise CertError(key_path, "not a PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertError(key_path, f"this key does not match the certificate in {cert_path.name}")
    now = now or utcnow()
    if leaf.not_valid_after_utc <= now:
        raise CertError(cert_path, f"expired on {leaf.not_valid_after_utc.isoformat()}")
    if leaf.not_valid_before_utc > now:
        raise CertError(cert_path, f"not valid before {leaf.not_valid_before_utc.isoformat()}")
    hosts = _dns_names(leaf)
    if not hosts:
        raise CertError(cert_path, "names no DNS host in its subjectAltName (clients match names there, "
                        "not in the subject's CN)")
    context = server_context(min_version, tickets)
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, OSError) as exc:
        raise CertError(cert_path, f"OpenSSL refused the pair: {exc}") from None
    # load_cert_chain read the files again: they must still hold what was validated above.
    if _read(cert_path) != cert_bytes or _read(key_path) != key_bytes:
        raise CertError(cert_path, "changed while being read (read again at the next pass)")
    return Certificate(name=cert_path.stem, source=source, cert_path=cert_path, hosts=hosts,
                       issuer=_issuer(leaf), not_before=leaf.not_valid_before_utc,
                       not_after=leaf.not_valid_after_utc, serial=leaf.serial_number, context=context)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(path, "missing (a certificate needs NAME.crt and NAME.key side by side)") from None
    except OSError as exc:
        raise CertError(path, f"cannot be read: {exc.strerror or exc}") from None


def _dns_names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = []
    for name in san.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        plain = name[2:] if name.startswith("*.") else name
        if HOST_RE.fullmatch(plain) and name not in names:
            names.append(name)
    return tuple(names)


def _issuer(leaf: x509.Certificate) -> str:
    for oid in (NameOID.ORGANIZATION_NAME, NameOID.COMMON_NAME):
        values = leaf.issuer.get_attributes_for_oid(oid)
        if values:
            return str(values[0].value)
    return leaf.issuer.rfc4514_string()
