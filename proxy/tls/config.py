"""The HTTPS front door's settings (`[proxy.tls]` and `[proxy.tls.acme]`): frozen, validated in one place.

A bad value raises `ValidationError` naming its key relative to `proxy.tls` (`min_version`,
`acme.directory`); the config reader adds the file.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field

from ..errors import ValidationError

# The oldest protocol a client may speak: TLS 1.0 and 1.1 are refused whatever the setting.
MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
DEFAULT_REJECT = "reject"
# A DNS name as a certificate's SAN or an SNI names it: labels of letters, digits and hyphens.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOST_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*")
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
WAITING_PER_RUNNING = 4  # connections of one address that may wait for a handshake slot, per slot


@dataclass(frozen=True, slots=True)
class AcmeConfig:
    """Certificates fetched by Turnout itself (RFC 8555, HTTP-01 answered on the plain listener)."""

    directory: str = LETS_ENCRYPT
    email: str | None = None  # the account's contact
    ca_bundle: str | None = None  # a PEM file of extra CAs trusted for the directory (a local test CA)
    hosts: tuple[str, ...] = ()  # () : every service's host names
    # Retry after a failure: doubling from `retry_min` up to `retry_max` seconds, per host.
    retry_min: float = 60.0
    retry_max: float = 3600.0

    def __post_init__(self) -> None:
        if not self.directory.startswith(("https://", "http://")):
            raise ValidationError("acme.directory", f"must be an http(s):// URL, got {self.directory!r}")
        if self.email is not None and ("@" not in self.email or any(c.isspace() for c in self.email)):
            raise ValidationError("acme.email", f"{self.email!r} is not an e-mail address")
        for host in self.hosts:
            if not HOST_RE.fullmatch(host):
                raise ValidationError("acme.hosts", f"{host!r} is not a host name (no wildcards: HTTP-01 "
                                      "cannot prove them)")
        if not 0 < self.retry_min <= self.retry_max:
            raise ValidationError("acme.retry_min", "must be > 0 and at most retry_max")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    listen: str = "127.0.0.1:8443"
    certs_dir: str | None = None  # NAME.crt (PEM: leaf, then chain) + NAME.key, re-read every 2 s
    default: str = DEFAULT_REJECT  # no SNI or an unknown name: "reject", or a host whose cert is served
    redirect_http: bool = True  # the plain listener answers 308 to https:// for hosts with a certificate
    hsts: float = 0.0  # Strict-Transport-Security max-age in seconds; 0: no header
    min_version: str = "TLSv1.2"
    handshake_timeout: float = 10.0  # a handshake not done by then is closed
    # Handshakes under way at once from one client address: one address cannot take every slot, while a
    # burst of new connections from one busy client (a NAT, a load generator held by a big-bang gap)
    # still gets through. More connections wait for a slot (up to 4 times as many, `max_waiting_per_client`).
    max_handshakes_per_client: int = 256
    reload_interval: float = 2.0  # seconds between re-reads of the certificate directories
    session_tickets: bool = True  # TLS session resumption by tickets (as nginx's ssl_session_tickets)
    acme: AcmeConfig | None = None
    state_dir: str = field(default=".turnout")  # where ACME keeps its account and certificates

    def __post_init__(self) -> None:
        if self.min_version not in MIN_VERSIONS:
            raise ValidationError("min_version", f"must be one of {', '.join(MIN_VERSIONS)} (TLS 1.0 and 1.1 "
                                  f"are refused), got {self.min_version!r}")
        if self.default != DEFAULT_REJECT and not HOST_RE.fullmatch(self.default):
            raise ValidationError("default", f"must be \"reject\" or a host name, got {self.default!r}")
        if self.certs_dir is None and self.acme is None:
            raise ValidationError("certs_dir", "required (or configure [proxy.tls.acme])")
        for key in ("handshake_timeout", "reload_interval"):
            if not getattr(self, key) > 0:
                raise ValidationError(key, f"must be longer than 0, got {getattr(self, key)!r}")
        if self.hsts < 0:
            raise ValidationError("hsts", f"must be 0 or longer, got {self.hsts!r}")
        if not 1 <= self.max_handshakes_per_client <= 100_000:
            raise ValidationError("max_handshakes_per_client", "must be between 1 and 100000")

    @property
    def max_waiting_per_client(self) -> int:
        """Connections of one address that may wait for a handshake slot (within handshake_timeout) once
        its `max_handshakes_per_client` are under way; one more is cut."""
        return WAITING_PER_RUNNING * self.max_handshakes_per_client

    @property
    def tls_version(self) -> ssl.TLSVersion:
        return MIN_VERSIONS[self.min_version]

    @property
    def hsts_line(self) -> bytes:
        """The header every HTTPS answer carries, or b"" (hsts = 0)."""
        return b"Strict-Transport-Security: max-age=%d\r\n" % int(self.hsts) if self.hsts else b""
