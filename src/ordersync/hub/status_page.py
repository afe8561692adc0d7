"""Operator pages: `/status` (HTML), `/status.json` (the same figures) and `/metrics`.

The HTML page is self-contained (inline CSS, no script, no CDN: it works on a machine without
internet) and reloads itself every few seconds. Every figure on it carries a `data-figure`
attribute naming its place in `/status.json`, which is how the browser test compares them.

These pages show account and connection names, never a token (only hashes are stored). They
are not in the OpenAPI document: they are for operators, not API clients.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import HTMLResponse, Response

from ordersync import __version__
from ordersync.hub.metrics import CONTENT_TYPE, HubMetrics
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store

REFRESH_SECONDS = 5
router = APIRouter(include_in_schema=False)


def install_operator_pages(app: FastAPI, settings: HubSettings, metrics: HubMetrics) -> None:
    app.state.metrics = metrics
    app.state.operator_settings = settings
    app.include_router(router)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


async def hub_status(store: Store, settings: HubSettings, metrics: HubMetrics) -> dict[str, Any]:
    """Everything the status page shows, read now from the database and the metrics."""
    accounts = await store.list_accounts()
    connections = await store.list_connections()
    counts = await store.entity_counts()
    live: dict[str, int] = {}
    for c in connections:
        if c.revoked_at is None:
            live[c.account] = live.get(c.account, 0) + 1
    return {
        "version": __version__,
        "generated_at": _iso(int(datetime.now(UTC).timestamp() * 1000)),
        "database": store.url.backend,
        "event_log_head": await store.event_log_head(),
        "requests": metrics.totals(),
        "accounts": [
            {
                "name": a.name,
                "timezone": a.timezone,
                "currency": a.currency,
                "orders": counts.get(a.name, {}).get("orders", 0),
                "shipments": counts.get(a.name, {}).get("shipments", 0),
                "live_connections": live.get(a.name, 0),
            }
            for a in accounts
        ],
        "connections": [
            {
                "id": c.id,
                "account": c.account,
                "name": c.name,
                "created_at": _iso(c.created_at),
                "revoked_at": _iso(c.revoked_at),
                "live": c.revoked_at is None,
            }
            for c in connections
        ],
        "quotas": [
            {
                "prefix": q.prefix,
                "class": q.endpoint_class,
                "windows": [
                    {"name": w.name, "limit": w.limit, "seconds": w.seconds} for w in q.windows
                ],
            }
            for q in settings.quotas.quotas
        ],
        "faults": settings.faults.any,
    }


def _parts(request: Request) -> tuple[Store, HubSettings, HubMetrics]:
    state = request.app.state
    return state.store, state.operator_settings, state.metrics


@router.get("/status.json")
async def status_json(request: Request) -> dict[str, Any]:
    return await hub_status(*_parts(request))


@router.get("/status")
async def status_html(request: Request) -> HTMLResponse:
    return HTMLResponse(render(await hub_status(*_parts(request))))


@router.get("/metrics")
async def metrics_text(request: Request) -> Response:
    store, _, metrics = _parts(request)
    connections = await store.list_connections()
    live = sum(1 for c in connections if c.revoked_at is None)
    body = metrics.exposition(await store.event_log_head(), live, len(connections) - live)
    return Response(body, media_type=CONTENT_TYPE)


# -- HTML ----------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1f24;background:#f6f8fa}
h1{font-size:1.3rem;margin:0 0 .2rem}h2{font-size:1rem;margin:1.4rem 0 .4rem}
.muted{color:#57606a}.cards{display:flex;gap:.8rem;flex-wrap:wrap}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;min-width:9rem}
.card b{display:block;font-size:1.6rem}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de}
th,td{padding:.3rem .7rem;border-bottom:1px solid #eaeef2;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.revoked{color:#cf222e}.live{color:#1a7f37}
"""


def _e(value: object) -> str:
    return html.escape(str(value))


def _figure(path: str, value: object, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<span data-figure="{_e(path)}"{attr}>{_e(value)}</span>'


def _state(i: int, connection: dict[str, Any]) -> str:
    if connection["live"]:
        return _figure(f"connections.{i}.live", "live", "live")
    return _figure(f"connections.{i}.live", "revoked", "revoked") + _e(
        f" {connection['revoked_at']}"
    )


def render(status: dict[str, Any]) -> str:
    requests = status["requests"]
    cards = "".join(
        f'<div class="card">{label}<b>{_figure(path, value)}</b></div>'
        for label, path, value in (
            ("event log head", "event_log_head", status["event_log_head"]),
            ("accounts", "accounts.length", len(status["accounts"])),
            ("live connections", "live_connections", sum(c["live"] for c in status["connections"])),
            ("requests", "requests.requests", requests["requests"]),
            ("quota rejections", "requests.quota_rejections", requests["quota_rejections"]),
        )
    )
    accounts = "".join(
        "<tr>"
        f"<td>{_figure(f'accounts.{i}.name', a['name'])}</td>"
        f"<td>{_figure(f'accounts.{i}.timezone', a['timezone'])}</td>"
        f"<td>{_figure(f'accounts.{i}.currency', a['currency'])}</td>"
        f'<td class="n">{_figure(f"accounts.{i}.orders", a["orders"])}</td>'
        f'<td class="n">{_figure(f"accounts.{i}.shipments", a["shipments"])}</td>'
        f'<td class="n">{_figure(f"accounts.{i}.live_connections", a["live_connections"])}</td>'
        "</tr>"
        for i, a in enumerate(status["accounts"])
    )
    connections = "".join(
        "<tr>"
        f'<td class="n">{_figure(f"connections.{i}.id", c["id"])}</td>'
        f"<td>{_e(c['account'])}</td><td>{_e(c['name'])}</td>"
        f"<td>{_e(c['created_at'])}</td><td>{_state(i, c)}</td>"
        "</tr>"
        for i, c in enumerate(status["connections"])
    )
    quotas = (
        "".join(
            f"<tr><td>{_e(q['prefix'])}</td><td>{_e(q['class'])}</td><td>"
            + ", ".join(f"{w['limit']} per {_e(w['name'])}" for w in q["windows"])
            + "</td></tr>"
            for q in status["quotas"]
        )
        or '<tr><td colspan="3" class="muted">no quotas</td></tr>'
    )
    codes = (
        ", ".join(f"{code}: {n}" for code, n in sorted(requests.items()) if code[:1].isdigit())
        or "none yet"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>ordersync hub status</title><style>{_STYLE}</style></head>
<body>
<h1>ordersync hub</h1>
<div class="muted">version {_e(status["version"])} &middot; {_e(status["database"])} &middot;
{_e(status["generated_at"])} &middot; refreshes every {REFRESH_SECONDS} s
{"&middot; <b>faults injected</b>" if status["faults"] else ""}</div>
<h2>Overview</h2><div class="cards">{cards}</div>
<div class="muted">responses by status code: {_e(codes)}</div>
<h2>Accounts</h2>
<table><tr><th>account</th><th>time zone</th><th>currency</th><th>orders</th><th>shipments</th>
<th>live connections</th></tr>{accounts}</table>
<h2>Connections</h2>
<table><tr><th>id</th><th>account</th><th>connection</th><th>created</th><th>state</th></tr>
{connections}</table>
<h2>Quotas (per connection)</h2>
<table><tr><th>path prefix</th><th>class</th><th>windows</th></tr>{quotas}</table>
</body></html>
"""
