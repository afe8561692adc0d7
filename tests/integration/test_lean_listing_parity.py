"""The lean MasonHub listing routes answer exactly as the FastAPI routes they stand in front of.

`hub/dialects/masonhub.py` parses plainly valid listing queries by hand (`_plain_listing`) and
hands everything else to the FastAPI route. Two parsers must not disagree: for a corpus of
query strings (valid and invalid: repeated parameters, bad limits and offsets, bad dates,
unknown parameters, percent-encoding, empty values) and for generated ones, the app with the
lean routes and the same app without them give the same status, body and headers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ordersync.domain import OrderStatus, ShipmentStatus
from ordersync.hub.app import create_app
from ordersync.hub.dialects import masonhub
from ordersync.hub.settings import HubSettings
from ordersync.quotas import QuotaPolicy
from ordersync.store.store import Store
from tests.support import order_payload

UUID_A = "0b6f2a9c-4f1e-4d6a-9a4e-2f3b1c5d7e8f"
CORPUS = [
    "",
    "limit=5",
    "limit=100",
    "limit=101",
    "limit=0",
    "limit=-1",
    "limit=042",
    "limit=%2B5",
    "limit=%205",
    "limit=5.0",
    "limit=",
    "limit=5&limit=6",
    "limit=1_0",
    "limit=%D9%A3",  # an Arabic-Indic digit
    "offset=0",
    "offset=3",
    "offset=10000",  # MAX_OFFSET, the deepest offset served
    "offset=10001",
    "offset=9223372036854775807",
    "offset=9223372036854775808",
    "offset=00",
    "offset=abc",
    "sdt=2024-01-01T00:00:00Z",
    "sdt=2024-01-01T00:00:00.123%2B02:00",
    "sdt=2024-01-01",
    "sdt=yesterday",
    "sdt=",
    "sdt=0001-01-01T00:00:00%2B01:00",
    "updated_since=2024-01-01T00:00:00Z&sdt=2030-01-01T00:00:00Z",
    "updated_since=2024-01-01T00:00:00Z&updated_since=2025-01-01T00:00:00Z",
    f"after_id={UUID_A}",
    f"sdt=2024-01-01T00:00:00Z&after_id={UUID_A}",
    f"sdt=2024-01-01T00:00:00Z&after_id={UUID_A.upper()}",
    "sdt=2024-01-01T00:00:00Z&after_id=nope",
    f"id={UUID_A}",
    f"id={UUID_A.upper()}",
    f"id={UUID_A.replace('-', '')}",
    "id=",
    "id=x",
    "&".join(f"id={UUID_A}" for _ in range(31)),
    "&".join(f"id={UUID_A}" for _ in range(30)),
    "status=open",
    "status=open&status=packed",
    "status=Open",
    "status=shipped",
    "status=",
    "list_type=summary",
    "list_type=detail",
    "list_type=SUMMARY",
    "list_type=",
    "list_type=summary&list_type=detail",
    "unknown=1",
    "limit=5&unknown=1&unknown=2",
    "%6Cimit=2",  # percent-encoded key
    "li%6Dit=2&list_type=summ%61ry",
    "limit",
    "&&limit=2&&",
    "limit=2;offset=1",
    "limit=%FF",
    "sdt=2024-01-01T00:00:00Z&status=open&list_type=summary&limit=2&offset=1",
]


@dataclass
class Apps:
    """One app (the lean routes are in the dialect's module-level router) and a switch that
    sends every listing on to the FastAPI route, as the lean route does when in doubt."""

    client: httpx.AsyncClient
    lean_served: int = 0

    async def answers(self, url: str) -> tuple[httpx.Response, httpx.Response]:
        original = masonhub._plain_listing
        lean = await self.client.get(url)
        masonhub._plain_listing = lambda *_: None  # type: ignore[assignment]
        try:
            full = await self.client.get(url)
        finally:
            masonhub._plain_listing = original
        return lean, full


@contextlib.asynccontextmanager
async def seeded_app(store: Store) -> AsyncIterator[Apps]:
    """The hub app on a store holding a few orders, one of them moved on."""
    token = await store.create_token("acme", "erp")
    principal = await store.authenticate(token)
    results = await store.create_orders(principal, [_order(f"PO-{i}") for i in range(6)])
    first = results[0].order
    assert first is not None
    await store.transition_order(
        principal, principal.account_id, first.id, OrderStatus.AT_WAREHOUSE
    )
    app = create_app(HubSettings(quotas=QuotaPolicy()), store)
    headers = {"Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://hub", headers=headers
    ) as client:
        yield Apps(client)


@pytest.fixture
async def apps(store: Store) -> AsyncIterator[Apps]:
    async with seeded_app(store) as opened:
        yield opened


def _order(identifier: str) -> Any:
    from ordersync.domain import NewOrder

    return NewOrder.model_validate(order_payload(identifier))


async def assert_same_answer(apps: Apps, path: str, query: str) -> None:
    url = f"/api/v1/{path}?{query}" if query else f"/api/v1/{path}"
    items = httpx.URL(url).params.multi_items()
    statuses = OrderStatus if path == "orders" else ShipmentStatus
    if masonhub._plain_listing(items, frozenset(str(s.value) for s in statuses)) is not None:
        apps.lean_served += 1
    lean, full = await apps.answers(url)
    assert (lean.status_code, lean.content) == (full.status_code, full.content), url
    for header in ("content-type", "x-ordersync-keyset"):
        assert lean.headers.get(header) == full.headers.get(header), (url, header)


@pytest.mark.parametrize("path", ["orders", "shipments"])
async def test_the_corpus_gets_identical_answers_from_both_routes(apps: Apps, path: str) -> None:
    """Every query string of the corpus: same status, same bytes, same headers."""
    for query in CORPUS:
        await assert_same_answer(apps, path, query)
    assert apps.lean_served >= 20  # the lean parser did serve a good part of the corpus


_KEYS = st.sampled_from(
    ["limit", "offset", "sdt", "updated_since", "after_id", "id", "status", "list_type", "x"]
)
_VALUES = st.one_of(
    st.sampled_from(
        ["0", "1", "30", "100", "101", "-1", "01", "", "open", "packed", "summary", "detail"]
    ),
    st.sampled_from([UUID_A, UUID_A.upper(), "2024-01-01T00:00:00Z", "2024-13-01T00:00:00Z"]),
    st.integers(min_value=-5, max_value=2**64).map(str),
    st.text(max_size=6),
)
_QUERIES = st.lists(st.tuples(_KEYS, _VALUES), max_size=6).map(
    lambda pairs: "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)
)


def test_generated_queries_get_identical_answers_from_both_routes(sqlite_url: str) -> None:
    """Generated combinations of the listing's parameters and values: same answers."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(sqlite_url))
    opened = seeded_app(store)
    apps = loop.run_until_complete(opened.__aenter__())

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(query=_QUERIES, path=st.sampled_from(["orders", "shipments"]))
    def check(query: str, path: str) -> None:
        loop.run_until_complete(assert_same_answer(apps, path, query))

    try:
        check()
    finally:
        loop.run_until_complete(opened.__aexit__(None, None, None))
        loop.run_until_complete(store.close())
        loop.close()
