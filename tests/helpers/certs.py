"""Test certificates made with `cryptography`: a CA, and leaf pairs written as NAME.crt + NAME.key."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class CertAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path  # the CA certificate, PEM (for clients' cafile)

    @classmethod
    def create(cls, directory: Path, name: str = "Turnout Test CA") -> CertAuthority:
        key = _key()
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "test-ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def leaf(self, hosts: list[str], *, days: float = 90, not_before_days: float = -1,
             key: ec.EllipticCurvePrivateKey | None = None, ips: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        """(certificate PEM with the CA appended, key PEM) for `hosts` (no SAN when empty)."""
        key = key or _key()
        now = _now()
        name = hosts[0] if hosts else "no-san.test"
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now + dt.timedelta(days=not_before_days))
                   .not_valid_after(now + dt.timedelta(days=days)))
        if hosts or ips:
            names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pem = serialization.Encoding.PEM
        chain = cert.public_bytes(pem) + self.cert.public_bytes(pem)
        return chain, _pem_key(key)

    def write(self, directory: Path, name: str, hosts: list[str], **options: object) -> Path:
        """NAME.crt + NAME.key in `directory` (key 0600); returns the .crt path."""
        chain, key = self.leaf(hosts, **options)  # type: ignore[arg-type]
        directory.mkdir(parents=True, exist_ok=True)
        crt = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        key_path.write_bytes(key)
        key_path.chmod(0o600)
        crt.write_bytes(chain)
        return crt

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.path))
        return context


def serial_of(der: bytes) -> int:
    return x509.load_der_x509_certificate(der).serial_number


def other_key_pem() -> bytes:
    return _pem_key(_key())
