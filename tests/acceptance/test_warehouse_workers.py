"""`hub serve --warehouse --workers 2` on PostgreSQL: stock received and orders created through
the API are shipped and delivered by two worker processes, each order step taken once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.support import cli_token, fresh_pg_database, hub_process, order_payload

ORDERS = 12


@pytest.fixture
def pg_db(pg_admin_url: str) -> Iterator[str]:
    with fresh_pg_database(pg_admin_url) as url:
        yield url


@pytest.mark.slow
def test_two_warehouse_workers_deliver_api_orders_once_each(pg_db: str) -> None:
    """12 orders of 2 SKUs, stock for 8 of them split over two locations: every order ends
    delivered (some short, some split); no order has any status event twice, and the stock
    shipped equals what the orders' shipments carried."""
    token = cli_token(pg_db, account="demo")
    headers = {"Authorization": f"Bearer {token}"}
    with (
        hub_process(pg_db, "--warehouse", "--workers", "2") as base,
        httpx.Client(base_url=base, headers=headers, timeout=30) as api,
    ):
        receipts = [
            {"sku": sku, "location": location, "quantity": 8}
            for sku in ("SKU-1", "SKU-2")
            for location in ("WH-A", "WH-B")
        ]
        assert api.post("/api/v1/stock_receipts", json=receipts).status_code in (200, 201)
        body = [order_payload(f"W-{n:02d}") for n in range(ORDERS)]  # 2 x SKU-1, 1 x SKU-2
        assert api.post("/api/v1/orders", json=body).status_code == 201

        def statuses() -> list[str]:
            page = api.get("/api/v1/orders", params={"limit": 100, "list_type": "summary"})
            return [o["status"] for o in page.json()["data"]]

        deadline = time.monotonic() + 240  # a bound, not an assertion on speed
        while set(statuses()) != {"delivered"} and time.monotonic() < deadline:
            time.sleep(1)
        assert statuses() == ["delivered"] * ORDERS
        shipments = api.get("/api/v1/shipments", params={"limit": 100}).json()["data"]
    with psycopg.connect(pg_db) as conn:
        repeated = conn.execute(
            "SELECT entity_id, event_type, count(*) FROM changes WHERE entity_kind = 'order' "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        left = conn.execute(
            "SELECT sku, sum(available), sum(allocated) FROM stock GROUP BY sku ORDER BY sku"
        ).fetchall()
    assert repeated == []
    shipped = {"SKU-1": 0, "SKU-2": 0}
    for shipment in shipments:
        assert shipment["status"] == "delivered"
        for line in shipment["lines"]:
            shipped[line["sku_customer_identifier"]] += int(line["quantity"])
    assert shipped == {"SKU-1": 16, "SKU-2": 12}  # SKU-1 ran out: 8 orders' worth
    assert left == [("SKU-1", 0, 0), ("SKU-2", 4, 0)]
