"""The MasonHub dialect under /api/v1 (seeds 000 and 001): wire shape <-> domain, nothing else.

Detail listings stream the stored JSON documents straight into the envelope: the hot polling
path parses nothing and builds no objects per order. The two listings also have a lean route in
front of their FastAPI routes (see `_LeanListing`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.routing import APIRoute
from pydantic import Field, ValidationError
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ordersync.domain import (
    NewOrder,
    Order,
    OrderStatus,
    ShipmentStatus,
    format_rfc3339,
    parse_rfc3339_ms,
)
from ordersync.domain.shipments import Shipment
from ordersync.hub.auth import masonhub_credential, masonhub_principal, principal_of
from ordersync.hub.errors import ApiError, pydantic_errors
from ordersync.hub.event_feed import (
    MAX_EVENT_ID,
    MAX_EVENTS_PAGE,
    extension_headers,
    read_events,
    with_event_id,
)
from ordersync.hub.idempotency import idempotent
from ordersync.hub.json_body import parse_json, text_errors
from ordersync.hub.offsets import MAX_OFFSET, check_offset
from ordersync.hub.openapi import REF, answer, errors, model_ref, request_body
from ordersync.hub.openapi_shapes import (
    NEW_ORDER_EXAMPLE,
    BatchRefused,
    BatchResult,
    MasonHubEventPage,
    OrderPage,
    ShipmentPage,
)
from ordersync.store.store import CreateResult, ListQuery, Page, Principal, Store

MAX_BATCH = 100

router = APIRouter(prefix="/api/v1", tags=["masonhub"])
Caller = Annotated[Principal, Depends(masonhub_principal)]


def _json(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type="application/json")


# Listings tell clients they may continue with `after_id` instead of an offset in a tie group,
# and where the event log is (see `ordersync.hub.event_feed`).
KEYSET_HEADER = {"X-Ordersync-Keyset": "after_id"}
EVENTS_PATH = "/api/v1/events"
_KEYSET = ("X-Ordersync-Keyset", "X-Ordersync-Events", "X-Ordersync-Commit-Lag-Ms")


def _listing(body: bytes, state: Any) -> Response:
    headers = KEYSET_HEADER | extension_headers(state, EVENTS_PATH)
    return Response(body, 200, headers, media_type="application/json")


# An async dependency: a plain `def` one would cost a thread-pool hop per request.
async def _list_query(
    request: Request,
    id: Annotated[list[UUID] | None, Query(max_length=30, description="1..30 ids")] = None,
    offset: Annotated[
        int,
        Query(
            ge=0, description=f"Pagination offset, at most {MAX_OFFSET} (hub setting max_offset)"
        ),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=100, description="Number of results")] = 30,
    sdt: Annotated[
        str | None, Query(description="Start date for the updated_at filter (RFC 3339, inclusive)")
    ] = None,
    updated_since: Annotated[str | None, Query(description="Same as sdt")] = None,
    after_id: Annotated[
        UUID | None,
        Query(
            description="ordersync extension (keyset continuation): with sdt/updated_since, "
            "only records after (updated_since, after_id) in (updated_at, id) "
            "order; listings advertise it with `X-Ordersync-Keyset: after_id`"
        ),
    ] = None,
) -> ListQuery:
    check_offset(offset, request.app.state.max_offset, re_anchor="updated_since")
    since = _since(sdt, updated_since)
    if after_id is not None and since is None:
        raise ApiError(
            400,
            "query parameters are invalid",
            [("after_id", "after_id continues an updated_since listing; send both")],
        )
    ids = tuple(str(i) for i in id or ())
    return ListQuery(
        ids=ids,
        since=since,
        offset=offset,
        limit=limit,
        after_id=None if after_id is None else str(after_id),
    )


def _since(sdt: str | None, updated_since: str | None) -> int | None:
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
    return since


Listing = Annotated[ListQuery, Depends(_list_query)]
ListType = Annotated[str, Query(pattern="^(detail|summary)$", description="detail or summary")]


def _envelope(page: Page, query: ListQuery, summary: bool) -> bytes:
    # Each record carries its event id (an ordersync extension field, `event_id`).
    ids = page.event_ids or [None] * len(page.items)
    if summary:
        data = orjson.dumps(
            [item | {"event_id": eid} for item, eid in zip(page.items, ids, strict=True)]
        )
    else:
        docs = [with_event_id(doc, eid) for doc, eid in zip(page.items, ids, strict=True)]
        data = b"[" + ",".join(docs).encode() + b"]"
    tail = f',"total":{page.total},"offset":{query.offset},"limit":{query.limit}}}'
    return b'{"data":' + data + tail.encode()


@router.get(
    "/orders",
    summary="List orders (poll with updated_since / sdt)",
    responses={200: answer("A page of orders", model_ref(OrderPage, "OrderPage"), _KEYSET)},
)
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
    return _listing(_envelope(page, query, summary), request.app.state)


@router.get(
    "/orders/{order_id}",
    summary="Get one order",
    responses={200: answer("The order", model_ref(Order, "Order"))},
)
async def get_order(request: Request, caller: Caller, order_id: UUID) -> Response:
    store: Store = request.app.state.store
    return _json((await store.get_order_doc(caller.account_id, str(order_id))).encode())


@router.post(
    "/orders",
    summary="Create orders (batch): each item is created or refused on its own",
    status_code=201,
    responses={
        201: answer("Every order created", model_ref(BatchResult, "BatchResult")),
        207: answer("Some orders created, some refused", model_ref(BatchResult, "BatchResult")),
        422: answer(
            "No order created: each item's errors, or the batch itself is refused (not an "
            "array, or not 1 to 100 items) in the plain error envelope",
            {"anyOf": [model_ref(BatchRefused, "BatchRefused"), {"$ref": REF + "Error"}]},
        ),
    },
    openapi_extra=request_body(
        Annotated[list[NewOrder], Field(min_length=1, max_length=MAX_BATCH)],
        "NewOrderBatch",
        example=[NEW_ORDER_EXAMPLE],
        description=f"1 to {MAX_BATCH} orders; each is created or refused on its own",
    ),
)
@idempotent
async def create_orders(request: Request, caller: Caller) -> Response:
    items = _json_array(await request.body())
    results: list[dict[str, Any]] = [{} for _ in items]
    valid: list[tuple[int, NewOrder]] = []
    for index, item in enumerate(items):
        # Refused per item, before the store: text no database can hold used to fail the whole
        # batch with a 500 after the valid items had been saved.
        unstorable = text_errors(item)
        if unstorable:
            results[index] = _refused(item, unstorable)
            continue
        try:
            valid.append((index, NewOrder.model_validate(item)))
        except ValidationError as exc:
            results[index] = _refused(item, pydantic_errors(exc.errors()))
        except OverflowError as exc:
            # pydantic wraps only ValueError; a date such as 0001-01-01T00:00:00+01:00 parses
            # but overflows when moved to UTC, and must refuse this item, not fail the batch.
            results[index] = _refused(item, [("body", f"a value is out of range: {exc}")])
    store: Store = request.app.state.store
    # The answer is built inside the transaction, before the commit: if it cannot be built,
    # nothing is saved (a 500 after the commit used to leave saved orders the client never
    # learned of, and whose retry was refused as a duplicate).
    return await store.create_orders_answered(
        caller,
        [order for _, order in valid],
        lambda created: _batch_answer(results, valid, created),
    )


def _batch_answer(
    results: list[dict[str, Any]], valid: list[tuple[int, NewOrder]], created: list[CreateResult]
) -> Response:
    """201 (all created), 207 (some) or 422 (none), each item in request order."""
    for (index, _), result in zip(valid, created, strict=True):
        results[index] = (
            {
                "customer_identifier": result.customer_identifier,
                "status": "created",
                "id": result.order.id,
                # The document as stored (pydantic's JSON), embedded as is: re-encoding it
                # with orjson failed on integers beyond 64 bits that pydantic accepts.
                "order": orjson.Fragment(result.order.model_dump_json()),
            }
            if result.order is not None
            else _refused({"customer_identifier": result.customer_identifier}, result.errors)
        )
    n_created = sum(1 for r in results if r["status"] == "created")
    body: dict[str, Any] = {
        "data": results,
        "created": n_created,
        "refused": len(results) - n_created,
    }
    if n_created == len(results):
        return _json(orjson.dumps(body), 201)
    if n_created == 0:
        body |= {
            "error_type": "unprocessable_entity",
            "message": "no order was created",
            "errors": [
                {"field": f"[{i}].{f}", "message": m}
                for i, r in enumerate(results)
                for f, m in ((e["field"], e["message"]) for e in r["errors"])
            ],
        }
        return _json(orjson.dumps(body), 422)
    return _json(orjson.dumps(body), 207)


def _refused(item: Any, errors: list[tuple[str, str]]) -> dict[str, Any]:
    identifier = item.get("customer_identifier") if isinstance(item, dict) else None
    if not isinstance(identifier, str) or text_errors(identifier):
        # Echoed only as the text it should be: a number (1.5 is a Decimal here, 10**40 too
        # wide for orjson) failed the whole answer with a 500; unstorable text cannot be sent.
        identifier = None
    return {
        "customer_identifier": identifier,
        "status": "refused",
        "errors": [{"field": f, "message": m} for f, m in errors],
    }


def _json_array(raw: bytes) -> list[Any]:
    parsed = parse_json(raw)
    if not isinstance(parsed, list):
        raise ApiError(
            422,
            "request body must be a JSON array of orders",
            [("body", "expected an array, e.g. [{...}, {...}]")],
        )
    if not 1 <= len(parsed) <= MAX_BATCH:
        raise ApiError(
            422, f"a batch holds 1 to {MAX_BATCH} orders", [("body", f"got {len(parsed)} items")]
        )
    return parsed


@router.get(
    "/shipments",
    summary="List shipments (poll with updated_since / sdt)",
    responses={
        200: answer("A page of shipments", model_ref(ShipmentPage, "ShipmentPage"), _KEYSET)
    },
)
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
    return _listing(_envelope(page, query, summary), request.app.state)


@router.get(
    "/shipments/{shipment_id}",
    summary="Get one shipment",
    responses={200: answer("The shipment", model_ref(Shipment, "Shipment"))},
)
async def get_shipment(request: Request, caller: Caller, shipment_id: UUID) -> Response:
    store: Store = request.app.state.store
    return _json((await store.get_shipment_doc(caller.account_id, str(shipment_id))).encode())


@router.get(
    "/events",
    summary="ordersync extension: the event log, every change in commit order",
    description="Events after `after` (an event id; 0: from the start) in id order. Continue "
    "with `after=next_after`: no event is ever missed, each is served once. `entity` is the "
    "entity at the event's version, or null when a later version superseded it (then GET "
    "`entity_url`). A position older than the retention answers 410 `position_pruned` with the "
    "`head` to follow from after a resync.",
    responses=errors(410)
    | {200: answer("A page of events", model_ref(MasonHubEventPage, "MasonHubEventPage"))},
)
async def list_events(
    request: Request,
    caller: Caller,
    after: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="the last event id seen; 0: the start")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE, description="1..100")] = 100,
) -> Response:
    page = await read_events(request, caller, after, limit)
    data = []
    for e in page.events:
        plural = "orders" if e.kind == "order" else "shipments"
        data.append(
            {
                "event_id": e.event_id,
                "kind": e.kind,
                "entity_id": e.entity_id,
                "version": e.version,
                "event_type": e.event_type,
                "connection": e.connection,
                "created_at": format_rfc3339(e.created_at),
                "entity": None
                if e.doc is None
                else orjson.Fragment(with_event_id(e.doc, e.event_id)),
                "entity_url": f"/api/v1/{plural}/{e.entity_id}",
                "current_version": e.current_version,
            }
        )
    body = {"data": data, "next_after": page.next_after, "head": page.head, "limit": limit}
    return _json(orjson.dumps(body))


def _with_statuses(query: ListQuery, statuses: list[Any] | None) -> ListQuery:
    if not statuses:
        return query
    return dataclasses.replace(query, statuses=tuple(str(s) for s in statuses))


# -- lean listing routes ----------------------------------------------------------------------
#
# Polling `GET /api/v1/orders` is the hub's hot path. Through FastAPI, each request pays for
# dependency solving and pydantic validation of seven query parameters: about a quarter of the
# hub's CPU per page once the store read is cheap. A plain Starlette route in front of each
# FastAPI listing route serves the requests whose query string is plainly valid, parsed by
# hand, and hands every other request (anything it does not fully understand: a bad or unusual
# value, a repeated single parameter, HEAD) to the FastAPI route untouched. Errors therefore
# keep exactly FastAPI's shapes, and the OpenAPI description still comes from the FastAPI route.

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SINGLE = frozenset({"offset", "limit", "sdt", "updated_since", "list_type", "after_id"})


def _plain_listing(
    items: list[tuple[str, str]], statuses: frozenset[str], max_offset: int = MAX_OFFSET
) -> tuple[ListQuery, bool] | None:
    """(query, summary) from a query string FastAPI would accept as is, with the same values;
    None when in any doubt (the FastAPI route then decides, errors included)."""
    single: dict[str, str] = {}
    ids: list[str] = []
    wanted: list[str] = []
    for key, value in items:
        if key == "id":
            if not _UUID.fullmatch(value):  # canonical lowercase form only
                return None
            ids.append(value)
        elif key == "status":
            if value not in statuses:
                return None
            wanted.append(value)
        elif key in _SINGLE:
            if key in single:
                return None
            single[key] = value
        # FastAPI ignores unknown parameters; so does this.
    if len(ids) > 30:
        return None
    offset = _plain_int(single.get("offset", "0"), 0, max_offset)
    limit = _plain_int(single.get("limit", "30"), 1, 100)
    list_type = single.get("list_type", "detail")
    if offset is None or limit is None or list_type not in ("detail", "summary"):
        return None
    try:
        since = _since(single.get("sdt"), single.get("updated_since"))
    except ApiError:
        return None
    after_id = single.get("after_id")
    if after_id is not None and (since is None or not _UUID.fullmatch(after_id)):
        return None
    query = ListQuery(tuple(ids), since, tuple(wanted), offset, limit, after_id)
    return query, list_type == "summary"


def _plain_int(value: str, low: int, high: int) -> int | None:
    """A canonical decimal integer within [low, high] ("0", "42"; not "042", "+1", " 1")."""
    if not (value.isascii() and value.isdigit()) or (value[0] == "0" and value != "0"):
        return None
    if len(value) > len(str(high)):
        return None  # out of range; and int() refuses more than 4300 digits with a ValueError
    number = int(value)
    return number if low <= number <= high else None


class _LeanListing:
    """The ASGI endpoint of a lean listing route; `full` is the FastAPI route it stands for."""

    def __init__(
        self,
        full: APIRoute,
        statuses: type[Enum],
        list_page: Callable[[Store, int, ListQuery, bool], Awaitable[Page]],
    ) -> None:
        self.full = full
        self.statuses = frozenset(str(s.value) for s in statuses)
        self.list_page = list_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        plain = (
            _plain_listing(
                request.query_params.multi_items(), self.statuses, request.app.state.max_offset
            )
            if scope["method"] == "GET"
            else None
        )
        if plain is None:
            await self.full.handle(scope, receive, send)
            return
        query, summary = plain
        # Raises ApiError(401) as the FastAPI route's first dependency would; the app's
        # exception handlers render it.
        store: Store = request.app.state.store
        caller = await principal_of(scope, store, masonhub_credential)
        page = await self.list_page(store, caller.account_id, query, summary)
        await _listing(_envelope(page, query, summary), request.app.state)(scope, receive, send)


def _install_lean_listing(
    full_endpoint: Callable[..., Any],
    statuses: type[Enum],
    list_page: Callable[[Store, int, ListQuery, bool], Awaitable[Page]],
) -> None:
    full = next(r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is full_endpoint)
    lean = Route(
        full.path, _LeanListing(full, statuses, list_page), methods=["GET"], include_in_schema=False
    )
    # First in the router, so that it matches before the FastAPI route of the same path.
    router.routes.insert(0, lean)


_install_lean_listing(
    list_orders,
    OrderStatus,
    lambda store, account_id, query, summary: store.list_orders(account_id, query, summary=summary),
)
_install_lean_listing(
    list_shipments,
    ShipmentStatus,
    lambda store, account_id, query, summary: store.list_shipments(
        account_id, query, summary=summary
    ),
)
