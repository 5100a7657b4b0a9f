"""The proxy's own settings: one frozen dataclass, validated in one place, with embedded defaults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from .errors import ValidationError
from .tls.config import TlsConfig

ACCESS_LOG_FORMATS = ("json", "combined")
MIN_ADMIN_TOKEN = 32  # characters; a shorter bearer token is refused (`secrets.token_urlsafe(32)` gives 43)
# Visible ASCII, no spaces: what fits a bearer token in an `Authorization` header unquoted.
_TOKEN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: str = "127.0.0.1:8000"
    admin_socket: str = ".turnout/admin.sock"  # HTTP over a unix socket, mode 0600
    admin_tcp: str | None = None  # e.g. "127.0.0.1:8001"; requires admin_token
    admin_token: str | None = None  # at least MIN_ADMIN_TOKEN visible ASCII characters
    # Where remote proxies (`turnout serve --role proxy`) pull the routing table; requires routing_token,
    # a token of its own that reads the table and steers nothing (controller/routing_api.py). It may
    # listen beyond loopback: the proxies are on other nodes.
    routing_listen: str | None = None
    routing_token: str | None = None
    proxy_ack_timeout: float = 10.0  # a routing change waits this long for every remote proxy to apply it
    proxy_unseen_timeout: float = 5.0  # a remote proxy not heard from for this long leaves the set
    # Timeouts in seconds.
    connect_timeout: float = 5.0  # opening a connection to an upstream
    header_timeout: float = 10.0  # a client must send its whole request head within this (slowloris)
    body_idle_timeout: float = 30.0  # a client sending a body may pause at most this long
    idle_timeout: float = 60.0  # an idle keep-alive client connection is closed after this
    upstream_timeout: float = 60.0  # waiting for an upstream's response head
    hold_timeout: float = 10.0  # a request waits this long for an upstream to appear, then 503
    drain_timeout: float = 30.0  # in-flight requests on a removed upstream get this long
    # Limits.
    max_header_bytes: int = 32 * 1024  # request line + headers
    max_body_bytes: int = 0  # 0: unlimited (streamed, never buffered whole)
    max_connections: int = 10_000
    # X-Forwarded-* sent by clients are replaced unless the peer is one of these addresses.
    trusted_proxies: tuple[str, ...] = ()
    retries: int = 1  # extra attempts on another upstream when connecting failed (idempotent only)
    # One line per finished request (proxy/access_log.py): True to stderr, a path to that file (appended,
    # reopened on SIGHUP), False off; in `access_log_format`; `access_log_sample` of the 2xx answers (the
    # rest, and every proxy-made error, always).
    access_log: bool | str = True
    access_log_format: str = "json"  # or "combined" (nginx's)
    access_log_sample: float = 1.0
    tls: TlsConfig | None = None  # the HTTPS listener ([proxy.tls]); None: plain HTTP only
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Cross-field checks; a ValidationError names the key (`admin_tcp`), its reader adds where."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_timeout") and (not isinstance(value, int | float) or value <= 0):
                raise ValidationError(f.name, f"must be a positive number of seconds, got {value!r}")
        if self.admin_tcp and not self.admin_token:
            raise ValidationError("admin_tcp", "a TCP admin listener requires proxy.admin_token")
        if self.admin_tcp and self.admin_tcp.rpartition(":")[0] not in ("127.0.0.1", "[::1]", "localhost"):
            raise ValidationError("admin_tcp", "the admin API listens on loopback only")
        for key in ("admin_token", "routing_token"):
            check_token(key, getattr(self, key))
        if self.routing_listen and not self.routing_token:
            raise ValidationError("routing_listen", "the routing listener requires proxy.routing_token")
        if self.routing_token is not None and self.routing_token == self.admin_token:
            raise ValidationError("routing_token", "must differ from admin_token (a proxy's token must "
                                  "not steer deploys)")
        where = self.access_log
        if not isinstance(where, bool) and (not isinstance(where, str) or not where.strip()):
            raise ValidationError("access_log", f"must be true, false or a file path, got {where!r}")
        if self.access_log_format not in ACCESS_LOG_FORMATS:
            raise ValidationError("access_log_format", f"must be one of {', '.join(ACCESS_LOG_FORMATS)}, "
                                  f"got {self.access_log_format!r}")
        sample = self.access_log_sample
        if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
            raise ValidationError("access_log_sample", f"must be a share of 2xx answers to log, more than 0 "
                                  f"and at most 1 (0.1: one in ten), got {sample!r}")
        if self.tls is not None and self.tls.listen == self.listen and not self.listen.endswith(":0"):
            raise ValidationError("tls.listen", f"{self.tls.listen} is the plain listener's address too")
        if self.max_header_bytes < 1024:
            raise ValidationError("max_header_bytes", "must be at least 1024")

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def check_token(key: str, token: str | None) -> None:
    """A bearer token: MIN_ADMIN_TOKEN or more visible ASCII characters (ValidationError naming `key`)."""
    if token is None:
        return
    if not _TOKEN.fullmatch(token):
        raise ValidationError(key, "must be visible ASCII characters without spaces")
    if len(token) < MIN_ADMIN_TOKEN:
        raise ValidationError(key, f"must be at least {MIN_ADMIN_TOKEN} characters, got {len(token)} (make "
                              "one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
