"""The hub's /metrics, access log and /status.json, as an operator reads them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from ordersync.hub.access_log import AccessLog, redacted_query
from ordersync.hub.app import create_app
from ordersync.hub.faults import FaultSettings
from ordersync.hub.settings import HubSettings
from ordersync.quotas import QuotaPolicy
from ordersync.store.store import Store
from ordersync.store.tables import changes
from tests.support import order_payload


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def hub(store: Store) -> AsyncIterator[tuple[httpx.AsyncClient, str, Any]]:
    token = await store.create_token("acme", "erp")
    settings = HubSettings(
        quotas=QuotaPolicy.from_specs("/api/v1/=3/minute"), quota_clock=Clock(), access_log=True
    )
    app = create_app(settings, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            yield client, token, app


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_requests_are_counted_by_route_template_and_code(
    hub: tuple[httpx.AsyncClient, str, Any],
) -> None:
    """Two different order ids are one series; an unknown path is `unmatched`, not itself."""
    client, token, _ = hub
    auth = {"Authorization": f"Bearer {token}"}
    created = await client.post("/api/v1/orders", json=[order_payload("A-1")], headers=auth)
    order_id = created.json()["data"][0]["id"] if "data" in created.json() else None
    assert created.status_code == 201
    await client.get("/api/v1/orders", params={"limit": 5}, headers=auth)
    await client.get(f"/api/v1/orders/{order_id}", headers=auth)
    await client.get("/no/such/path/123")
    await client.get("/no/such/path/456")
    found = samples((await client.get("/metrics")).text)
    requests = "ordersync_hub_requests_total"
    assert value(found, requests, method="POST", route="/api/v1/orders", code="201") == 1
    assert value(found, requests, method="GET", route="/api/v1/orders", code="200") == 1
    assert value(found, requests, method="GET", route="/api/v1/orders/{order_id}", code="200") == 1
    assert value(found, requests, method="GET", route="unmatched", code="404") == 2
    assert not any("/no/such" in str(key) for key in found)
    count = value(
        found, "ordersync_hub_request_seconds_count", method="GET", route="/api/v1/orders"
    )
    assert count == 1


async def test_quota_rejections_and_the_event_log_head(
    hub: tuple[httpx.AsyncClient, str, Any], store: Store
) -> None:
    """The 4th request in a 3/minute window is a quota rejection; the head is the newest
    change feed position, whatever worker is asked."""
    client, token, _ = hub
    auth = {"Authorization": f"Bearer {token}"}
    codes = [(await client.get("/api/v1/orders", headers=auth)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    await client.post(
        "/api/v1/orders", json=[order_payload("B-1"), order_payload("B-2")], headers=auth
    )  # refused too: the window is full
    found = samples((await client.get("/metrics")).text)
    rejected = "ordersync_hub_quota_rejections_total"
    assert value(found, rejected, route="/api/v1/orders") == 2
    # The head never moves back: read later, it is at least what the scrape showed.
    assert value(found, "ordersync_hub_event_log_head") <= await store.event_log_head()
    assert value(found, "ordersync_hub_connections", state="live") == 1


async def test_the_event_log_head_follows_writes(store: Store) -> None:
    from ordersync.domain import NewOrder

    principal = await store.authenticate(await store.create_token("acme", "erp"))
    await store.create_orders(
        principal, [NewOrder.model_validate(order_payload(f"C-{i}")) for i in range(3)]
    )
    app = create_app(HubSettings(quotas=QuotaPolicy()), store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        text = (await client.get("/metrics")).text
    found = re.search(r"^ordersync_hub_event_log_head (\S+)$", text, re.MULTILINE)
    assert found is not None
    async with store.reader.connect() as conn:
        newest = await conn.scalar(select(func.max(changes.c.event_id)))
    # Every event written is final by now: the head is at or past the newest (SQLite: equal).
    assert float(found.group(1)) >= newest
    if store.url.backend == "sqlite":
        assert float(found.group(1)) == newest == 3


async def test_an_injected_429_is_not_a_quota_rejection(store: Store) -> None:
    faults = FaultSettings(throttle_rate=1.0, seed=1)
    app = create_app(HubSettings(faults=faults, quotas=QuotaPolicy()), store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        assert (await client.get("/api/v1/orders")).status_code == 429
        found = samples((await client.get("/metrics")).text)
    assert (
        value(
            found, "ordersync_hub_requests_total", method="GET", route="/api/v1/orders", code="429"
        )
        == 1
    )
    assert value(found, "ordersync_hub_quota_rejections_total", route="/api/v1/orders") == 0


async def test_a_hubrise_method_override_is_counted_under_its_route(store: Store) -> None:
    """HubRise's X-Http-Method-Override copies the request scope; the route is still found."""
    token = await store.create_token("acme", "erp")
    app = create_app(HubSettings(quotas=QuotaPolicy()), store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
        await client.post(
            "/v1/location/orders/nope",
            headers={"X-Access-Token": token, "X-Http-Method-Override": "PATCH"},
            json={"status": "received"},
        )
        found = samples((await client.get("/metrics")).text)
    routes = {dict(labels).get("route") for (name, labels) in found if "requests_total" in name}
    assert "/v1/location/orders/{order_id}" in routes


async def test_the_access_log_names_the_connection_never_the_token(
    hub: tuple[httpx.AsyncClient, str, Any], store: Store
) -> None:
    client, token, _ = hub
    principal = await store.authenticate(token)
    with structlog.testing.capture_logs() as logs:
        await client.get(
            "/api/v1/orders",
            params={"limit": 2, "token": token},
            headers={"Authorization": f"Bearer {token}"},
        )
        await client.get("/api/v1/orders", headers={"Authorization": "Bearer wrong"})
    ok, refused = [entry for entry in logs if entry["event"] == "request"]
    assert ok["connection_id"] == principal.connection_id and ok["status"] == 200
    assert ok["path"] == "/api/v1/orders" and ok["query"] == "limit=2&token=***"
    assert refused["connection_id"] is None and refused["status"] == 401
    assert token not in repr(logs)


def test_credential_like_query_parameters_are_redacted() -> None:
    raw = b"updated_since=2024-01-01&access_token=abc&api_key=k&X-Signature=s&limit=5"
    assert redacted_query(raw) == (
        "updated_since=2024-01-01&access_token=***&api_key=***&X-Signature=***&limit=5"
    )
    assert AccessLog.__doc__


async def test_status_json_lists_accounts_connections_quotas_and_head(
    hub: tuple[httpx.AsyncClient, str, Any], store: Store
) -> None:
    client, token, _ = hub
    await store.create_token("zeta", "wms")
    await store.revoke_connection("zeta", "wms")
    await store.set_account("acme", timezone="Europe/Paris", currency="CHF")
    auth = {"Authorization": f"Bearer {token}"}
    await client.post("/api/v1/orders", json=[order_payload("D-1")], headers=auth)
    status = (await client.get("/status.json")).json()
    assert 1 <= status["event_log_head"] <= await store.event_log_head()
    assert [
        (a["name"], a["timezone"], a["currency"], a["orders"], a["live_connections"])
        for a in status["accounts"]
    ] == [
        ("acme", "Europe/Paris", "CHF", 1, 1),
        ("zeta", "UTC", "EUR", 0, 0),
    ]
    assert [(c["account"], c["name"], c["live"]) for c in status["connections"]] == [
        ("acme", "erp", True),
        ("zeta", "wms", False),
    ]
    assert status["quotas"] == [
        {
            "prefix": "/api/v1/",
            "class": "all",
            "windows": [{"name": "minute", "limit": 3, "seconds": 60}],
        }
    ]
    assert status["requests"]["201"] == 1
    page = (await client.get("/status")).text
    assert "<script" not in page and "http://" not in page and "https://" not in page
    shown = re.search(r'data-figure="event_log_head">(\d+)<', page)
    assert shown is not None and 1 <= int(shown.group(1)) <= await store.event_log_head()


@pytest.mark.slow
def test_two_workers_report_the_hubs_figures_not_one_workers(tmp_path: Any) -> None:
    """`hub serve --workers 2`: every scrape, whichever worker answers it, counts all 20
    requests (prometheus-client's multiprocess mode)."""
    from tests.support import cli_token, hub_process

    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db)
    with hub_process(db, "--workers", "2") as base:
        auth = {"Authorization": f"Bearer {token}"}

        async def burst() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                await asyncio.gather(
                    *(client.get(f"{base}/api/v1/orders", headers=auth) for _ in range(20))
                )

        asyncio.run(burst())
        seen = set()
        for _ in range(6):
            found = samples(httpx.get(f"{base}/metrics", timeout=30).text)
            seen.add(
                value(
                    found,
                    "ordersync_hub_requests_total",
                    method="GET",
                    route="/api/v1/orders",
                    code="200",
                )
            )
    assert seen == {20.0}
