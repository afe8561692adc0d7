"""Tradecloud and HubRise sources on canned answers: exact decimals, auth headers, the wire."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import pytest

from ordersync.agent.client import ApiClient, auth_headers
from ordersync.agent.errors import ProtocolError
from ordersync.agent.sources.hubrise import HubRiseSource
from ordersync.agent.sources.masonhub import MasonHubSource
from ordersync.agent.sources.tradecloud import TradecloudSource
from ordersync.domain.snapshots import LineSnapshot, OrderSnapshot

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
    """JSON numbers 0.1 and 1.000000001 reach the snapshot as exact Decimals and the kept
    document as the same JSON numbers, never via float; the inclusive since is asked as
    lastUpdatedAfter = since - 1 ms, with Basic auth."""
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
    assert record.snapshot == OrderSnapshot(
        "o-1",
        3,
        1_704_067_200_005,
        "Issued/Open",
        "PO-1",
        (LineSnapshot(1, "SKU-1", Decimal("0.1"), Decimal("1.000000001")),),
    )
    assert isinstance(record.snapshot, OrderSnapshot)
    assert record.snapshot.lines[0].quantity * 3 == Decimal("0.3")  # type: ignore[operator]
    kept = orjson.loads(orjson.dumps(record.document))
    assert b'"quantity":0.1,"netPrice":1.000000001' in orjson.dumps(record.document)
    assert kept["buyerOrder"] == {"purchaseOrderNumber": "PO-1"} and "line_items" not in kept
    assert record.echo and kept["echo"] is True and source.echoes_recognised == 1
    assert b'"lastUpdatedAfter":"2024-01-01T00:00:00.004Z"' in seen[0].content
    assert seen[0].headers["authorization"].startswith("Basic ")


async def test_a_float_decoded_decimal_is_refused() -> None:
    """Without exact decoding a fractional number would be a float: refused, not rounded. The
    record keeps its id and version, has no snapshot, and names the field (for the sink)."""
    api = client(httpx.Response(200, content=TRADECLOUD_PAGE), [])
    source = TradecloudSource(api, echo="apply")
    (record,) = (await source.fetch_page("orders", 0, 0, 100)).records
    assert (record.id, record.version, record.snapshot) == ("o-1", 3, None)
    assert record.problem == (
        "order o-1: lines[0].buyerLine.quantity: 0.1 was decoded as a float; exactness is lost"
    )


async def test_an_unreadable_head_fails_the_page() -> None:
    """A document without a readable version cannot be placed at all: ProtocolError."""
    body = TRADECLOUD_PAGE.replace(b'"version": 3', b'"version": "three"')
    source = TradecloudSource(client(httpx.Response(200, content=body), []), echo="apply")
    with pytest.raises(ProtocolError, match="version: 'three' is not an integer"):
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
    assert record.snapshot is not None and record.snapshot.status == "new"
    assert record.snapshot.lines == (  # type: ignore[union-attr]
        LineSnapshot(1, "S", Decimal("1.000000001"), Decimal("0.10"), "EUR"),
    )
    assert record.data == orjson.loads(body)[0]
    assert seen[0].headers["x-access-token"] == "tok"
    assert "authorization" not in seen[0].headers


MASONHUB_PAGE = b"""{"data": [
 {"id": "o-1", "version": 1, "updated_at": "2024-01-01T00:00:00.000Z", "status": "open",
  "customer_identifier": "C-1",
  "line_items": [{"line_number": 1, "sku_customer_identifier": "S", "quantity": "abc",
                  "unit_price": "1"}]},
 {"id": "o-2", "version": 5, "updated_at": "2024-01-01T00:00:00.001Z", "status": "open",
  "customer_identifier": "C-2",
  "line_items": [{"line_number": 1, "sku_customer_identifier": "S", "quantity": "2",
                  "unit_price": "0.10"}]}]}"""


async def test_a_record_the_codec_refuses_does_not_fail_its_page() -> None:
    """An order whose id, version and time are readable but whose line is not comes back with
    its problem and no snapshot, beside the good records of its page: nothing stalls here."""
    api = client(httpx.Response(200, content=MASONHUB_PAGE), [])
    page = await MasonHubSource(api).fetch_page("orders", 0, 0, 100)
    bad, good = page.records
    assert (bad.id, bad.version, bad.snapshot) == ("o-1", 1, None)
    assert bad.problem == "order o-1: line_items[0].quantity: 'abc' is not a decimal amount"
    assert bad.data == orjson.loads(MASONHUB_PAGE)["data"][0]
    assert good.problem is None and good.snapshot == OrderSnapshot(
        "o-2",
        5,
        1_704_067_200_001,
        "open",
        "C-2",
        (LineSnapshot(1, "S", Decimal(2), Decimal("0.10")),),
    )


async def test_a_summary_listing_reads_heads_only() -> None:
    """Verification's summary pages carry ids and versions: no body is read, no problem made."""
    body = b'{"data": [{"id": "o-1", "version": 2, "updated_at": "2024-01-01T00:00:00Z"}]}'
    page = await MasonHubSource(client(httpx.Response(200, content=body), [])).fetch_page(
        "orders", 0, 0, 100, summary=True
    )
    (record,) = page.records
    assert (record.id, record.version, record.snapshot, record.problem) == ("o-1", 2, None, None)
