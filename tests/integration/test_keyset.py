"""The MasonHub listings' keyset continuation (`after_id`, an ordersync extension)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from ordersync.domain import NewOrder, OrderStatus, format_rfc3339
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Principal, Store
from tests.support import order_payload


@pytest.fixture
async def client(store: Store, principal: Principal) -> AsyncIterator[httpx.AsyncClient]:
    token = await store.create_token("acme", "poller")
    app = create_app(HubSettings(), store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://hub",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        yield http


async def seed_ties(store: Store, principal: Principal, groups: list[int]) -> list[str]:
    """Orders in tie groups: group i has groups[i] orders sharing one updated_at."""
    stamps = iter([t for i, n in enumerate(groups) for t in [1_700_000_000_000 + i] * n])
    store.clock = lambda: next(stamps)
    created = await store.create_orders(
        principal, [NewOrder.model_validate(order_payload(f"K-{i}")) for i in range(sum(groups))]
    )
    return [r.order.id for r in created if r.order]


async def walk(client: httpx.AsyncClient, between_pages=None) -> list[str]:  # type: ignore[no-untyped-def]
    seen: list[str] = []
    params: dict[str, str | int] = {"updated_since": "2000-01-01T00:00:00Z", "limit": 100}
    while True:
        response = await client.get("/api/v1/orders", params=params)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        seen += [o["id"] for o in data]
        if len(data) < 100:
            return seen
        params = {"updated_since": data[-1]["updated_at"], "after_id": data[-1]["id"], "limit": 100}
        if between_pages:
            await between_pages()


async def test_listings_advertise_the_keyset_extension(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/orders", params={"limit": 1})
    assert response.headers["x-ordersync-keyset"] == "after_id"


async def test_keyset_walk_returns_each_order_once_across_big_ties(
    store: Store, principal: Principal, client: httpx.AsyncClient
) -> None:
    """Tie groups larger than a page are walked without an offset, none missed or repeated."""
    ids = await seed_ties(store, principal, [250, 1, 99, 130])
    seen = await walk(client)
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))


async def test_records_moving_during_a_keyset_walk_are_not_skipped(
    store: Store, principal: Principal, client: httpx.AsyncClient
) -> None:
    """An update between pages moves an order to the end; every other order is still seen."""
    ids = await seed_ties(store, principal, [250, 120])
    moved: list[str] = []

    async def move_one() -> None:
        store.clock = lambda: 1_800_000_000_000 + len(moved)
        target = ids[len(moved) * 7]
        await store.transition_order(
            principal, principal.account_id, target, OrderStatus.AT_WAREHOUSE
        )
        moved.append(target)

    seen = await walk(client, between_pages=move_one)
    assert set(ids) <= set(seen)


async def test_after_id_without_a_date_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/v1/orders", params={"after_id": "00000000-0000-0000-0000-000000000000"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "after_id"


async def test_total_still_counts_from_updated_since(
    store: Store, principal: Principal, client: httpx.AsyncClient
) -> None:
    ids = await seed_ties(store, principal, [5])
    since = format_rfc3339(1_700_000_000_000)
    body = (
        await client.get(
            "/api/v1/orders", params={"updated_since": since, "after_id": sorted(ids)[1]}
        )
    ).json()
    assert body["total"] == 5 and len(body["data"]) == 3
