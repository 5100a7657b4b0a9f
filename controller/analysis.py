"""Is the new version worse than the old one? The rule a canary's steps and the post-switch verification
share, read from the proxy's per-pool counters.

What is counted (proxy/metrics.py): errors are 500 and 502-504 only (501 and 505 answer a client's
unknown method or version, which anyone can send), and requests a tester routed with the pool override
are kept apart, so no client can choose the pool its failures land on.

Errors. The new version is judged against the old one's rate (the baseline): a client that makes both
versions fail (an attack, a broken dependency) must not roll the new one back. It breaches when it saw
`min_requests` requests and its error rate is more than `max_error_rate` above the baseline's, by more
than chance explains (`NOISE_SIGMAS` standard errors of the difference of the two rates). Without a
baseline of `min_requests` requests, its own rate must stay within `max_error_rate`.

Latency. The counters are histograms, so a p99 is a bucket (lower, upper]. The new version breaches
when even the lower bound of its p99 bucket is over `max_p99_ratio` times the upper bound of the
baseline's and more than `P99_SLACK` above it, once it saw `P99_MIN_REQUESTS` requests (so one slow
first request of a fresh container is not its p99).
"""

from __future__ import annotations

import math

from proxy.metrics import LATENCY_BUCKETS, PoolCounters

from .config.model import CanaryOptions

NOISE_SIGMAS = 3.0
P99_SLACK = 0.025  # seconds: p99 differences below this are scheduling noise, never a reason to roll back
P99_MIN_REQUESTS = 100


def error_breach(new: PoolCounters | None, old: PoolCounters | None, options: CanaryOptions) -> str | None:
    """Why the new version's errors breach (a phrase starting "error rate"), or None."""
    if new is None or new.requests < options.min_requests:
        return None
    rate = new.error_rate
    allowed = options.max_error_rate
    if old is None or old.requests < max(1, options.min_requests):
        if rate > allowed:
            return (f"error rate {rate:.1%} over {new.requests} requests exceeds {allowed:.1%} "
                    f"(no baseline from the old version)")
        return None
    old_rate = old.error_rate
    excess = rate - old_rate
    if excess <= allowed or excess <= NOISE_SIGMAS * _standard_error(new, old):
        return None
    return (f"error rate {rate:.1%} over {new.requests} requests is {excess:.1%} above the old version's "
            f"{old_rate:.1%} over {old.requests} (allowed: {allowed:.1%})")


def latency_breach(new: PoolCounters | None, old: PoolCounters | None,
                   options: CanaryOptions) -> str | None:
    """Why the new version's p99 latency breaches (a phrase starting "p99 latency"), or None."""
    if (new is None or old is None or new.requests < max(options.min_requests, P99_MIN_REQUESTS)
            or old.requests < options.min_requests):
        return None
    new_upper, old_upper = new.quantile(0.99), old.quantile(0.99)
    if new_upper is None or old_upper is None:
        return None
    new_lower = _lower_bound(new_upper)
    if new_lower > options.max_p99_ratio * old_upper and new_lower - old_upper > P99_SLACK:
        return (f"p99 latency over {new_lower:g}s is more than {options.max_p99_ratio:g}x the old "
                f"version's p99 (at most {old_upper:g}s)")
    return None


def _standard_error(new: PoolCounters, old: PoolCounters) -> float:
    """Of the difference of two error rates, from their pooled rate (0 when neither or both all fail)."""
    pooled = (new.errors + old.errors) / (new.requests + old.requests)
    return math.sqrt(pooled * (1 - pooled) * (1 / new.requests + 1 / old.requests))


def _lower_bound(upper: float) -> float:
    """The lower bound of the latency bucket whose upper bound is `upper` (inf: the last bound)."""
    if upper == math.inf:
        return LATENCY_BUCKETS[-1]
    index = LATENCY_BUCKETS.index(upper)
    return LATENCY_BUCKETS[index - 1] if index else 0.0
