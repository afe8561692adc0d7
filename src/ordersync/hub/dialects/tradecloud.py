"""The Tradecloud dialect under /v2 (seeds 002 and 004): wire shape <-> domain, nothing else.

Polling: `POST /v2/order-search/poll` with `{"filters": {"lastUpdatedAfter": ...}, "offset",
"limit"}`. `lastUpdatedAfter` is exclusive (the seed: "if there is no data in the response body,
use the same lastUpdatedAfter again"), results ascend by `lastUpdatedAt`, and the response's
`lastUpdatedAt` is that of the last order returned. Timestamps are exactly
`YYYY-MM-DDThh:mm:ss.SSSZ`. Each order names the connection that made its last change
(`lastUpdatedBy`), so a client can recognise the echo of its own writes.

ordersync extension: each polled order and shipment carries `eventId` (the event id of the
change that made its version), and `POST /v2/event/poll` with `{"afterEventId", "limit"}`
follows the event log (see `ordersync.hub.event_feed`); poll responses advertise it with
`X-Ordersync-Events` and `X-Ordersync-Commit-Lag-Ms`.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from ordersync.domain import format_rfc3339, parse_rfc3339_ms
from ordersync.hub.auth import tradecloud_principal
from ordersync.hub.errors import ApiError, pydantic_errors
from ordersync.hub.event_feed import MAX_EVENT_ID, MAX_EVENTS_PAGE, extension_headers, read_events
from ordersync.hub.offsets import check_offset
from ordersync.hub.openapi import answer, errors, model_ref, request_body
from ordersync.hub.openapi_shapes import (
    EVENT_POLL_EXAMPLE,
    POLL_EXAMPLE,
    TradecloudEventPage,
    TradecloudOrder,
    TradecloudOrderPage,
    TradecloudShipmentPage,
)
from ordersync.store.store import ListQuery, Principal, Store
from ordersync.wire.tradecloud import LINE_STATUS, render_order, render_shipment

router = APIRouter(prefix="/v2", tags=["tradecloud"])
EVENTS_PATH = "/v2/event/poll"


Caller = Annotated[Principal, Depends(tradecloud_principal)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Strict):
    lastUpdatedAfter: str | None = None
    processStatus: list[str] | None = None
    logisticsStatus: list[str] | None = None


class PollRequest(_Strict):
    filters: Filters = Field(default_factory=Filters)
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=100)


async def _poll_request(request: Request) -> tuple[PollRequest, ListQuery]:
    raw = await request.body()
    try:
        poll = PollRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        errors = pydantic_errors(exc.errors())
        status = 400 if any(e["type"] == "json_invalid" for e in exc.errors()) else 422
        raise ApiError(status, "request body is invalid", errors) from None
    check_offset(poll.offset, request.app.state.max_offset, re_anchor="filters.lastUpdatedAfter")
    since = None
    if poll.filters.lastUpdatedAfter is not None:
        try:
            since = parse_rfc3339_ms(poll.filters.lastUpdatedAfter) + 1  # exclusive
        except ValueError as exc:
            raise ApiError(
                422, "request body is invalid", [("filters.lastUpdatedAfter", str(exc))]
            ) from None
    statuses = _matching_statuses(poll.filters)
    if statuses == ():
        raise ApiError(
            422,
            "request body is invalid",
            [("filters", "no order status matches these status filters")],
        )
    query = ListQuery(since=since, statuses=statuses or (), offset=poll.offset, limit=poll.limit)
    return poll, query


def _matching_statuses(filters: Filters) -> tuple[str, ...] | None:
    if filters.processStatus is None and filters.logisticsStatus is None:
        return None
    return tuple(
        status
        for status, fields in LINE_STATUS.items()
        if (filters.processStatus is None or fields["processStatus"] in filters.processStatus)
        and (
            filters.logisticsStatus is None or fields["logisticsStatus"] in filters.logisticsStatus
        )
    )


def _page_body(request: Request, items: list[dict[str, Any]], total: int) -> Response:
    body = {
        "data": items,
        "total": total,
        "lastUpdatedAt": items[-1]["lastUpdatedAt"] if items else None,
    }
    headers = extension_headers(request.app.state, EVENTS_PATH)
    return Response(orjson.dumps(body), headers=headers, media_type="application/json")


def _with_event_id(rendered: dict[str, Any], event_id: int | None) -> dict[str, Any]:
    rendered["eventId"] = event_id  # the ordersync extension field
    return rendered


async def _orders(request: Request, caller: Principal) -> Response:
    _, query = await _poll_request(request)
    store: Store = request.app.state.store
    page = await store.list_orders(caller.account_id, query)
    items = [
        _with_event_id(render_order(orjson.loads(d)), e)
        for d, e in zip(page.items, page.event_ids or [None] * len(page.items), strict=True)
    ]
    return _page_body(request, items, page.total)


def _poll_doc(page: type, name: str) -> dict[str, Any]:
    """The decorator arguments describing a poll: its optional body and its answers."""
    return {
        "responses": errors(422)
        | {200: answer("A page, oldest change first", model_ref(page, name))},
        "openapi_extra": request_body(
            PollRequest,
            "PollRequest",
            example=POLL_EXAMPLE,
            required=False,
            description="Absent: no filters",
        ),
    }


@router.post(
    "/order-search/poll",
    summary="Poll orders changed after lastUpdatedAfter",
    **_poll_doc(TradecloudOrderPage, "TradecloudOrderPage"),
)
async def poll_orders(request: Request, caller: Caller) -> Response:
    return await _orders(request, caller)


@router.post(
    "/order-search/search",
    summary="Search orders (same filters as poll)",
    **_poll_doc(TradecloudOrderPage, "TradecloudOrderPage"),
)
async def search_orders(request: Request, caller: Caller) -> Response:
    return await _orders(request, caller)


@router.post(
    "/shipment/poll",
    summary="Poll shipments changed after lastUpdatedAfter",
    **_poll_doc(TradecloudShipmentPage, "TradecloudShipmentPage"),
)
async def poll_shipments(request: Request, caller: Caller) -> Response:
    _, query = await _poll_request(request)
    if query.statuses:
        raise ApiError(
            422, "request body is invalid", [("filters", "status filters apply to orders only")]
        )
    store: Store = request.app.state.store
    page = await store.list_shipments(caller.account_id, query)
    items = [
        _with_event_id(render_shipment(orjson.loads(d)), e)
        for d, e in zip(page.items, page.event_ids or [None] * len(page.items), strict=True)
    ]
    return _page_body(request, items, page.total)


class EventPollRequest(_Strict):
    afterEventId: int = Field(default=0, ge=0, le=MAX_EVENT_ID)
    limit: int = Field(default=MAX_EVENTS_PAGE, ge=1, le=MAX_EVENTS_PAGE)


@router.post(
    "/event/poll",
    summary="ordersync extension: poll the event log, every change in commit order",
    description="Events after `afterEventId` (0: from the start) in id order; continue with "
    "`afterEventId = nextAfterEventId`: no event is missed, each is served once. `entity` is "
    "the order or shipment at the event's version, null when a later version superseded it. "
    "A position older than the retention answers 410 `position_pruned` with the `head` to "
    "follow from after a resync.",
    responses=errors(410, 422)
    | {200: answer("A page of events", model_ref(TradecloudEventPage, "TradecloudEventPage"))},
    openapi_extra=request_body(
        EventPollRequest, "TradecloudEventPoll", example=EVENT_POLL_EXAMPLE, required=False
    ),
)
async def poll_events(request: Request, caller: Caller) -> Response:
    raw = await request.body()
    try:
        poll = EventPollRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        errors = pydantic_errors(exc.errors())
        status = 400 if any(e["type"] == "json_invalid" for e in exc.errors()) else 422
        raise ApiError(status, "request body is invalid", errors) from None
    page = await read_events(request, caller, poll.afterEventId, poll.limit)
    data = []
    for e in page.events:
        entity = None
        if e.doc is not None:
            render = render_order if e.kind == "order" else render_shipment
            entity = _with_event_id(render(orjson.loads(e.doc)), e.event_id)
        data.append(
            {
                "eventId": e.event_id,
                "kind": e.kind,
                "entityId": e.entity_id,
                "version": e.version,
                "eventType": e.event_type,
                "lastUpdatedBy": e.connection,
                "createdAt": format_rfc3339(e.created_at),
                "entity": entity,
                "entityUrl": f"/v2/order/{e.entity_id}" if e.kind == "order" else None,
                "currentVersion": e.current_version,
            }
        )
    body = {"data": data, "nextAfterEventId": page.next_after, "headEventId": page.head}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/order/{order_id}",
    summary="Get one order (the webhook GET flavour)",
    responses={200: answer("The order", model_ref(TradecloudOrder, "TradecloudOrder"))},
)
async def get_order(request: Request, caller: Caller, order_id: str) -> Response:
    store: Store = request.app.state.store
    doc = orjson.loads(await store.get_order_doc(caller.account_id, order_id))
    return Response(orjson.dumps(render_order(doc)), media_type="application/json")
