"""MasonHub asynchronous writes under /api/v1, and the sandbox triggers (an ordersync extension).

`POST /order_update_requests` and `POST /order_cancel_requests` answer 200 at once with one
result per record, as MasonHub's OpenAPI file describes; each accepted record is a `pending`
request that a hub worker resolves later (`ordersync.store.requests`). `GET` on the same paths
lists the requests (MasonHub's `id`, `offset`, `limit`; extensions `status`, `resolved_after`).

The sandbox triggers (like MasonHub's DataFactory) let an integrator drive every outcome by
hand: resolve the pending requests now, ship an order. They exist only when the hub setting
`sandbox` is on (`hub serve --simulate`, the demo, `ORDERSYNC_HUB_SANDBOX=1`); else 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response

from ordersync.domain import (
    NewOrder,
    NewShipment,
    OrderStatus,
    ShipmentLine,
    format_rfc3339,
    parse_rfc3339_ms,
)
from ordersync.domain.lifecycle import next_status
from ordersync.errors import InvalidTransition
from ordersync.hub.auth import masonhub_principal
from ordersync.hub.errors import ApiError, pydantic_errors
from ordersync.hub.idempotency import idempotent
from ordersync.hub.json_body import parse_json, text_errors
from ordersync.hub.offsets import check_offset
from ordersync.hub.openapi import answer, errors, model_ref, request_body
from ordersync.hub.openapi_shapes import NEW_ORDER_EXAMPLE
from ordersync.store.requests import (
    CANCEL,
    STATUSES,
    UPDATE,
    RequestItem,
    RequestQuery,
    RequestStore,
)
from ordersync.store.store import Principal, Store

MAX_REQUESTS = 30
PREFIX = "/api/v1"

router = APIRouter(prefix=PREFIX, tags=["masonhub"])
Caller = Annotated[Principal, Depends(masonhub_principal)]


# -- OpenAPI shapes ----------------------------------------------------------------------------


class Message(BaseModel):
    field_name: str
    errors: list[str]


class RecordResult(BaseModel):
    customer_identifier: str | None
    status: Literal["success", "failure"]
    id: str | None = Field(description="the request's id (null when refused)")
    url: str | None = Field(description="where the request is listed (null when refused)")
    messages: list[Message]
    error_code: str | None = Field(
        default=None, description="ordersync extension, e.g. DUPLICATE_CANCELLATION"
    )
    existing_request_id: str | None = Field(
        default=None, description="DUPLICATE_CANCELLATION: the order's existing cancel request"
    )
    existing_status: str | None = Field(
        default=None, description="DUPLICATE_CANCELLATION: that request's status"
    )


class RequestBatchAnswer(BaseModel):
    records_submitted: int
    records_processed: int
    records_succeeded: int
    records_failed: int
    results: list[RecordResult]


class CancelItem(BaseModel):
    customer_identifier: str | None = Field(default=None, min_length=1, max_length=100)
    order_cancel_request_id: UUID | None = Field(
        default=None, description="cancel the order of an earlier cancel request"
    )


class RequestRecord(BaseModel):
    id: str
    order_cancel_request_id: str | None = Field(default=None, description="cancels: = id")
    order_id: str
    customer_identifier: str
    customer_order_id: str = Field(description="= customer_identifier (MasonHub's name)")
    status: Literal["pending", "processing", "success", "failed"]
    reason: str | None
    created_at: str
    updated_at: str
    resolved_at: str | None
    deleted_at: None = None


class SandboxResolved(BaseModel):
    resolved: int


class ResolveRequests(BaseModel):
    """No fields: the trigger resolves every pending request of the caller's account."""


class ShipOrder(BaseModel):
    number_of_shipments: int = Field(default=1, ge=1, le=10)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def _requests(request: Request) -> RequestStore:
    requests: RequestStore = request.app.state.requests
    return requests


# -- writes ------------------------------------------------------------------------------------


def _batch(raw: bytes, what: str) -> list[Any]:
    parsed = parse_json(raw)
    if not isinstance(parsed, list):
        raise ApiError(
            422,
            f"request body must be a JSON array of {what}",
            [("body", "expected an array, e.g. [{...}, {...}]")],
        )
    if not 1 <= len(parsed) <= MAX_REQUESTS:
        raise ApiError(
            422,
            f"a request holds 1 to {MAX_REQUESTS} {what}",
            [("body", f"got {len(parsed)} items")],
        )
    return parsed


def _identifier(item: Any) -> str | None:
    identifier = item.get("customer_identifier") if isinstance(item, dict) else None
    return identifier if isinstance(identifier, str) and not text_errors(identifier) else None


def _refused(item: Any, errs: list[tuple[str, str]]) -> RequestItem:
    return RequestItem(_identifier(item), errors=tuple(errs))


def _answer(results: list[RequestItem], path: str) -> Response:
    rendered = []
    for r in results:
        messages: dict[str, list[str]] = {}
        for field, message in r.errors:
            messages.setdefault(field, []).append(message)
        rendered.append(
            {
                "customer_identifier": r.customer_identifier,
                "status": "success" if r.accepted else "failure",
                "id": r.id,
                "url": None if r.id is None else f"{PREFIX}/{path}?id={r.id}",
                "messages": [{"field_name": f, "errors": e} for f, e in messages.items()],
            }
            | dict(r.extra)
        )
    succeeded = sum(1 for r in results if r.accepted)
    return _json(
        {
            "records_submitted": len(results),
            "records_processed": len(results),
            "records_succeeded": succeeded,
            "records_failed": len(results) - succeeded,
            "results": rendered,
        }
    )


_BATCH_ANSWER = answer(
    "One result per record, in request order: `success` (a pending request was stored; "
    "follow it with GET and its id) or `failure` with the reasons (code prefixes: 303 the "
    "order does not exist, 409 its status forbids it, DUPLICATE_CANCELLATION)",
    model_ref(RequestBatchAnswer, "RequestBatchAnswer"),
)


@router.post(
    "/order_update_requests",
    summary="Update orders (asynchronous, full replacement by customer_identifier)",
    description="Each record replaces every mutable field of the order with that "
    "customer_identifier. Accepted records are resolved later by the hub: applied while the "
    "order is open or atWarehouse, else failed with a reason (in process, packed, shipped, "
    "canceled).",
    responses=errors(422) | {200: _BATCH_ANSWER},
    openapi_extra=request_body(
        Annotated[list[NewOrder], Field(min_length=1, max_length=MAX_REQUESTS)],
        "OrderUpdateRequestBatch",
        example=[NEW_ORDER_EXAMPLE],
        description=f"1 to {MAX_REQUESTS} full orders",
    ),
)
@idempotent
async def create_update_requests(request: Request, caller: Caller) -> Response:
    items: list[NewOrder | RequestItem] = []
    for item in _batch(await request.body(), "orders"):
        unstorable = text_errors(item)
        if unstorable:
            items.append(_refused(item, unstorable))
            continue
        try:
            items.append(NewOrder.model_validate(item))
        except ValidationError as exc:
            items.append(_refused(item, pydantic_errors(exc.errors())))
        except OverflowError as exc:
            items.append(_refused(item, [("body", f"a value is out of range: {exc}")]))
    return await _requests(request).submit_updates(
        caller, items, lambda results: _answer(results, "order_update_requests")
    )


@router.post(
    "/order_cancel_requests",
    summary="Cancel orders (asynchronous)",
    description="By customer_identifier, or by the order_cancel_request_id of an earlier "
    "request. Accepted records are resolved later: success while the order is cancelable "
    "(until packed), else failure. A second cancel of an order whose cancel is pending or "
    "succeeded is refused with DUPLICATE_CANCELLATION naming the existing request.",
    responses=errors(422) | {200: _BATCH_ANSWER},
    openapi_extra=request_body(
        Annotated[list[CancelItem], Field(min_length=1, max_length=MAX_REQUESTS)],
        "OrderCancelRequestBatch",
        example=[{"customer_identifier": NEW_ORDER_EXAMPLE["customer_identifier"]}],
        description=f"1 to {MAX_REQUESTS} records, each with one of the two keys",
    ),
)
@idempotent
async def create_cancel_requests(request: Request, caller: Caller) -> Response:
    items: list[tuple[str | None, str | None] | RequestItem] = []
    for item in _batch(await request.body(), "cancels"):
        unstorable = text_errors(item)
        if unstorable:
            items.append(_refused(item, unstorable))
            continue
        try:
            cancel = CancelItem.model_validate(item)
        except ValidationError as exc:
            items.append(_refused(item, pydantic_errors(exc.errors())))
            continue
        by_request = cancel.order_cancel_request_id
        if (cancel.customer_identifier is None) == (by_request is None):
            items.append(
                _refused(
                    item,
                    [("body", "send exactly one of customer_identifier, order_cancel_request_id")],
                )
            )
            continue
        items.append((cancel.customer_identifier, None if by_request is None else str(by_request)))
    return await _requests(request).submit_cancels(
        caller, items, lambda results: _answer(results, "order_cancel_requests")
    )


# -- listings ----------------------------------------------------------------------------------


async def _request_query(
    request: Request,
    id: Annotated[list[UUID] | None, Query(max_length=30, description="1..30 ids")] = None,
    offset: Annotated[int, Query(ge=0, description="Pagination offset")] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Number of results")] = 30,
    status: Annotated[
        list[Literal["pending", "processing", "success", "failed"]] | None,
        Query(description="ordersync extension: only these statuses (repeatable)"),
    ] = None,
    resolved_after: Annotated[
        str | None,
        Query(description="ordersync extension: only requests resolved after (RFC 3339)"),
    ] = None,
) -> RequestQuery:
    check_offset(offset, request.app.state.max_offset, re_anchor="resolved_after")
    after = None
    if resolved_after is not None:
        try:
            after = parse_rfc3339_ms(resolved_after)
        except (ValueError, OverflowError) as exc:
            raise ApiError(
                400, "query parameters are invalid", [("resolved_after", str(exc))]
            ) from None
    assert set(status or ()) <= set(STATUSES)
    return RequestQuery(
        ids=tuple(str(i) for i in id or ()),
        statuses=tuple(status or ()),
        resolved_after=after,
        offset=offset,
        limit=limit,
    )


Listing = Annotated[RequestQuery, Depends(_request_query)]


def _records(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        {
            "id": r["id"],
            "order_cancel_request_id": r["id"] if kind == CANCEL else None,
            "order_id": r["order_id"],
            "customer_identifier": r["customer_identifier"],
            "customer_order_id": r["customer_identifier"],
            "status": r["status"],
            "reason": r["reason"],
            "created_at": format_rfc3339(r["created_at"]),
            "updated_at": format_rfc3339(r["updated_at"]),
            "resolved_at": None if r["resolved_at"] is None else format_rfc3339(r["resolved_at"]),
            "deleted_at": None,
        }
        for r in rows
    ]


_LISTING = answer(
    "The requests, oldest first (a plain array, as MasonHub answers)",
    {"type": "array", "items": model_ref(RequestRecord, "RequestRecord")},
)


@router.get(
    "/order_update_requests",
    summary="List order update requests and their resolutions",
    responses={200: _LISTING},
)
async def list_update_requests(request: Request, caller: Caller, query: Listing) -> Response:
    rows = await _requests(request).list(UPDATE, caller.account_id, query)
    return _json(_records(rows, UPDATE))


@router.get(
    "/order_cancel_requests",
    summary="List order cancel requests and their resolutions",
    responses={200: _LISTING},
)
async def list_cancel_requests(request: Request, caller: Caller, query: Listing) -> Response:
    rows = await _requests(request).list(CANCEL, caller.account_id, query)
    return _json(_records(rows, CANCEL))


# -- sandbox triggers --------------------------------------------------------------------------


_SHIPPABLE = frozenset({OrderStatus.OPEN, OrderStatus.AT_WAREHOUSE, OrderStatus.IN_PROCESS})


def _sandbox(request: Request) -> None:
    if not request.app.state.sandbox:
        raise ApiError(
            404,
            "the sandbox is off on this hub: start it with --simulate or ORDERSYNC_HUB_SANDBOX=1",
            error_type="sandbox_disabled",
        )


@router.post(
    "/sandbox/resolve_requests",
    summary="ordersync sandbox: resolve this account's pending update and cancel requests now",
    responses=errors(404)
    | {200: answer("How many were resolved", model_ref(SandboxResolved, "SandboxResolved"))},
    openapi_extra=request_body(
        ResolveRequests, "ResolveRequests", example={}, required=False, description="ignored"
    ),
)
async def sandbox_resolve(request: Request, caller: Caller) -> Response:
    _sandbox(request)
    resolved = await _requests(request).resolve_due(everything=True, account_id=caller.account_id)
    return _json({"resolved": resolved})


@router.post(
    "/sandbox/orders/{order_id}/ship",
    summary="ordersync sandbox: move an order through the warehouse to shipped (fulfilled)",
    description="Moves the order step by step (atWarehouse, inProcess, packed: shipments are "
    "created, fulfilled), as the warehouse would. `number_of_shipments` splits its lines over "
    "that many shipments (at most one per line).",
    responses=errors(404, 409) | {200: answer("The order, shipped", {"type": "object"})},
    openapi_extra=request_body(
        ShipOrder, "ShipOrder", example={"number_of_shipments": 1}, required=False
    ),
)
async def sandbox_ship(request: Request, caller: Caller, order_id: UUID) -> Response:
    _sandbox(request)
    raw = await request.body()
    try:
        ship = ShipOrder.model_validate(parse_json(raw) if raw.strip() else {})
    except ValidationError as exc:
        raise ApiError(422, "the body is invalid", pydantic_errors(exc.errors())) from None
    store: Store = request.app.state.store
    account = caller.account_id
    order = await store.get_order(account, str(order_id))
    if order.status not in _SHIPPABLE:
        raise ApiError(409, f"an order in status {order.status} cannot be shipped")
    try:
        status = order.status
        while status != OrderStatus.PACKED:
            target = next_status(status)
            assert target is not None
            order = await store.transition_order(None, account, order.id, target)
            status = order.status
    except InvalidTransition as exc:  # a concurrent change (e.g. a cancel) got there first
        raise ApiError(409, str(exc)) from None
    lines = order.line_items
    n = min(ship.number_of_shipments, len(lines))
    for part in range(n):
        mine = lines[part::n]
        await store.create_shipment(
            None,
            account,
            NewShipment(
                order_id=order.id,
                carrier=order.shipping_provider,
                service_level=order.shipper_service_level,
                tracking_number=f"1Z{order.id[:8].upper()}{part + 1:02d}",
                lines=[
                    ShipmentLine(
                        line_number=line.line_number or 1,
                        sku_customer_identifier=line.sku_customer_identifier,
                        quantity=line.quantity,
                    )
                    for line in mine
                ],
            ),
        )
    order = await store.transition_order(None, account, order.id, OrderStatus.FULFILLED)
    return Response(order.model_dump_json(), 200, media_type="application/json")
