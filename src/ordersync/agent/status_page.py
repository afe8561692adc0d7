"""The agent's status page (`/` on its port): the `/status` figures for a person.

Self-contained (inline CSS and SVG, no script, no CDN: it must work on an ERP host without
internet) and refreshed by the browser every few seconds. Every figure carries a `data-field`
attribute naming its `/status` key, so a test (or a scraper) can read the page and compare.
Lag is now minus the position's time (`talk.py`); the sparklines show the last poll rounds.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ordersync.domain.timestamps import format_rfc3339

REFRESH_SECONDS = 5


@dataclass(frozen=True)
class Round:
    """One poll round of one source, for the sparklines."""

    at_ms: int
    source: str
    lag_seconds: float | None
    applied: int


def render(
    rows: Sequence[dict[str, Any]],
    rounds: Iterable[Round],
    *,
    generated_at_ms: int,
    sink: str,
    waits: dict[str, tuple[int, float]],
) -> str:
    """The page for `rows` (`/status`), the recent `rounds`, and each source's budget waits
    (count, seconds)."""
    by_source: dict[str, list[Round]] = {}
    for r in rounds:
        by_source.setdefault(r.source, []).append(r)
    sources = sorted({row["source"] for row in rows})
    cards = "".join(
        _source_card(
            name,
            [row for row in rows if row["source"] == name],
            by_source.get(name, []),
            waits.get(name, (0, 0.0)),
        )
        for name in sources
    )
    stamp = format_rfc3339(generated_at_ms)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ordersync agent</title>
<style>{_CSS}</style></head>
<body><header><h1>ordersync agent</h1>
<p>replica <code>{html.escape(sink)}</code> &middot; as of
<time data-field="generated_at">{stamp}</time> &middot; refreshes every {REFRESH_SECONDS} s
&middot; <a href="/status">/status</a> &middot; <a href="/metrics">/metrics</a></p>
<p class="note">lag: now minus the time of the stream's committed position</p></header>
{cards or "<p>no sources</p>"}
</body></html>"""


def _source_card(
    name: str, rows: list[dict[str, Any]], rounds: list[Round], waits: tuple[int, float]
) -> str:
    quota = next((row for row in rows if row.get("quota_exhausted_until")), None)
    quota_text = (
        f"{html.escape(str(quota['quota_exhausted_window']))} window spent, resumes "
        f"{html.escape(str(quota['quota_exhausted_until']))}"
        if quota
        else "no quota spent"
    )
    lines = "".join(_stream_row(row) for row in rows)
    lags = [r.lag_seconds for r in rounds if r.lag_seconds is not None]
    applied = [float(r.applied) for r in rounds]
    return f"""<section data-source="{html.escape(name)}"><h2>{html.escape(name)}</h2>
<div class="charts"><figure>{_sparkline(lags)}<figcaption>lag (s), last {len(lags)} rounds
</figcaption></figure><figure>{_sparkline(applied)}<figcaption>applied per round, last
{len(applied)} rounds</figcaption></figure></div>
<p>quota: <span data-field="quota">{quota_text}</span> &middot; waits for the budget:
<span data-field="budget_waits">{waits[0]}</span> (<span>{waits[1]:.1f}</span> s)</p>
{_webhooks_line(rows)}<table><thead><tr><th>stream</th><th>position</th><th>lag</th><th>applied</th><th>repeats</th>
<th>calls</th><th>last success</th><th>last error</th><th>quarantined</th></tr></thead>
<tbody>{lines}</tbody></table></section>
"""


def _webhooks_line(rows: list[dict[str, Any]]) -> str:
    """The webhook inbox of a source that takes webhooks (its `webhooks` stream's row)."""
    row = next((r for r in rows if "inbox_depth" in r), None)
    if row is None:
        return ""
    rejected = sum(row["webhooks_rejected"].values())
    return (
        f'<p>webhooks: <span data-field="inbox_depth">{int(row["inbox_depth"])}</span> in the '
        f'inbox &middot; received <span data-field="webhooks_received">'
        f"{int(row['webhooks_received'])}</span> &middot; rejected <span "
        f'data-field="webhooks_rejected">{int(rejected)}</span></p>\n'
    )


def _stream_row(row: dict[str, Any]) -> str:
    def cell(key: str, text: object) -> str:
        return f'<td data-field="{key}">{html.escape(str(text))}</td>'

    lag = row.get("lag_seconds")
    error = row.get("last_error")
    return (
        f'<tr data-stream="{html.escape(row["stream"])}">'
        + cell("stream", row["stream"])
        + cell("cursor", row.get("cursor") or "-")
        + cell("lag_seconds", "-" if lag is None else f"{lag:.1f}")
        + cell("applied", row.get("applied", 0))
        + cell("duplicates", row.get("duplicates", 0))
        + cell("api_calls", row.get("api_calls", 0))
        + cell("last_success_at", row.get("last_success_at") or "-")
        + (
            f'<td data-field="last_error" class="error">{html.escape(error)}</td>'
            if error
            else cell("last_error", "-")
        )
        + cell("quarantined", row.get("quarantined", 0))
        + "</tr>"
    )


def _sparkline(values: list[float], width: int = 240, height: int = 40) -> str:
    """An inline SVG polyline of `values`, scaled to the box (flat when they are equal)."""
    if len(values) < 2:
        return f'<svg width="{width}" height="{height}" role="img"><text x="4" y="24">' + (
            "waiting for rounds</text></svg>"
        )
    top, bottom = max(values), min(values)
    span = (top - bottom) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v - bottom) / span * (height - 4):.1f}"
        for i, v in enumerate(values)
    )
    return (
        f'<svg width="{width}" height="{height}" role="img"><polyline fill="none" '
        f'stroke="#2563eb" stroke-width="2" points="{points}"/></svg>'
    )


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#111;background:#fafafa}
h1{font-size:1.4rem;margin:0}h2{font-size:1.15rem;margin:.2rem 0}
header p{margin:.3rem 0;color:#444}.note{font-size:12px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}
table{border-collapse:collapse;width:100%}th,td{padding:.3rem .5rem;text-align:left;
border-bottom:1px solid #eee;font-variant-numeric:tabular-nums}th{background:#f3f4f6}
.error{color:#b91c1c}.charts{display:flex;gap:2rem}figure{margin:0}
figcaption{font-size:12px;color:#555}svg{background:#f8fafc;border:1px solid #e5e7eb}
"""
