"""The Tradecloud dialect under /v2 (seeds 002, 004), black box through real uvicorn."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ordersync.domain import OrderStatus
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store
from tests.support import fresh_pg_database, order_payload, serve_in_thread

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Hub:
    def __init__(self, base: str, token: str, name: str, db_url: str) -> None:
        self.base, self.token, self.name, self.db_url = base, token, name, db_url
        self.client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})

    def poll(self, path: str = "/v2/order-search/poll", **body: Any) -> httpx.Response:
        return self.client.post(path, json=body)


async def _seed(db_url: str, count: int) -> tuple[str, str]:
    store = await Store.open(db_url)
    token = await store.create_token("acme", "erp")
    principal = await store.authenticate(token)
    from ordersync.domain import NewOrder

    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000, 7))
    store.clock = lambda: next(ticks)
    results = await store.create_orders(
        principal, [NewOrder.model_validate(order_payload(f"PO-{i}")) for i in range(count)]
    )
    await store.transition_order(
        principal, principal.account_id, results[0].order.id, OrderStatus.AT_WAREHOUSE
    )
    await store.close()
    return token, principal.connection_name


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One seeded hub per backend for the whole module: these tests only read."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url = f"sqlite:///{tmp_path_factory.mktemp('tc')}/hub.db"
        else:
            admin = request.getfixturevalue("pg_admin_url")
            template = request.getfixturevalue("pg_hub_template")
            db_url = stack.enter_context(fresh_pg_database(admin, template=template))
        token, name = asyncio.run(_seed(db_url, 150))
        base = stack.enter_context(serve_in_thread(create_app(HubSettings(db_url=db_url))))
        yield Hub(base, token, name, db_url)


def test_poll_walks_every_order_once_in_last_updated_order(hub: Hub) -> None:
    """Polling with lastUpdatedAfter = the previous response's lastUpdatedAt visits each order
    once, ascending, with timestamps exactly YYYY-MM-DDThh:mm:ss.SSSZ."""
    seen: list[str] = []
    after = "2000-01-01T00:00:00.000Z"
    while True:
        response = hub.poll(filters={"lastUpdatedAfter": after}, limit=100)
        assert response.status_code == 200
        body = response.json()
        if not body["data"]:
            assert body["lastUpdatedAt"] is None
            break
        stamps = [o["lastUpdatedAt"] for o in body["data"]]
        assert stamps == sorted(stamps) and all(TIMESTAMP.match(s) for s in stamps)
        assert body["lastUpdatedAt"] == stamps[-1]
        seen += [o["id"] for o in body["data"]]
        after = body["lastUpdatedAt"]
    assert len(seen) == len(set(seen)) == 150


def test_total_says_more_than_one_page_remains(hub: Hub) -> None:
    body = hub.poll(filters={"lastUpdatedAfter": "2000-01-01T00:00:00.000Z"}, limit=100).json()
    assert body["total"] == 150 and len(body["data"]) == 100


def test_lines_carry_status_fields_and_last_updated_at(hub: Hub) -> None:
    """A status change re-stamps the lines; untouched orders keep their creation stamp."""
    data = hub.poll(filters={"lastUpdatedAfter": "2000-01-01T00:00:00.000Z"}, limit=100).json()[
        "data"
    ]
    moved = hub.poll(filters={"processStatus": ["InProgress"]}).json()["data"][0]
    assert moved["lastUpdatedAt"] > moved["createdAt"]
    for line in moved["lines"]:
        assert line["lastUpdatedAt"] == moved["lastUpdatedAt"]
        assert set(line["status"]) == {
            "processStatus",
            "inProgressStatus",
            "logisticsStatus",
            "deliveryLineStatus",
        }
    assert data[0]["lines"][0]["lastUpdatedAt"] == data[0]["createdAt"]


def test_each_order_names_the_connection_of_its_last_change(hub: Hub) -> None:
    """`lastUpdatedBy` lets a client recognise the echo of its own writes."""
    data = hub.poll(limit=5).json()["data"]
    assert {o["lastUpdatedBy"] for o in data} == {hub.name}


def test_basic_auth_with_connection_name_and_token(hub: Hub) -> None:
    good = base64.b64encode(f"{hub.name}:{hub.token}".encode()).decode()
    wrong = base64.b64encode(f"someone-else:{hub.token}".encode()).decode()
    ok = httpx.post(
        f"{hub.base}/v2/order-search/poll", json={}, headers={"Authorization": f"Basic {good}"}
    )
    refused = httpx.post(
        f"{hub.base}/v2/order-search/poll", json={}, headers={"Authorization": f"Basic {wrong}"}
    )
    assert ok.status_code == 200
    assert refused.status_code == 401 and refused.json()["error_type"] == "unauthorized"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": -1}, "offset"),
        ({"filters": {"lastUpdatedAfter": "yesterday"}}, "filters.lastUpdatedAfter"),
        ({"filters": {"colour": "red"}}, "filters.colour"),
    ],
)
def test_bad_poll_bodies_name_the_field(hub: Hub, body: dict[str, Any], field: str) -> None:
    response = hub.poll(**body)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


def test_a_body_that_is_not_json_is_a_400(hub: Hub) -> None:
    response = hub.client.post("/v2/order-search/poll", content=b"{nope")
    assert response.status_code == 400 and response.json()["error_type"] == "bad_request"


def test_status_filters_select_orders(hub: Hub) -> None:
    body = hub.poll(filters={"processStatus": ["InProgress"]}).json()
    assert body["total"] == 1 and body["data"][0]["status"]["processStatus"] == "InProgress"


def test_search_answers_like_poll_and_shipments_poll_is_served(hub: Hub) -> None:
    search = hub.poll("/v2/order-search/search", limit=3).json()
    assert len(search["data"]) == 3
    shipments = hub.poll(
        "/v2/shipment/poll", filters={"lastUpdatedAfter": "2000-01-01T00:00:00.000Z"}
    )
    assert shipments.status_code == 200 and shipments.json()["total"] == 0
