"""The rule that judges a new version against the old one (controller/analysis.py), on counters."""

from __future__ import annotations

import pytest

from controller.analysis import error_breach, latency_breach
from controller.config.model import CanaryOptions
from proxy.metrics import PoolCounters, PoolStats

OPTIONS = CanaryOptions(max_error_rate=0.05, max_p99_ratio=2.0, min_requests=20)


def counters(ok: int = 0, failed: int = 0, status: int = 500, seconds: float = 0.0008,
             slow: int = 0, slow_seconds: float = 0.0) -> PoolCounters:
    stats = PoolStats()
    for _ in range(ok):
        stats.observe(200, seconds)
    for _ in range(failed):
        stats.observe(status, seconds)
    for _ in range(slow):
        stats.observe(200, slow_seconds)
    return stats.snapshot()


def test_a_version_failing_alone_breaches():
    breach = error_breach(counters(ok=10, failed=10), counters(ok=380), OPTIONS)
    assert breach is not None and breach.startswith("error rate 50.0% over 20 requests")


def test_without_a_baseline_the_rate_alone_is_judged():
    assert error_breach(counters(ok=18, failed=2), None, OPTIONS) is not None  # 10% > 5%
    assert error_breach(counters(ok=19, failed=1), counters(ok=5), OPTIONS) is None  # 5%: within
    assert error_breach(counters(ok=19, failed=1), None, OPTIONS) is None


def test_too_few_requests_are_not_judged():
    assert error_breach(counters(failed=19), counters(ok=400), OPTIONS) is None


@pytest.mark.parametrize(("new", "old"), [
    ((9, 11), (190, 190)),  # the old errs at 50% too; the new one's 55% is chance (issue 10, item 13)
    ((5, 15), (190, 190)),  # 75% over 20 requests against 50%: still within chance (3 sigma)
    ((100, 100), (2000, 2000)),  # both fail half their requests: whoever makes them fail, not the version
    ((0, 20), (0, 400)),  # everything fails on both
])
def test_a_client_that_makes_both_versions_fail_does_not_breach(new, old):
    assert error_breach(counters(*new), counters(*old), OPTIONS) is None


def test_a_real_difference_over_a_failing_baseline_still_breaches():
    assert error_breach(counters(ok=20, failed=80), counters(ok=1000, failed=1000), OPTIONS) is not None
    assert error_breach(counters(ok=80, failed=20), counters(ok=1000, failed=20), OPTIONS) is not None


def test_501_and_505_are_not_errors():
    assert error_breach(counters(ok=0, failed=40, status=501), counters(ok=400), OPTIONS) is None
    assert error_breach(counters(ok=0, failed=40, status=505), None, OPTIONS) is None
    assert error_breach(counters(ok=0, failed=40, status=502), counters(ok=400), OPTIONS) is not None


def test_p99_a_hundred_times_the_old_one_breaches():
    slow = counters(ok=100, seconds=0.09)  # ~100 ms against ~0.9 ms
    breach = latency_breach(slow, counters(ok=1000, seconds=0.0009), OPTIONS)
    assert breach is not None and breach.startswith("p99 latency over 0.05s")


@pytest.mark.parametrize(("new", "old"), [
    (counters(ok=100, seconds=0.0011), counters(ok=1000, seconds=0.0009)),  # adjacent buckets: 2.5x bounds
    (counters(ok=100, seconds=0.02), counters(ok=1000, seconds=0.004)),  # 5x, but under 25 ms apart
    (counters(ok=99, seconds=0.0009, slow=1, slow_seconds=3.0), counters(ok=1000, seconds=0.0009)),  # 1 cold
    (counters(ok=99, seconds=0.09), counters(ok=1000, seconds=0.0009)),  # under 100 requests: not yet
    (counters(ok=100, seconds=0.09), counters(ok=19, seconds=0.0009)),  # no baseline to compare with
])
def test_p99_noise_does_not_breach(new, old):
    assert latency_breach(new, old, OPTIONS) is None
