"""The figures of a rehearsal, computed from hand-built records (no sockets)."""

from __future__ import annotations

import json

import pytest

from controller.rehearsal.loadgen import (
    LoadConfig,
    LoadResult,
    Mark,
    Marks,
    Outcome,
    RequestRecord,
    classify,
    version_from_response,
)
from controller.rehearsal.report import DeployInfo, comparison_table, format_table, to_json


def rec(start: float, latency: float = 0.002, outcome: Outcome = Outcome.OK, version: str | None = "v1",
        status: int | None = 200) -> RequestRecord:
    return RequestRecord(f"r{start}", start, start + latency, outcome, status, version, 3, True)


def steady(start: float, stop: float, step: float, version: str) -> list[RequestRecord]:
    count = round((stop - start) / step)
    return [rec(round(start + i * step, 6), version=version) for i in range(count)]


def test_counts_by_outcome_and_failed_by_proxy_groups_proxy_connect_and_timeout():
    records = [rec(0.0), rec(0.1), rec(0.2, outcome=Outcome.PROXY_ERROR, status=503, version=None),
               rec(0.3, outcome=Outcome.CONNECT_ERROR, status=None, version=None),
               rec(0.4, outcome=Outcome.TIMEOUT, status=None, version=None),
               rec(0.5, outcome=Outcome.APP_ERROR, status=500),
               rec(0.6, outcome=Outcome.TRUNCATED)]
    result = LoadResult(records, duration=1.0, not_sent=2)
    assert result.summary() == {"sent": 7, "succeeded": 2, "failed_by_proxy": 3, "app_errors": 1,
                                "truncated": 1, "misrouted": 0, "not_sent": 2}


def test_misrouted_only_for_requests_started_after_the_switch_acknowledged_mark():
    records = [rec(0.10, version="v1"), rec(0.19, latency=0.05, version="v1"),  # started before: fine
               rec(0.21, version="v1"), rec(0.22, version="v2"), rec(0.23, version="v1"),
               rec(0.24, version=None)]  # cannot tell the version: not called misrouted
    marks = [Mark("deploy_started", 0.05), Mark("switch_acknowledged", 0.20, expect_version="v2")]
    result = LoadResult(records, marks=marks, duration=0.3)
    assert result.misrouted == 2
    assert result.succeeded == 4
    assert [o.value for o in result.outcomes] == ["ok", "ok", "misrouted", "ok", "misrouted", "ok"]


def test_a_later_switch_mark_without_version_clears_the_expectation():
    marks = [Mark("switch_acknowledged", 0.1, "v2"), Mark("switch_acknowledged", 0.5, None)]
    result = LoadResult([rec(0.2, version="v1"), rec(0.6, version="v1")], marks=marks, duration=1.0)
    assert result.misrouted == 1
    assert result.expected_version_at(0.2) == "v2" and result.expected_version_at(0.6) is None


def test_latency_phases_split_by_start_time_at_the_deploy_marks():
    records = ([rec(0.1 * i, latency=0.001) for i in range(10)]  # before: 1 ms
               + [rec(1.0 + 0.01 * i, latency=0.010 * (i + 1)) for i in range(100)]  # during: 10..1000 ms
               + [rec(3.0, latency=0.004), rec(3.5, latency=0.002)])  # after
    marks = [Mark("deploy_started", 1.0), Mark("deploy_finished", 2.0)]
    phases = LoadResult(records, marks=marks, duration=4.0).phases()
    assert list(phases) == ["before", "during", "after"]
    assert phases["before"].count == 10 and phases["before"].p50 == pytest.approx(0.001)
    assert phases["during"].p50 == pytest.approx(0.50) and phases["during"].p99 == pytest.approx(0.99)
    assert phases["during"].max == pytest.approx(1.0)
    assert phases["after"].count == 2 and phases["after"].max == pytest.approx(0.004)


def test_latency_is_one_phase_without_marks_and_ignores_requests_without_an_answer():
    records = [rec(0.0, latency=0.003), rec(0.1, latency=5.0, outcome=Outcome.TIMEOUT, status=None)]
    phases = LoadResult(records, duration=1.0).phases()
    assert list(phases) == ["all"]
    assert phases["all"].count == 1 and phases["all"].max == pytest.approx(0.003)


def test_longest_gap_is_the_big_bang_gap_between_good_answers():
    records = (steady(0.0, 2.0, 0.01, "v1")
               + [rec(2.0 + 0.01 * i, outcome=Outcome.CONNECT_ERROR, status=None, version=None)
                  for i in range(50)]
               + steady(2.5, 4.0, 0.01, "v2"))
    gap = LoadResult(records, duration=4.0).longest_gap()
    # last good answer ends at 1.99 + 0.002, the next at 2.5 + 0.002
    assert gap.start == pytest.approx(1.992) and gap.end == pytest.approx(2.502)
    assert gap.length == pytest.approx(0.51)


def test_longest_gap_counts_a_dead_tail_and_a_run_without_answers():
    records = steady(0.0, 1.0, 0.01, "v1")
    assert LoadResult(records, duration=3.0).longest_gap().length == pytest.approx(3.0 - 0.992)
    assert LoadResult([], duration=2.0).longest_gap().length == pytest.approx(2.0)


def test_both_versions_window_spans_the_mixed_100ms_buckets():
    mixed = [rec(1.00, version="v1"), rec(1.01, version="v2"), rec(1.05, version="v1"),
             rec(1.12, version="v2"), rec(1.15, version="v1"), rec(1.16, version="v2")]
    records = [*steady(0.0, 1.0, 0.01, "v1"), *mixed, *steady(1.2, 2.0, 0.01, "v2")]
    window = LoadResult(records, duration=2.0).both_versions_window()
    assert window is not None
    assert window.start == pytest.approx(1.002) and window.end == pytest.approx(1.162)


def test_no_both_versions_window_when_the_switch_falls_between_buckets():
    records = steady(0.0, 1.0, 0.01, "v1") + steady(1.0, 2.0, 0.01, "v2")
    result = LoadResult(records, duration=2.0)
    assert result.both_versions_window() is None
    assert result.versions() == ["v1", "v2"]


def test_timeline_counts_versions_and_errors_per_second_of_answer():
    second_one = [rec(1.1, version="v1"), rec(1.2, version="v2"),
                  rec(1.3, outcome=Outcome.PROXY_ERROR, status=503, version=None),
                  rec(1.4, outcome=Outcome.PROXY_ERROR, status=503, version=None),
                  rec(1.5, version="v1")]  # misrouted after the switch below
    records = [*steady(0.0, 1.0, 0.1, "v1"), *second_one, *steady(2.0, 2.5, 0.1, "v2")]  # 10 x v1 first
    marks = [Mark("switch_acknowledged", 1.45, "v2")]
    timeline = LoadResult(records, marks=marks, duration=3.0).timeline()
    assert [t.second for t in timeline] == [0, 1, 2]
    assert timeline[0].versions == {"v1": 10} and timeline[0].errors == {}
    assert timeline[1].versions == {"v1": 2, "v2": 1} and timeline[1].errors == {"proxy_error": 2}
    assert timeline[1].misrouted == 1
    assert timeline[2].versions == {"v2": 5} and timeline[2].total == 5


def test_to_dict_is_json_serialisable_with_marks_relative_to_the_run():
    clock = iter([100.5, 101.25]).__next__
    marks = Marks(clock=clock)
    marks.mark("deploy_started")
    marks.mark("switch_acknowledged", expect_version="v2", step=1)
    result = LoadResult([rec(0.6, version="v2")], marks=marks.relative_to(100.0), duration=2.0)
    data = json.loads(json.dumps(result.to_dict(include_records=True)))
    assert data["marks"] == [{"name": "deploy_started", "at": 0.5, "expect_version": None},
                             {"name": "switch_acknowledged", "at": 1.25, "expect_version": "v2",
                              "data": {"step": 1}}]
    assert data["summary"]["sent"] == 1 and data["records"][0]["version"] == "v2"
    assert data["latency"]["before"]["count"] == 0 and data["latency"]["during"]["p50_ms"] == 2.0


def test_classify_and_version_extraction():
    assert classify(200, {}, True) is Outcome.OK
    assert classify(302, {}, True) is Outcome.OK
    assert classify(503, {"X-Turnout-Error": "no_upstream"}, True) is Outcome.PROXY_ERROR
    assert classify(503, {}, True) is Outcome.APP_ERROR
    assert classify(200, {}, False) is Outcome.TRUNCATED
    assert version_from_response({}, b"v2\n") == "v2"
    assert version_from_response({"X-Version": "v7"}, b"v2\n") == "v7"
    assert version_from_response({}, b"<!doctype html><html>") is None
    assert version_from_response({}, b"502 Bad Gateway (unreachable)\n") is None


@pytest.mark.parametrize("kwargs", [{}, {"rate": 10, "concurrency": 2}, {"rate": 0},
                                    {"rate": 10, "new_connections": 1.5}, {"rate": 10, "path": "x"}])
def test_load_config_rejects_what_it_cannot_run(kwargs):
    with pytest.raises(ValueError, match="LoadConfig"):
        LoadConfig(url="http://127.0.0.1:1", duration=1.0, **kwargs)


def _bluegreen_result() -> LoadResult:
    records = (steady(0.0, 1.0, 0.01, "v1")
               + [rec(1.0 + 0.01 * i, outcome=Outcome.PROXY_ERROR, status=502, version=None)
                  for i in range(3)]
               + steady(1.03, 2.0, 0.01, "v2") + [rec(1.5, version="v1")])
    marks = [Mark("deploy_started", 0.5), Mark("switch_acknowledged", 1.0, "v2"),
             Mark("deploy_finished", 1.75)]
    return LoadResult(records, marks=marks, duration=2.0, config={"rate": 100.0, "url": "http://x/"})


def test_format_table_shows_the_numbers():
    result = _bluegreen_result()
    deploy = DeployInfo("web", "bluegreen", "v1", "v2", "succeeded", {"drain": 0.25, "total": 1.2},
                        drain={"drained": 4, "overran": 1})
    table = format_table(result, deploy)
    assert "Rehearsal of web: bluegreen v1 -> v2" in table
    lines = {line.split("  ")[1].strip(): line.split()[-1] for line in table.splitlines()
             if line.startswith("  ") and not line.startswith("  -")}
    assert lines["sent"] == "201" and lines["failed by proxy"] == "3" and lines["misrouted"] == "1"
    assert lines["succeeded"] == "197"
    assert "proxy_error 3" in table
    assert "Longest gap without a good answer: 40.0 ms" in table
    assert "Deploy wall time: 1.200 s" in table and "drained 4, overran 1" in table
    assert "REQUESTS LOST" in table


def test_to_json_reports_zero_loss_and_wall_time_from_marks():
    clean = LoadResult(steady(0.0, 1.0, 0.01, "v1"), marks=[Mark("deploy_started", 0.25),
                                                           Mark("deploy_finished", 0.75)], duration=1.0)
    data = to_json(clean, DeployInfo("web", "rolling"))
    assert data["zero_loss"] is True and data["deploy_wall_time"] == pytest.approx(0.5)
    assert to_json(_bluegreen_result())["zero_loss"] is False


def test_comparison_table_has_one_row_per_strategy_with_measured_figures():
    clean = LoadResult(steady(0.0, 1.0, 0.01, "v1"), duration=1.0)
    rows = [(_bluegreen_result(), DeployInfo("web", "bluegreen", timings={"total": 2.5})),
            (clean, DeployInfo("web", "bigbang", peak_extra_containers=0)),
            (clean, DeployInfo("web", "canary"))]
    table = comparison_table(rows).splitlines()
    bluegreen = next(line for line in table if line.strip().startswith("bluegreen")).split()
    # the stale v1 answer at 1.5 s shares its 100 ms bucket with v2 answers: 1.502 .. 1.592
    assert bluegreen[1:5] == ["40.0", "3", "1", "90.0"] and bluegreen[5] == "2.50"
    assert "instant (kept set)" in table[2] and "+1 full set" in table[2]
    assert "redeploy" in table[3] and "trivial" in table[3]
    assert "automatic on errors" in table[4] and "high" in table[4]
