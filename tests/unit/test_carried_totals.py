"""proxy/carried_totals.py: a hand-over's counters, read in one process and added in the next."""

from __future__ import annotations

import json

import pytest

from proxy.carried_totals import TotalsRefused, add_totals, read_totals
from proxy.metrics import Metrics


def old_metrics() -> Metrics:
    metrics = Metrics()
    web = metrics.pool("web", "blue")
    for status, seconds in ((200, 0.002), (200, 0.3), (502, 1.2)):
        web.observe(status, seconds, proxy_made=status == 502)
    metrics.pool("web", "green").overridden.observe(404, 0.001)
    metrics.rule("web", "beta").matches = 7
    metrics.mirror("web").sent = 3
    metrics.unrouted[4] = 2
    metrics.hold_timeouts["web"] = 1
    metrics.drain_aborted, metrics.drain_replayed, metrics.internal_errors = 4, 2, 1
    return metrics


def test_the_new_process_goes_on_from_the_old_totals_plus_its_own():
    old, new = old_metrics(), Metrics()
    new.pool("web", "blue").observe(200, 0.001)  # served by the new process before the commit
    new.unrouted[4] = 1
    add_totals(json.loads(json.dumps(read_totals(old))), new)  # as sent in the commit's answer
    blue = new.pool("web", "blue").snapshot()
    assert blue.classes == (0, 3, 0, 0, 1) and blue.proxy_errors == 1 and sum(blue.buckets) == 4
    assert new.pool("web", "green").overridden.snapshot().requests == 1
    assert new.rule("web", "beta").matches == 7 and new.mirror("web").sent == 3
    assert (new.unrouted[4], new.hold_timeouts) == (3, {"web": 1})
    assert (new.drain_aborted, new.drain_replayed, new.internal_errors) == (4, 2, 1)
    assert new.failed("web") == 2  # the proxy's 502 and the hold timeout, as status reads them


def test_totals_of_a_process_from_before_drain_replays_still_add():
    totals = read_totals(old_metrics())
    del totals["drain_replayed"]
    new = Metrics()
    add_totals(totals, new)
    assert (new.drain_aborted, new.drain_replayed) == (4, 0)


@pytest.mark.parametrize("damage", ["version", "buckets", "negative", "rules", "replayed"])
def test_a_reading_that_does_not_fit_adds_nothing(damage):
    totals = read_totals(old_metrics())
    if damage == "version":
        totals["version"] = 99
    elif damage == "buckets":
        totals["pools"][1]["buckets"] = [1, 2]  # another histogram's bounds
    elif damage == "negative":
        totals["drain_aborted"] = -1
    elif damage == "replayed":
        totals["drain_replayed"] = "2"
    else:
        totals["rules"] = [["web", "beta"]]
    new = Metrics()
    with pytest.raises(TotalsRefused):
        add_totals(totals, new)
    assert new.pools == {} and new.rules == {} and new.drain_aborted == 0
