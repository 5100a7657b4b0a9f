"""The certificates being served, by name, swapped in one assignment.

`CertStore.reload()` re-reads its directories (the static `certs_dir`, and ACME's in the state dir): a
pair whose files changed is loaded into a fresh context and validated (`certs.load_pair`) before it may
replace anything; a bad pair keeps the certificate it would have replaced and its error names the file.
The new `SniMap` is built aside and installed with one assignment, so a handshake sees the old map or
the new one, never half of each; connections already open keep the context they were made with.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .certs import CertError, Certificate, load_pair, utcnow
from .config import DEFAULT_REJECT, TlsConfig

log = structlog.get_logger("turnout.proxy.tls")

SOURCE_ORDER = ("static", "acme")  # when two certificates name one host, the operator's own wins
Stamp = tuple[tuple[int, int, int], ...]  # (inode, size, mtime) of the .crt and the .key


@dataclass(frozen=True, slots=True)
class SniMap:
    """Host name -> certificate: exact names first, then one-label wildcards; `default` for the rest."""

    exact: dict[str, Certificate] = field(default_factory=dict)
    wildcard: dict[str, Certificate] = field(default_factory=dict)  # "example.com" for "*.example.com"
    default: Certificate | None = None

    def find(self, host: str) -> Certificate | None:
        """The certificate for `host` (lower-case, no port), without the default."""
        cert = self.exact.get(host)
        if cert is None:
            dot = host.find(".")
            if dot > 0:
                cert = self.wildcard.get(host[dot + 1:])
        return cert


@dataclass(slots=True)
class _Pair:
    stamp: Stamp | None  # of the files last tried (loaded or refused)
    cert: Certificate | None  # what is served from this pair (the last good one)
    error: CertError | None  # why the last try failed (the current files are not served)


class CertStore:
    def __init__(self, config: TlsConfig, directories: list[tuple[Path, str]]) -> None:
        self.config = config
        self.directories = directories  # (directory, source) in SOURCE_ORDER
        self.map = SniMap()
        self.pairs: dict[Path, _Pair] = {}  # by the .crt path
        self.dir_errors: dict[Path, str] = {}
        self.reloads = 0

    # ------------------------------------------------------------------ reading
    def reload(self, now: dt.datetime | None = None) -> bool:
        """Re-read every directory; returns whether the map changed. Never raises for bad files."""
        now = now or utcnow()
        changed = False
        seen: set[Path] = set()
        for directory, source in self.directories:
            try:
                names = sorted(p for p in os.listdir(directory) if p.endswith(".crt"))
            except OSError as exc:
                problem = f"cannot be read: {exc.strerror or exc} (the certificates loaded before are kept)"
                if self.dir_errors.get(directory) != problem:
                    log.error("tls.certs_dir_unreadable", directory=str(directory), error=problem)
                self.dir_errors[directory] = problem
                seen.update(p for p in self.pairs if p.parent == directory)  # keep them: no evidence
                continue
            self.dir_errors.pop(directory, None)
            for name in names:
                cert_path = directory / name
                seen.add(cert_path)
                changed |= self._try_pair(cert_path, source, now)
        for gone in [p for p in self.pairs if p not in seen]:
            pair = self.pairs.pop(gone)
            if pair.cert is not None:
                log.info("tls.cert_removed", file=str(gone), hosts=list(pair.cert.hosts))
                changed = True
        if changed or self.reloads == 0:
            self.map = self._build_map()  # the one assignment a handshake can observe
        self.reloads += 1
        return changed

    def _try_pair(self, cert_path: Path, source: str, now: dt.datetime) -> bool:
        key_path = cert_path.with_suffix(".key")
        stamp = _stamp(cert_path, key_path)
        pair = self.pairs.get(cert_path)
        if pair is not None and pair.stamp == stamp:
            return False  # the same files as last time: loaded, or refused and already reported
        if pair is None:
            pair = self.pairs[cert_path] = _Pair(None, None, None)
        pair.stamp = stamp
        try:
            cert = load_pair(cert_path, key_path, source=source, min_version=self.config.tls_version, now=now,
                             tickets=self.config.session_tickets)
        except CertError as exc:
            pair.error = exc
            log.error("tls.cert_refused", file=str(exc.path), error=exc.problem,
                      kept=str(pair.cert.cert_path) if pair.cert is not None else None)
            return False
        pair.error = None
        old, pair.cert = pair.cert, cert
        log.info("tls.cert_loaded", file=str(cert_path), source=source, hosts=list(cert.hosts),
                 not_after=cert.not_after.isoformat(), replaced=old is not None)
        return True

    def _build_map(self) -> SniMap:
        exact: dict[str, Certificate] = {}
        wildcard: dict[str, Certificate] = {}
        rank = {source: i for i, source in enumerate(SOURCE_ORDER)}
        certs = sorted((p.cert for p in self.pairs.values() if p.cert is not None),
                       key=lambda c: (rank.get(c.source, len(rank)), -c.not_after.timestamp()))
        for cert in certs:  # the first certificate to name a host keeps it
            for host in cert.hosts:
                if host.startswith("*."):
                    wildcard.setdefault(host[2:], cert)
                else:
                    exact.setdefault(host, cert)
        sni = SniMap(exact, wildcard)
        default = self.config.default
        if default != DEFAULT_REJECT:
            sni = SniMap(exact, wildcard, sni.find(default))
        return sni

    # ------------------------------------------------------------------ reading the state
    def certificates(self) -> list[Certificate]:
        return [p.cert for p in self.pairs.values() if p.cert is not None]

    def errors(self) -> list[dict[str, str]]:
        """What could not be loaded, each naming its file (or directory)."""
        found = [{"file": str(d), "error": e} for d, e in self.dir_errors.items()]
        found += [{"file": str(p.error.path), "error": p.error.problem} for _, p in sorted(self.pairs.items())
                  if p.error is not None]
        default = self.config.default
        if default != DEFAULT_REJECT and self.map.default is None:
            found.append({"file": "", "error": f"proxy.tls.default: no certificate names {default!r}; "
                                               "handshakes without a known name are refused"})
        return found

    def describe(self, now: dt.datetime | None = None) -> dict[str, object]:
        return {"certificates": [c.describe(now) for c in sorted(self.certificates(), key=lambda c: c.name)],
                "errors": self.errors(), "default": self.config.default}


def _stamp(*paths: Path) -> Stamp:
    """What tells a file changed; a missing or unreadable file is (0, 0, 0) until it is there."""
    stamps = []
    for path in paths:
        try:
            s = os.stat(path)
        except OSError:
            stamps.append((0, 0, 0))
        else:
            stamps.append((s.st_ino, s.st_size, s.st_mtime_ns))
    return tuple(stamps)
