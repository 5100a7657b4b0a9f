"""When ACME renews (two-thirds of the lifetime, jittered per certificate) and how it backs off."""

from __future__ import annotations

import datetime as dt
import random

from proxy.tls.acme import JITTER, renewal_due, retry_delay
from proxy.tls.certs import Certificate
from proxy.tls.config import AcmeConfig

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def cert(serial: int, days: int = 90) -> Certificate:
    return Certificate(name="h", source="acme", cert_path=None, hosts=("h.test",), issuer="CA",  # type: ignore
                       not_before=START, not_after=START + dt.timedelta(days=days), serial=serial,
                       context=None)  # type: ignore[arg-type]


def test_renewal_is_two_thirds_into_the_lifetime_with_a_stable_jitter():
    dues = [renewal_due(cert(serial)) for serial in range(1, 200)]
    sixty_days = START + dt.timedelta(days=60)
    spread = dt.timedelta(days=90 * JITTER)
    assert all(sixty_days - spread <= due <= sixty_days + spread for due in dues)
    assert len(set(dues)) > 150  # spread out, not all at once
    assert renewal_due(cert(7)) == renewal_due(cert(7))  # the same certificate: the same instant


def test_retry_delay_doubles_up_to_the_bound():
    config = AcmeConfig(retry_min=60, retry_max=3600)
    rng = random.Random(1)
    delays = [retry_delay(n, config, rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, 1):
        base = min(3600, 60 * 2 ** (n - 1))
        assert 0.9 * base <= delay <= 1.1 * base
