"""The HTML report renders its chart in a real headless Chromium, offline."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from controller.rehearsal.loadgen import LoadResult, Mark, Outcome, RequestRecord
from controller.rehearsal.report import DeployInfo, write_html
from helpers.chromium import chromium

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000"]


def rehearsal() -> LoadResult:
    """Three seconds of a blue-green switch at 1.5 s, with a burst of proxy errors around it."""
    records = []
    for i in range(300):
        start = i * 0.01
        version = "v1" if start < 1.5 else "v2"
        failed = 1.4 < start < 1.6 and i % 3 == 0
        records.append(RequestRecord(f"r{i}", start, start + 0.002,
                                     Outcome.PROXY_ERROR if failed else Outcome.OK,
                                     503 if failed else 200, None if failed else version, 3, True))
    marks = [Mark("deploy_started", 1.0), Mark("switch_acknowledged", 1.5, "v2"),
             Mark("deploy_finished", 2.0)]
    return LoadResult(records, marks=marks, duration=3.0, config={"rate": 100.0, "url": "http://127.0.0.1/"})


def test_html_report_renders_the_timeline_chart_in_headless_chromium(tmp_path: Path):
    browser = chromium()
    deploy = DeployInfo("web", "bluegreen", "v1", "v2", "succeeded", {"total": 1.0})
    page = write_html(tmp_path / "report.html", rehearsal(), deploy)
    text = page.read_text(encoding="utf-8")
    # offline: plotly.js is inlined, nothing is loaded from elsewhere
    assert not re.search(r"<script[^>]+src=", text)
    embedded = re.search(r'<script type="application/json" id="turnout-report">(.*?)</script>', text, re.S)
    assert embedded and json.loads(embedded.group(1))["load"]["summary"]["failed_by_proxy"] == 7

    dom = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    # plotly only writes its SVG (and the legend and annotation texts) once the chart has rendered
    assert 'class="main-svg"' in dom
    for name in ("v1", "v2", "errors", "proxy_error/s", "switch_acknowledged (v2)", "deploy_finished"):
        assert f'data-unformatted="{name}"' in dom, name
    bars = re.findall(r'<g class="point"><path d="M([^"]+)" style="[^"]*fill: (rgb\([^)]*\))', dom)
    drawn = {fill for path, fill in bars if path != "0,0Z"}
    # the v1 and v2 shares and the errors were drawn as bars, in their colours
    assert {"rgb(31, 119, 180)", "rgb(44, 160, 44)", "rgb(214, 39, 40)"} <= drawn, drawn
    assert "Rehearsal of web: bluegreen v1 -&gt; v2" in dom
