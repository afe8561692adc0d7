"""Tradecloud and HubRise sources on canned answers: exact decimals, auth headers, the wire."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest

from ordersync.agent.client import ApiClient, auth_headers
from ordersync.agent.errors import ProtocolError
from ordersync.agent.sources.hubrise import HubRiseSource, money
from ordersync.agent.sources.tradecloud import TradecloudSource

TRADECLOUD_PAGE = b"""{"data": [{"id": "o-1", "version": 3,
 "lastUpdatedAt": "2024-01-01T00:00:00.005Z", "lastUpdatedBy": "erp",
 "status": {"processStatus": "Issued", "logisticsStatus": "Open"},
 "buyerOrder": {"purchaseOrderNumber": "PO-1"},
 "lines": [{"buyerLine": {"position": "0001", "item": {"number": "SKU-1"},
   "quantity": 0.1, "netPrice": 1.000000001}}]}], "total": 1}"""


def client(answer: httpx.Response, seen: list[httpx.Request], **kwargs: object) -> ApiClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return ApiClient(http, "http://platform.test/v2", "tok", **kwargs)  # type: ignore[arg-type]


async def test_tradecloud_numbers_become_exact_text_and_the_bound_is_exclusive() -> None:
    """JSON numbers 0.1 and 1.000000001 reach the record as exact text, never via float; the
    inclusive since is asked as lastUpdatedAfter = since - 1 ms, with Basic auth."""
    seen: list[httpx.Request] = []
    api = client(
        httpx.Response(200, content=TRADECLOUD_PAGE),
        seen,
        auth=auth_headers("basic", "tok", "erp"),
        exact_numbers=True,
    )
    source = TradecloudSource(api, connection_name="erp", echo="skip")
    page = await source.fetch_page("orders", 1_704_067_200_005, 0, 100)
    (record,) = page.records
    line = record.data["line_items"][0]
    assert (line["quantity"], line["unit_price"]) == ("0.1", "1.000000001")
    assert Decimal(line["quantity"]) * 3 == Decimal("0.3")
    assert record.data["echo"] is True and source.echoes_recognised == 1
    assert b'"lastUpdatedAfter":"2024-01-01T00:00:00.004Z"' in seen[0].content
    assert seen[0].headers["authorization"].startswith("Basic ")


async def test_a_float_decoded_decimal_is_refused() -> None:
    """Without exact decoding a fractional number would be a float: refused, not rounded."""
    api = client(httpx.Response(200, content=TRADECLOUD_PAGE), [])
    source = TradecloudSource(api, echo="apply")
    with pytest.raises(ProtocolError, match="float"):
        await source.fetch_page("orders", 0, 0, 100)


async def test_hubrise_uses_its_access_token_and_reads_the_next_cursor() -> None:
    """X-Access-Token, an array body, X-Cursor-Next, money as exact amount text."""
    body = (
        b'[{"id": "h-1", "version": 2, "updated_at": "2024-01-01T01:00:00.250+01:00",'
        b' "created_at": "2024-01-01T01:00:00+01:00", "status": "new", "ref": "R-1",'
        b' "items": [{"line_number": 1, "sku_ref": "S", "price": "0.10 EUR",'
        b' "quantity": "1.000000001"}]}]'
    )
    seen: list[httpx.Request] = []
    api = client(
        httpx.Response(200, content=body, headers={"X-Cursor-Next": "abc"}),
        seen,
        auth=auth_headers("access-token", "tok"),
    )
    page = await HubRiseSource(api).list_orders()
    assert page.next_cursor == "abc"
    (record,) = page.records
    assert record.updated_at_ms == 1_704_067_200_250
    assert page.created_at_ms == [1_704_067_200_000]
    assert record.data["line_items"][0]["quantity"] == "1.000000001"
    assert record.data["line_items"][0]["unit_price"] == "0.10"
    assert seen[0].headers["x-access-token"] == "tok"
    assert "authorization" not in seen[0].headers
    assert money("-0.05 GBP") == ("-0.05", "GBP")
