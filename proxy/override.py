"""Who may pick a pool: the pool override (`X-Turnout-Pool` header, `turnout-pool` cookie).

Testers (and blue-green's preview) reach a pool the weighted draw would not give them, even one at
weight 0. Anyone who can do that can also choose the canary on purpose, so it is off unless a service
opts in (`ServiceSpec.override`):
- "header-secret": the value is `<pool>:<secret>` (pool names hold no ':'); the secret is compared in
  constant time;
- "trusted": the value is `<pool>`, honoured only from clients whose address (the TCP peer, not
  X-Forwarded-For) is in one of `override_networks`.
An override that is not allowed is ignored: the request is routed as if it had none. In every mode the
header and the cookie are stripped before the upstream (`http.py`). Only requests that carry one reach
this module: the proxy's fast lane never does.
"""

from __future__ import annotations

import hmac
import ipaddress

from .specs import ServiceSpec, parse_network

_PEERS_CACHED = 256  # remembered peer verdicts per service (trusted mode)


class Override:
    __slots__ = ("_networks", "_peers", "_secret", "mode")

    def __init__(self, spec: ServiceSpec) -> None:
        self.mode = spec.override
        self._secret = (spec.override_secret or "").encode()
        self._networks = tuple(parse_network("override_networks", n) for n in spec.override_networks)
        self._peers: dict[bytes, bool] = {}

    def pool(self, value: str, peer: bytes) -> str | None:
        """The pool this client asked for, when it may; else None (route as usual)."""
        if self.mode == "header-secret":
            name, colon, secret = value.partition(":")
            if colon and hmac.compare_digest(secret.encode("latin-1"), self._secret):
                return name
            return None
        if self.mode == "trusted" and self._trusted(peer):
            return value
        return None

    def _trusted(self, peer: bytes) -> bool:
        verdict = self._peers.get(peer)
        if verdict is None:
            try:
                address = ipaddress.ip_address(peer.decode("latin-1"))
            except ValueError:  # no address (a unix socket): never trusted
                address = None
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            verdict = address is not None and any(address in network for network in self._networks)
            if len(self._peers) >= _PEERS_CACHED:
                self._peers.clear()
            self._peers[peer] = verdict
        return verdict
