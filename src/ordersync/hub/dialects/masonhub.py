"""The MasonHub dialect under /api/v1 (seeds 000 and 001): wire shape <-> domain, nothing else.

Detail listings stream the stored JSON documents straight into the envelope: the hot polling
path parses nothing and builds no objects per order.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from ordersync.domain import NewOrder, OrderStatus, ShipmentStatus, parse_rfc3339_ms
from ordersync.hub.auth import bearer_principal
from ordersync.hub.errors import ApiError, pydantic_errors
from ordersync.store.store import ListQuery, Page, Principal, Store

MAX_BATCH = 100
# The largest offset both databases take (a signed 64-bit integer); beyond it SQLite and
# PostgreSQL fail with an overflow, which would surface as a 500.
MAX_OFFSET = 2**63 - 1

router = APIRouter(prefix="/api/v1", tags=["masonhub"])
Caller = Annotated[Principal, Depends(bearer_principal)]


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type="application/json")


def _list_query(
    id: Annotated[list[UUID] | None, Query(max_length=30, description="1..30 ids")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Pagination offset")] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Number of results")] = 30,
    sdt: Annotated[
        str | None, Query(description="Start date for the updated_at filter (RFC 3339, inclusive)")
    ] = None,
    updated_since: Annotated[str | None, Query(description="Same as sdt")] = None,
) -> ListQuery:
    since = None
    for name, value in (("sdt", sdt), ("updated_since", updated_since)):
        if value is None:
            continue
        try:
            parsed = parse_rfc3339_ms(value)
        except (ValueError, OverflowError) as exc:
            # OverflowError: a valid-looking date whose UTC form leaves datetime's range,
            # e.g. 0001-01-01T00:00:00+01:00.
            raise ApiError(400, "query parameters are invalid", [(name, str(exc))]) from None
        since = parsed if since is None else max(since, parsed)
    ids = tuple(str(i) for i in id or ())
    return ListQuery(ids=ids, since=since, offset=offset, limit=limit)


Listing = Annotated[ListQuery, Depends(_list_query)]
ListType = Annotated[str, Query(pattern="^(detail|summary)$", description="detail or summary")]


def _envelope(page: Page, query: ListQuery, summary: bool) -> bytes:
    data = (
        orjson.dumps(page.items)
        if summary
        else b"[" + ",".join(page.items).encode() + b"]"
    )
    tail = f',"total":{page.total},"offset":{query.offset},"limit":{query.limit}}}'
    return b'{"data":' + data + tail.encode()


@router.get("/orders", summary="List orders (poll with updated_since / sdt)")
async def list_orders(
    request: Request,
    caller: Caller,
    listing: Listing,
    status: Annotated[list[OrderStatus] | None, Query(description="repeatable")] = None,
    list_type: ListType = "detail",
) -> Response:
    store: Store = request.app.state.store
    query = _with_statuses(listing, status)
    summary = list_type == "summary"
    page = await store.list_orders(caller.account_id, query, summary=summary)
    return _json(_envelope(page, query, summary))


@router.get("/orders/{order_id}", summary="Get one order")
async def get_order(request: Request, caller: Caller, order_id: UUID) -> Response:
    store: Store = request.app.state.store
    return _json((await store.get_order_doc(caller.account_id, str(order_id))).encode())


@router.post(
    "/orders",
    summary="Create orders (batch): each item is created or refused on its own",
    status_code=201,
    responses={207: {"description": "some items refused"}, 422: {"description": "all refused"}},
)
async def create_orders(request: Request, caller: Caller) -> Response:
    items = _json_array(await request.body())
    results: list[dict[str, Any]] = [{} for _ in items]
    valid: list[tuple[int, NewOrder]] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, NewOrder.model_validate(item)))
        except ValidationError as exc:
            results[index] = _refused(item, pydantic_errors(exc.errors()))
        except OverflowError as exc:
            # pydantic wraps only ValueError; a date such as 0001-01-01T00:00:00+01:00 parses
            # but overflows when moved to UTC, and must refuse this item, not fail the batch.
            results[index] = _refused(item, [("body", f"a value is out of range: {exc}")])
    store: Store = request.app.state.store
    created = await store.create_orders(caller, [order for _, order in valid])
    for (index, _), result in zip(valid, created, strict=True):
        results[index] = (
            {
                "customer_identifier": result.customer_identifier,
                "status": "created",
                "id": result.order.id,
                "order": result.order.model_dump(mode="json"),
            }
            if result.order is not None
            else _refused({"customer_identifier": result.customer_identifier}, result.errors)
        )
    n_created = sum(1 for r in results if r["status"] == "created")
    body: dict[str, Any] = {"data": results, "created": n_created,
                            "refused": len(results) - n_created}
    if n_created == len(results):
        return _json(orjson.dumps(body), 201)
    if n_created == 0:
        body |= {"error_type": "unprocessable_entity", "message": "no order was created",
                 "errors": [{"field": f"[{i}].{f}", "message": m}
                            for i, r in enumerate(results) for f, m in
                            ((e["field"], e["message"]) for e in r["errors"])]}
        return _json(orjson.dumps(body), 422)
    return _json(orjson.dumps(body), 207)


def _refused(item: Any, errors: list[tuple[str, str]]) -> dict[str, Any]:
    identifier = item.get("customer_identifier") if isinstance(item, dict) else None
    return {
        "customer_identifier": identifier,
        "status": "refused",
        "errors": [{"field": f, "message": m} for f, m in errors],
    }


def _json_array(raw: bytes) -> list[Any]:
    try:
        # Decimal for every JSON number with a fraction: a float would turn 0.1 into
        # 0.1000000000000000055511151231257827 before the domain ever saw it.
        parsed = json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        # RecursionError: arrays nested thousands deep exhaust the parser's stack; that is a
        # malformed request, not a server fault. (UnicodeDecodeError is a ValueError.)
        message = str(exc)
        raise ApiError(400, f"request body is not valid JSON: {message}", [("body", message)]
                       ) from None
    if not isinstance(parsed, list):
        raise ApiError(422, "request body must be a JSON array of orders",
                       [("body", "expected an array, e.g. [{...}, {...}]")])
    if not 1 <= len(parsed) <= MAX_BATCH:
        raise ApiError(422, f"a batch holds 1 to {MAX_BATCH} orders",
                       [("body", f"got {len(parsed)} items")])
    return parsed


@router.get("/shipments", summary="List shipments (poll with updated_since / sdt)")
async def list_shipments(
    request: Request,
    caller: Caller,
    listing: Listing,
    status: Annotated[list[ShipmentStatus] | None, Query(description="repeatable")] = None,
    list_type: ListType = "detail",
) -> Response:
    store: Store = request.app.state.store
    query = _with_statuses(listing, status)
    summary = list_type == "summary"
    page = await store.list_shipments(caller.account_id, query, summary=summary)
    return _json(_envelope(page, query, summary))


@router.get("/shipments/{shipment_id}", summary="Get one shipment")
async def get_shipment(request: Request, caller: Caller, shipment_id: UUID) -> Response:
    store: Store = request.app.state.store
    return _json((await store.get_shipment_doc(caller.account_id, str(shipment_id))).encode())


def _with_statuses(query: ListQuery, statuses: list[Any] | None) -> ListQuery:
    if not statuses:
        return query
    return ListQuery(query.ids, query.since, tuple(str(s) for s in statuses), query.offset,
                     query.limit)
