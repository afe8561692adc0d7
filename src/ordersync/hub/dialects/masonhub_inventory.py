"""MasonHub inventory under /api/v1: `GET /sku_snapshots` (OpenAPI: `cid`, `offset`, `limit`),
and ordersync extensions: `updated_since` + `after_id` on it (the agent's listing walk), one
snapshot by `sku_id`, and `POST /stock_receipts` (units that arrived at a location).

Snapshots are rendered by `ordersync.wire.inventory` from the stored `InventoryItem`s, each with
the `event_id` of its version, ordered by (updated_at, sku_id).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from ordersync.domain.inventory import InventoryStatus, StockUnit
from ordersync.domain.inventory_item import InventoryItem
from ordersync.hub.auth import masonhub_principal
from ordersync.hub.dialects.masonhub import _since
from ordersync.hub.errors import ApiError, pydantic_errors
from ordersync.hub.idempotency import idempotent
from ordersync.hub.inventory_shapes import (
    RECEIPT_EXAMPLE,
    SkuSnapshot,
    SkuSnapshotPage,
    StockReceipt,
    StockReceiptsAnswer,
)
from ordersync.hub.json_body import parse_json, require_storable_text
from ordersync.hub.offsets import MAX_OFFSET, check_offset
from ordersync.hub.openapi import answer, errors, model_ref, request_body
from ordersync.store.idempotency import settle
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Principal, Store
from ordersync.wire.inventory import render_sku_snapshot

MAX_RECEIPTS = 100

router = APIRouter(prefix="/api/v1", tags=["masonhub"])
Caller = Annotated[Principal, Depends(masonhub_principal)]
_RECEIPTS = TypeAdapter(list[StockReceipt])


def inventory(request: Request) -> InventoryStore:
    found: InventoryStore = request.app.state.inventory
    return found


def _snapshot(doc: str, event_id: int | None) -> dict[str, Any]:
    rendered = render_sku_snapshot(InventoryItem.model_validate_json(doc))
    rendered["event_id"] = event_id
    return rendered


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status, headers, media_type="application/json")


@router.get(
    "/sku_snapshots",
    summary="List inventory snapshots: absolute counts per SKU, location and status",
    description="Ordered by (updated_at, sku_id). `updated_since` and `after_id` are ordersync "
    "extensions for polling changes (as on /orders).",
    responses={
        200: answer(
            "A page of SKU snapshots",
            model_ref(SkuSnapshotPage, "SkuSnapshotPage"),
            ("X-Ordersync-Keyset",),
        )
    },
)
async def list_sku_snapshots(
    request: Request,
    caller: Caller,
    cid: Annotated[
        list[str] | None,
        Query(max_length=100, description="SKU codes (customer identifiers), repeatable"),
    ] = None,
    offset: Annotated[
        int, Query(ge=0, description=f"Pagination offset, at most {MAX_OFFSET} (hub setting)")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Number of results")] = 30,
    updated_since: Annotated[
        str | None, Query(description="ordersync extension: updated at or after (RFC 3339)")
    ] = None,
    after_id: Annotated[
        UUID | None,
        Query(
            description="ordersync extension: with updated_since, only snapshots after "
            "(updated_since, after_id) in (updated_at, sku_id) order"
        ),
    ] = None,
    list_type: Annotated[
        str,
        Query(
            pattern="^(detail|summary)$",
            description="accepted as on /orders; snapshots are small, both answer in full",
        ),
    ] = "detail",
) -> Response:
    check_offset(offset, request.app.state.max_offset, re_anchor="updated_since")
    since = _since(None, updated_since)
    if after_id is not None and since is None:
        raise ApiError(
            400,
            "query parameters are invalid",
            [("after_id", "after_id continues an updated_since listing; send both")],
        )
    for index, code in enumerate(cid or ()):
        if "\x00" in code:
            raise ApiError(
                400,
                "query parameters are invalid",
                [(f"cid[{index}]", "must not contain NUL (U+0000)")],
            )
    page = await inventory(request).list_items(
        caller.account_id,
        codes=cid,
        updated_since_ms=since,
        after_id=None if after_id is None else str(after_id),
        offset=offset,
        limit=limit,
    )
    data = [_snapshot(d, e) for d, e in zip(page.items, page.event_ids, strict=True)]
    body = {"data": data, "total": page.total, "offset": offset, "limit": limit}
    return _json(body, headers={"X-Ordersync-Keyset": "after_id"})


@router.get(
    "/sku_snapshots/{sku_id}",
    summary="ordersync extension: one SKU's inventory snapshot",
    responses={200: answer("The snapshot", model_ref(SkuSnapshot, "SkuSnapshot"))},
)
async def get_sku_snapshot(request: Request, caller: Caller, sku_id: UUID) -> Response:
    doc = await inventory(request).get_item_doc(caller.account_id, str(sku_id))
    return _json(render_sku_snapshot(InventoryItem.model_validate_json(doc)))


@router.post(
    "/stock_receipts",
    summary="ordersync extension: receive stock (units added to a location, lot and status)",
    description=f"1 to {MAX_RECEIPTS} receipts, all stored in one transaction or none; a SKU "
    "not in the catalogue is registered. Receipts add up: send an Idempotency-Key to retry "
    "safely. Each SKU whose counts changed gets a new inventory "
    "version (and a skuInventoryChange callback).",
    responses=errors(415, 422)
    | {
        200: answer(
            "The SKUs received, as snapshots", model_ref(StockReceiptsAnswer, "StockReceiptsAnswer")
        )
    },
    openapi_extra=request_body(list[StockReceipt], "StockReceipts", example=[RECEIPT_EXAMPLE]),
)
@idempotent
async def receive_stock(request: Request, caller: Caller) -> Response:
    receipts = _receipts(await request.body())
    units = _units(receipts)
    store: Store = request.app.state.store
    # The answer is built and (with an Idempotency-Key) stored in the receipt's transaction:
    # receipts add up, so a retried one must be answered, not received twice.
    async with store.writing(None) as conn:
        items = await inventory(request).receive_stock(caller, caller.account_id, units, conn=conn)
        return await settle(conn, _json({"data": [render_sku_snapshot(item) for item in items]}))


def _receipts(raw: bytes) -> list[StockReceipt]:
    payload = parse_json(raw)
    if not isinstance(payload, list):
        raise ApiError(
            422, "request body must be a JSON array of receipts", [("body", "expected [...]")]
        )
    if not 1 <= len(payload) <= MAX_RECEIPTS:
        raise ApiError(
            422,
            f"a request holds 1 to {MAX_RECEIPTS} receipts",
            [("body", f"got {len(payload)} items")],
        )
    require_storable_text(payload)
    try:
        receipts = _RECEIPTS.validate_python(payload)
    except ValidationError as exc:
        fields = [(_indexed(f), m) for f, m in pydantic_errors(exc.errors())]
        raise ApiError(422, "request body is invalid", fields) from None
    keys: dict[tuple[str, str, str | None, InventoryStatus], int] = {}
    for index, receipt in enumerate(receipts):
        key = (receipt.sku, receipt.location, receipt.lot_number, receipt.inventory_status)
        if key in keys:
            raise ApiError(
                422,
                "request body is invalid",
                [
                    (
                        f"[{index}]",
                        f"repeats receipt [{keys[key]}] (same sku, location, lot, status)",
                    )
                ],
            )
        keys[key] = index
    return receipts


def _indexed(field: str) -> str:
    """pydantic's `0.quantity` as `[0].quantity`."""
    index, _, rest = field.partition(".")
    return (
        f"[{index}].{rest}"
        if index.isdigit() and rest
        else f"[{index}]"
        if index.isdigit()
        else field
    )


def _units(receipts: list[StockReceipt]) -> list[StockUnit]:
    """One unit per (sku, location, lot): receipts of several statuses add up in it."""
    units: dict[tuple[str, str, str | None], StockUnit] = {}
    for receipt in receipts:
        key = (receipt.sku, receipt.location, receipt.lot_number)
        unit = units.get(key) or StockUnit(receipt.sku, receipt.location, receipt.lot_number)
        count = _COUNT[receipt.inventory_status]
        units[key] = replace(
            unit,
            expires_on=unit.expires_on or receipt.expiration_date,
            received_on=unit.received_on or receipt.received_date,
            purchase_order=unit.purchase_order or receipt.purchase_order,
            **{count: getattr(unit, count) + receipt.quantity},
        )
    return list(units.values())


_COUNT = {status: status.value.replace("-", "_") for status in InventoryStatus}
