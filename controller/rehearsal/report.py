"""How a rehearsal is shown: a terminal table, a JSON document, an HTML page with a timeline chart
(plotly, with plotly.js embedded so the file works offline), and the all-strategies comparison."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .loadgen import DEPLOY_FINISHED, DEPLOY_STARTED, FAILED_BY_PROXY, LoadResult, Outcome

# The seed's comparison: what each strategy costs beyond its measured figures.
ROLLBACK_EASE = {"bigbang": "redeploy", "bluegreen": "instant (kept set)", "rolling": "redeploy",
                 "canary": "automatic on errors"}
COMPLEXITY = {"bigbang": "trivial", "bluegreen": "low", "rolling": "medium", "canary": "high"}
PEAK_EXTRA = {"bigbang": "0", "bluegreen": "+1 full set", "rolling": "+1 batch", "canary": "+canary set"}

_ERROR_COLOURS = {"proxy_error": "#d62728", "connect_error": "#8c1c13", "timeout": "#ff7f0e",
                  "truncated": "#9467bd", "app_error": "#e377c2"}
_VERSION_COLOURS = ["#1f77b4", "#2ca02c", "#17becf", "#bcbd22", "#7f7f7f", "#8c564b"]


@dataclass(frozen=True)
class DeployInfo:
    """What the rehearsal knows about the deploy it ran the load against."""

    service: str
    strategy: str
    from_version: str | None = None
    to_version: str | None = None
    status: str | None = None  # e.g. succeeded, failed, rolled_back
    timings: Mapping[str, float] = field(default_factory=dict)  # phase -> seconds
    drain: Mapping[str, Any] | None = None  # e.g. {"drained": 12, "overran": 0, "deadline": 30.0}
    peak_extra_containers: int | None = None  # containers beyond the steady state, at the peak

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "strategy": self.strategy, "from_version": self.from_version,
                "to_version": self.to_version, "status": self.status, "timings": dict(self.timings),
                "drain": dict(self.drain) if self.drain is not None else None,
                "peak_extra_containers": self.peak_extra_containers}


def strategy_key(strategy: str) -> str:
    return strategy.lower().replace("-", "").replace("_", "")


def deploy_wall_time(result: LoadResult, deploy: DeployInfo | None) -> float | None:
    """The deploy's own total when it reported one, else the time between the deploy marks."""
    if deploy is not None and "total" in deploy.timings:
        return float(deploy.timings["total"])
    started, finished = result.mark_at(DEPLOY_STARTED), result.mark_at(DEPLOY_FINISHED)
    return finished - started if started is not None and finished is not None else None


def is_zero_loss(result: LoadResult) -> bool:
    return result.failed_by_proxy == 0 and result.truncated == 0 and result.misrouted == 0


# ------------------------------------------------------------------------------------------- text
_NUMERIC = re.compile(r"-|[-+]?[0-9][0-9.,]*")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Columns as wide as their widest cell; numeric columns right-aligned, text left-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    numeric = [bool(rows) and all(_NUMERIC.fullmatch(str(r[i])) for r in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if num else str(c).ljust(w)
                 for c, w, num in zip(cells, widths, numeric, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _title(deploy: DeployInfo | None) -> str:
    if deploy is None:
        return "Load report"
    change = f"{deploy.from_version or '?'} -> {deploy.to_version or '?'}"
    status = f"  [{deploy.status}]" if deploy.status else ""
    return f"Rehearsal of {deploy.service}: {deploy.strategy} {change}{status}"


def _load_line(result: LoadResult) -> str:
    cfg = result.config
    mode = f"rate {cfg['rate']:g}/s" if cfg.get("rate") else (
        f"concurrency {cfg['concurrency']}" if cfg.get("concurrency") else "load")
    fresh = cfg.get("new_connections")
    fresh_text = f", {fresh:.0%} new connections" if fresh else ""
    return f"Load: {mode} for {result.duration:.1f} s{fresh_text} -> {cfg.get('url', '?')}"


def format_table(result: LoadResult, deploy: DeployInfo | None = None) -> str:
    """The rehearsal as a terminal report: counts, latency per phase, windows, deploy timings."""
    counts = result.counts
    proxy_detail = ", ".join(f"{o.value} {counts[o]}" for o in sorted(FAILED_BY_PROXY))
    lines = [_title(deploy), _load_line(result), ""]
    lines += _grid(["requests", "count"], [
        ["sent", str(result.sent)],
        ["succeeded", str(result.succeeded)],
        ["failed by proxy", str(result.failed_by_proxy)],
        ["app errors (passed through)", str(result.app_errors)],
        ["truncated", str(result.truncated)],
        ["misrouted", str(result.misrouted)],
        ["not sent (in-flight bound)", str(result.not_sent)],
    ])
    lines.append(f"  failed by proxy = {proxy_detail}")
    lines.append("")
    lines += _grid(["latency (ms)", "count", "p50", "p99", "max"], [
        [phase, str(s.count), _ms(s.p50), _ms(s.p99), _ms(s.max)] for phase, s in result.phases().items()
    ])
    lines.append("")
    window = result.both_versions_window()
    versions = ", ".join(result.versions()) or "none"
    lines.append(f"Versions that answered: {versions}")
    lines.append("Both versions answered: " + (
        f"{_ms(window.length)} ms (from {window.start:.3f} s to {window.end:.3f} s)" if window else "never"))
    gap = result.longest_gap()
    lines.append(f"Longest gap without a good answer: {_ms(gap.length)} ms "
                 f"(from {gap.start:.3f} s to {gap.end:.3f} s)")
    wall = deploy_wall_time(result, deploy)
    if wall is not None:
        lines.append(f"Deploy wall time: {wall:.3f} s")
    if deploy is not None and deploy.timings:
        lines.append("Deploy timings: " + ", ".join(f"{k} {v:.3f} s" for k, v in deploy.timings.items()))
    if deploy is not None and deploy.drain:
        lines.append("Drain: " + ", ".join(f"{k} {v}" for k, v in deploy.drain.items()))
    if result.marks:
        lines.append("Marks: " + ", ".join(f"{m.name} @ {m.at:.3f} s" for m in result.marks))
    lines.append("Verdict: " + ("no request lost" if is_zero_loss(result) else "REQUESTS LOST"))
    return "\n".join(lines)


def comparison_table(rows: Sequence[tuple[LoadResult, DeployInfo]]) -> str:
    """One row per strategy (`--all-strategies`): measured downtime and losses beside each strategy's
    rollback ease, cost in extra containers and complexity."""
    header = ["strategy", "downtime ms", "failed", "misrouted", "both versions ms", "deploy s",
              "rollback", "extra containers", "complexity"]
    body = []
    for result, deploy in rows:
        key = strategy_key(deploy.strategy)
        window = result.both_versions_window()
        wall = deploy_wall_time(result, deploy)
        extra = (str(deploy.peak_extra_containers) if deploy.peak_extra_containers is not None
                 else PEAK_EXTRA.get(key, "?"))
        body.append([deploy.strategy, _ms(result.longest_gap().length),
                     str(result.failed_by_proxy + result.truncated), str(result.misrouted),
                     _ms(window.length) if window else "-", "-" if wall is None else f"{wall:.2f}",
                     ROLLBACK_EASE.get(key, "?"), extra, COMPLEXITY.get(key, "?")])
    notes = "  (failed = failed by the proxy + truncated; downtime = longest gap without a good answer)"
    return "\n".join([*_grid(header, body), notes])


# ------------------------------------------------------------------------------------------- JSON
def to_json(result: LoadResult, deploy: DeployInfo | None = None,
            include_records: bool = False) -> dict[str, Any]:
    """Everything the table shows, as a JSON-serialisable dict."""
    window = result.both_versions_window()
    return {
        "deploy": deploy.to_dict() if deploy is not None else None,
        "deploy_wall_time": deploy_wall_time(result, deploy),
        "zero_loss": is_zero_loss(result),
        "both_versions_ms": round(window.length * 1000, 3) if window else None,
        "longest_gap_ms": round(result.longest_gap().length * 1000, 3),
        "load": result.to_dict(include_records=include_records),
    }


# ------------------------------------------------------------------------------------------- HTML
def timeline_figure(result: LoadResult) -> go.Figure:
    """Top: share of each version (and of errors) among the answers of each second, stacked.
    Bottom: failed requests per second by class. Dashed lines: the marks."""
    timeline = result.timeline()
    x = [t.second + 0.5 for t in timeline]  # bars centred on their second, marks on the same axis
    totals = [t.total or 1 for t in timeline]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.08,
                        subplot_titles=("Share of answers per second", "Errors per second"))
    versions = list(dict.fromkeys([*result.versions(), *(v for t in timeline for v in t.versions)]))
    for i, version in enumerate(versions):
        fig.add_trace(go.Bar(name=version, x=x, y=[t.versions.get(version, 0) / n for t, n in
                                                   zip(timeline, totals, strict=True)],
                             marker_color=_VERSION_COLOURS[i % len(_VERSION_COLOURS)], width=0.95,
                             legendgroup="share"), row=1, col=1)
    fig.add_trace(go.Bar(name="errors", x=x, y=[sum(t.errors.values()) / n for t, n in
                                                zip(timeline, totals, strict=True)],
                         marker_color="#d62728", width=0.95, legendgroup="share"), row=1, col=1)
    failures = [o.value for o in Outcome if any(o.value in t.errors for t in timeline)]
    for outcome in failures:
        fig.add_trace(go.Bar(name=f"{outcome}/s", x=x, y=[t.errors.get(outcome, 0) for t in timeline],
                             marker_color=_ERROR_COLOURS.get(outcome, "#d62728"), width=0.95,
                             legendgroup="errors"), row=2, col=1)
    if not failures:  # still draw the axis at zero: "no errors" is the result people look for
        fig.add_trace(go.Bar(name="errors/s", x=x, y=[0] * len(x), marker_color="#d62728",
                             legendgroup="errors"), row=2, col=1)
    if any(t.misrouted for t in timeline):
        fig.add_trace(go.Scatter(name="misrouted/s", x=x, y=[t.misrouted for t in timeline],
                                 mode="lines+markers", line_color="#000000"), row=2, col=1)
    for i, mark in enumerate(result.marks):
        label = mark.name + (f" ({mark.expect_version})" if mark.expect_version else "")
        fig.add_shape(type="line", x0=mark.at, x1=mark.at, y0=0, y1=1, xref="x", yref="paper",
                      line={"dash": "dash", "width": 1, "color": "#444"})
        # staggered so marks a few ms apart stay readable
        fig.add_annotation(x=mark.at, y=1.0 - 0.05 * (i % 4), xref="x", yref="paper", text=label,
                           showarrow=False, xanchor="left", font={"size": 10},
                           hovertext=f"{mark.name} at {mark.at:.3f} s", bgcolor="rgba(255,255,255,0.7)")
    fig.update_layout(barmode="stack", bargap=0.05, height=620, template="plotly_white",
                      legend={"orientation": "h", "y": -0.12}, margin={"t": 60, "b": 80})
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="seconds since the load started", row=2, col=1)
    return fig


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
pre{{background:#f6f8fa;padding:1em;overflow:auto}}</style></head>
<body><h1>{title}</h1>
{chart}
<h2>Summary</h2>
<pre id="turnout-summary">{table}</pre>
<script type="application/json" id="turnout-report">{data}</script>
</body></html>
"""


def write_html(path: str | Path, result: LoadResult, deploy: DeployInfo | None = None) -> Path:
    """A self-contained HTML report (plotly.js inlined: nothing is fetched when it is viewed)."""
    path = Path(path)
    chart = timeline_figure(result).to_html(full_html=False, include_plotlyjs=True, div_id="turnout-timeline",
                                            config={"displaylogo": False, "responsive": True})
    data = json.dumps(to_json(result, deploy)).replace("</", "<\\/")  # cannot close the script tag
    page = _PAGE.format(title=html.escape(_title(deploy)), chart=chart,
                        table=html.escape(format_table(result, deploy)), data=data)
    path.write_text(page, encoding="utf-8")
    return path
