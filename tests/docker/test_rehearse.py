"""`turnout rehearse` end to end: a real deploy under the built-in load, its report and HTML."""

import json

import pytest

from helpers.live import status

pytestmark = pytest.mark.docker


async def test_rehearse_bluegreen_reports_zero_loss_and_writes_html(daemon, tmp_path):
    html = tmp_path / "report.html"
    code, out = await daemon.acli("rehearse", "web", "--image", "turnout-testapp:v2", "--strategy",
                                  "bluegreen", "--rate", "200", "--duration", "5s", "--json",
                                  "--html", str(html))
    assert code == 0, out
    (report,) = json.loads(out)
    summary = report["load"]["summary"]
    assert summary["sent"] >= 500, summary
    assert summary["failed_by_proxy"] == 0 and summary["truncated"] == 0 and summary["misrouted"] == 0
    assert summary["not_sent"] == 0 and report["load"]["config"]["max_in_flight"] == 2048  # the default
    assert report["deploy"]["status"] == "succeeded" and report["deploy"]["to_version"] == "v2"
    assert html.exists() and "plotly" in html.read_text()[:200000].lower()
    assert status(daemon)["stable"]["version"] == "v2"


async def test_rehearse_of_a_failing_version_exits_1_and_old_keeps_serving(daemon, tmp_path):
    code, out = await daemon.acli("rehearse", "web", "--image", "turnout-testapp:crash", "--strategy",
                                  "rolling", "--rate", "100", "--duration", "3s",
                                  "--html", str(tmp_path / "r.html"))
    assert code == 1, out
    assert "failed" in out
    assert status(daemon)["stable"]["version"] == "v1"


async def test_rehearse_needs_a_deployed_service(daemon):
    result = daemon.cli("rehearse", "nope", "--image", "turnout-testapp:v2")
    assert result.returncode == 2
    assert "nope" in result.stderr


async def test_rehearse_bigbang_hold_counts_against_max_in_flight(daemon, tmp_path):
    # Big-bang holds requests while the new set starts: with room for only 4 in flight, the starts
    # due during the hold are skipped (reported as not sent, never as failures).
    code, out = await daemon.acli("rehearse", "web", "--image", "turnout-testapp:v2", "--strategy",
                                  "bigbang", "--rate", "200", "--duration", "4s", "--max-in-flight", "4",
                                  "--json", "--html", str(tmp_path / "r.html"))
    assert code == 0, out
    (report,) = json.loads(out)
    summary = report["load"]["summary"]
    assert report["load"]["config"]["max_in_flight"] == 4
    assert summary["not_sent"] > 0, summary
    assert summary["failed_by_proxy"] == 0 and summary["truncated"] == 0 and summary["misrouted"] == 0
    assert report["deploy"]["status"] == "succeeded"
