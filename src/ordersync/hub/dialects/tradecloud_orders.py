"""Tradecloud's buyer order writes under /v2 (README, "Tradecloud dialect"): parse with
`wire.tradecloud_buyer`, write with `store.tradecloud`, render with `wire.tradecloud`.

`POST /v2/api-connector/order` creates the order of `order.purchaseOrderNumber`, or updates it
when it exists (lines by position), or cancels it or its lines (`indicators.cancelled`).
Tradecloud answers a bare 200; the hub's 200 also carries, as an ordersync extension, what the
message did (`outcome`), the order as it now stands and the `eventId` of its version (the id
the same change has in the polls, the event log and webhook deliveries).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.responses import Response

from ordersync.hub.auth import tradecloud_principal
from ordersync.hub.errors import ApiError
from ordersync.hub.idempotency import idempotent
from ordersync.hub.json_body import parse_json, text_errors
from ordersync.hub.openapi import answer, errors, model_ref, request_body
from ordersync.hub.openapi_shapes import TradecloudOrder
from ordersync.store.store import Principal, Store
from ordersync.store.tradecloud import Outcome, TradecloudStore
from ordersync.wire.tradecloud import render_order
from ordersync.wire.tradecloud_buyer import EXAMPLE, OrderMessage, parse_message

router = APIRouter(prefix="/v2", tags=["tradecloud"])
Caller = Annotated[Principal, Depends(tradecloud_principal)]


class SentOrder(BaseModel):
    outcome: Literal["created", "updated", "cancelled", "unchanged"]
    eventId: int | None
    order: TradecloudOrder


@router.post(
    "/api-connector/order",
    summary="Send an order by the buyer: create, update (lines by position) or cancel",
    description="Keyed by `order.purchaseOrderNumber`. A new number creates the order; a known "
    "one updates it: each line sent replaces the line of its `position` or is added, lines not "
    "sent are kept unless `order.indicators.cancelLineWhenMissing`. `indicators.cancelled` on a "
    "line cancels it (the line leaves the order), on the order the lines sent, or the whole "
    "order when no line is sent. An order takes updates until it is packed; it can be "
    "canceled until it is packed. A line's quantity is the sum of its `deliverySchedule`.",
    responses=errors(400, 409, 415, 422)
    | {200: answer("What the message did", model_ref(SentOrder, "TradecloudSentOrder"))},
    openapi_extra=request_body(OrderMessage, "TradecloudOrderMessage", example=EXAMPLE),
)
@idempotent
async def send_order(request: Request, caller: Caller) -> Response:
    raw = await request.body()
    if not raw:
        raise ApiError(422, "request body is invalid", [("body", "an order message is required")])
    payload = parse_json(raw)
    unstorable = text_errors(payload)
    if unstorable:
        raise ApiError(422, "request body is invalid", unstorable)
    message = parse_message(payload)
    store: Store = request.app.state.store
    return await TradecloudStore(store).send_order(caller, message, _answer)


def _answer(outcome: Outcome) -> Response:
    rendered: dict[str, Any] = render_order(outcome.order.model_dump(mode="json"))
    rendered["eventId"] = outcome.event_id
    body = {"outcome": outcome.action, "eventId": outcome.event_id, "order": rendered}
    return Response(orjson.dumps(body), media_type="application/json")
