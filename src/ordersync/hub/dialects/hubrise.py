"""The HubRise dialect under /v1 (seed 003): wire shape <-> domain, nothing else.

`X-Access-Token` names the connection. `GET /v1/location/orders` pages newest first with an
opaque keyset cursor (`X-Cursor-Next`); money is `"8.90 EUR"`, decimals are strings, times are
ISO 8601 in the account's time zone, days of the week are DOW text. Errors have HubRise's shape
(`error_type`, and for 422 `"message": "Validation failed"` with a field breakdown). Private
refs belong to the connection that set them. Passive callbacks list the changes made by other
connections until they are acknowledged. `X-Http-Method-Override` turns a POST into a PATCH,
PUT or DELETE and is refused on a GET.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ordersync.domain import NewOrder, OrderStatus, check_transition, format_rfc3339
from ordersync.domain.timestamps import parse_rfc3339_ms
from ordersync.domain.weekdays import format_dow, parse_dow
from ordersync.errors import AuthenticationFailed, InvalidTransition, NotFound, ValidationFailed
from ordersync.hub.dialects.hubrise_types import (
    decode_cursor,
    encode_cursor,
    format_decimal,
    format_money,
    format_time,
    parse_decimal,
    parse_money,
    parse_time,
    zone,
)
from ordersync.hub.errors import ApiError
from ordersync.store.hubrise import (
    EVENT_KINDS,
    EVENT_TYPES,
    Event,
    HubRiseStore,
    Location,
    OrderQuery,
    OrderRow,
    PrivateRefTaken,
)
from ordersync.store.store import Principal, Store

PREFIX = "/v1"
MAX_COUNT = 100

STATUS_OUT = {
    "open": "new",
    "atWarehouse": "received",
    "inProcess": "in_preparation",
    "packed": "awaiting_shipment",
    "fulfilled": "in_delivery",
    "delivered": "completed",
    "canceled": "cancelled",
}
STATUS_IN = {wire: OrderStatus(ours) for ours, wire in STATUS_OUT.items()}
# HubRise statuses our lifecycle has no equivalent for: a valid filter that matches nothing.
UNMAPPED_STATUSES = frozenset({"accepted", "awaiting_collection", "rejected", "delivery_failed"})

FieldErrors = list[tuple[str, str]]
M = TypeVar("M", bound=BaseModel)


# -- errors in HubRise's shape -----------------------------------------------------------------


def hubrise_error(error: ApiError) -> Response:
    body: dict[str, Any]
    if error.status == 401:
        body = {"error_type": "unauthorized"}
    elif error.status == 422:
        body = {"message": "Validation failed",
                "errors": [{"field": f, "message": m} for f, m in error.errors]
                or [{"field": "base", "message": error.message}],
                "error_type": "unprocessable_entity"}
    else:
        body = {"error_type": error.error_type, "message": error.message}
        if error.errors:
            body["errors"] = [{"field": f, "message": m} for f, m in error.errors]
    return Response(orjson.dumps(body), error.status, error.headers,
                    media_type="application/json")


def _as_api_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        errors = [(".".join(str(p) for p in e.get("loc", ())[1:]) or "query",
                   _clean(str(e.get("msg", "invalid")))) for e in exc.errors()]
        return ApiError(400, "request parameters are invalid", errors)
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, InvalidTransition):
        return ApiError(422, str(exc), [("status", str(exc))])
    if isinstance(exc, PrivateRefTaken):
        return ApiError(422, str(exc), [("private_ref", str(exc))])
    if isinstance(exc, ValidationFailed):
        return ApiError(422, str(exc), exc.errors)
    return None


class HubRiseRoute(APIRoute):
    """Renders every error raised inside a /v1 route (dependencies included) in HubRise's
    shape; anything else goes on to the hub's own handlers (500 internal_error)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                error = _as_api_error(exc)
                if error is None:
                    raise
                return hubrise_error(error)

        return guarded


class MethodOverride:
    """`X-Http-Method-Override` on /v1: a POST may say PATCH, PUT or DELETE; a GET may not
    carry it at all, since a GET must not change anything."""

    ALLOWED = frozenset({"POST", "PATCH", "PUT", "DELETE"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"x-http-method-override")
        method = str(scope["method"]).upper()
        if raw is None or method not in ("GET", "HEAD", "POST"):
            await self.app(scope, receive, send)
            return
        wanted = raw.decode("latin-1").strip().upper()
        if method != "POST":
            error = ApiError(400, "X-Http-Method-Override is not accepted in a GET request",
                             [("X-Http-Method-Override", "only a POST can be overridden")])
        elif wanted not in self.ALLOWED:
            error = ApiError(400, f"cannot override POST with {wanted!r}",
                             [("X-Http-Method-Override", "must be PATCH, PUT or DELETE")])
        else:
            await self.app({**scope, "method": wanted}, receive, send)
            return
        await hubrise_error(error)(scope, receive, send)


def install(app: FastAPI) -> None:
    """Serve the dialect on `app`: its router and the method override it honours."""
    app.include_router(router)
    app.add_middleware(MethodOverride)


router = APIRouter(prefix=PREFIX, tags=["hubrise"], route_class=HubRiseRoute)


async def access_token_principal(request: Request) -> Principal:
    token = request.headers.get("x-access-token", "").strip()
    if not token:
        raise ApiError(401, "missing X-Access-Token header")
    try:
        return await _store(request).authenticate(token)
    except AuthenticationFailed:
        raise ApiError(401, "the access token is not valid for this hub") from None


Caller = Annotated[Principal, Depends(access_token_principal)]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _hubrise(request: Request) -> HubRiseStore:
    store = _store(request)
    queries = getattr(request.app.state, "hubrise_store", None)
    if not isinstance(queries, HubRiseStore) or queries.store is not store:
        queries = HubRiseStore(store)
        request.app.state.hubrise_store = queries
    return queries


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def _conditional(request: Request, body: bytes, headers: dict[str, str] | None = None
                 ) -> Response:
    """200 with a weak ETag of the content, or 304 when If-None-Match still names it."""
    headers = dict(headers or {})
    digest = hashlib.blake2b(body, digest_size=12)
    digest.update(orjson.dumps(headers, option=orjson.OPT_SORT_KEYS))
    etag = f'W/"{digest.hexdigest()}"'
    headers["ETag"] = etag
    wanted = request.headers.get("if-none-match", "")
    tags = {t.strip().removeprefix("W/") for t in wanted.split(",") if t.strip()}
    if "*" in tags or etag.removeprefix("W/") in tags:
        return Response(status_code=304, headers=headers)
    return Response(body, 200, headers, media_type="application/json")


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ")


# -- rendering ---------------------------------------------------------------------------------


def render_order(doc: dict[str, Any], location: Location, private_ref: str | None
                 ) -> dict[str, Any]:
    tz, currency = zone(location.timezone), location.currency

    def at(text: str) -> str:
        return format_time(parse_rfc3339_ms(text), tz)

    items, total = [], Decimal(0)
    for line in doc["line_items"]:
        price, quantity = Decimal(line["unit_price"]), Decimal(line["quantity"])
        subtotal = Decimal(format_money(price * quantity, currency).partition(" ")[0])
        total += subtotal
        items.append({
            "line_number": line["line_number"],
            "product_name": line["sku_customer_identifier"],
            "sku_ref": line["sku_customer_identifier"],
            "price": format_money(price, currency),
            "quantity": format_decimal(quantity),
            "subtotal": format_money(subtotal, currency),
        })
    days = doc.get("delivery_days")
    return {
        "id": doc["id"],
        "location_id": location.name,
        "private_ref": private_ref,
        "ref": doc["customer_identifier"],
        "status": STATUS_OUT[doc["status"]],
        "service_type": "delivery",
        "service_type_ref": doc["shipper_service_level"],
        "created_at": at(doc["created_at"]),
        "customer_notes": None,
        "items": items,
        "total": format_money(total, currency),
        "customer": _render_address(doc["shipping_address"]),
        # Ours, where HubRise has no field.
        "billing_address": _render_address(doc["billing_address"]),
        "delivery_days": None if days is None else format_dow(days),
        "shipping_provider": doc["shipping_provider"],
        "order_type": doc["order_type"],
        "priority": doc["priority"],
        "order_policy": doc["order_policy"],
        "pick_from": doc["pick_from"],
        "value_added_services": doc["value_added_services"],
        "submitted_at": at(doc["submitted_at"]),
        "version": doc["version"],
        "updated_at": at(doc["updated_at"]),
    }


def _render_address(address: dict[str, Any]) -> dict[str, Any]:
    first, _, last = address["name"].partition(" ")
    return {
        "first_name": first,
        "last_name": last or None,
        "address_1": address["address1"],
        "address_2": address.get("address2"),
        "city": address["city"],
        "state": address["state"] or None,
        "postal_code": address["postal_code"],
        "country": address["country"],
    }


def render_shipment(doc: dict[str, Any], location: Location) -> dict[str, Any]:
    tz = zone(location.timezone)
    return {
        "id": doc["id"],
        "location_id": location.name,
        "order_id": doc["order_id"],
        "ref": doc["customer_identifier"],
        "status": doc["status"],
        "carrier": doc["carrier"],
        "service_level": doc["service_level"],
        "tracking_number": doc["tracking_number"],
        "shipped_at": format_time(parse_rfc3339_ms(doc["shipped_at"]), tz),
        "items": [{"line_number": line["line_number"], "sku_ref": line["sku_customer_identifier"],
                   "quantity": format_decimal(Decimal(line["quantity"]))}
                  for line in doc["lines"]],
        "version": doc["version"],
        "created_at": format_time(parse_rfc3339_ms(doc["created_at"]), tz),
        "updated_at": format_time(parse_rfc3339_ms(doc["updated_at"]), tz),
    }


def _render_row(row: OrderRow, location: Location) -> dict[str, Any]:
    return render_order(orjson.loads(row.doc), location, row.private_ref)


def render_event(event: Event, location: Location) -> dict[str, Any]:
    state: dict[str, Any] | None = None
    order_id = event.entity_id
    if event.doc is not None:
        doc = orjson.loads(event.doc)
        if event.kind == "order":
            state = render_order(doc, location, event.private_ref)
        else:
            state, order_id = render_shipment(doc, location), doc["order_id"]
    return {
        "id": str(event.seq),
        "created_at": format_time(event.created_at, zone(location.timezone)),
        "resource_type": event.kind,
        "event_type": event.event_type,
        "resource_id": event.entity_id,
        "order_id": order_id,
        "location_id": location.name,
        "version": event.version,
        "new_state": state,
    }


# -- request bodies ----------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIn(_Wire):
    first_name: str | None = None
    last_name: str | None = None
    address_1: str
    address_2: str | None = None
    city: str
    state: str | None = None
    postal_code: str
    country: str


class ItemIn(_Wire):
    line_number: int | None = None
    product_name: str | None = None  # not kept: the hub knows products by sku_ref
    sku_ref: str
    price: str
    quantity: str | int | Decimal
    subtotal: str | None = None  # derived; accepted so that a rendered order can be sent back


class OrderIn(_Wire):
    status: str = "new"
    private_ref: str | None = None
    ref: str
    service_type: str | None = None
    service_type_ref: str
    customer_notes: None = None
    customer: CustomerIn
    items: list[ItemIn]
    total: str | None = None
    billing_address: CustomerIn | None = None
    delivery_days: str | None = None
    shipping_provider: str
    order_type: str = "customer"
    priority: int = 0
    order_policy: str | None = None
    pick_from: list[Any] | None = None
    value_added_services: list[Any] | None = None
    submitted_at: str | None = None


class OrderPatch(_Wire):
    status: str | None = None
    private_ref: str | None = None


class CallbackIn(_Wire):
    url: str | None = None
    events: dict[str, list[str]]


_DOMAIN_FIELDS = {
    "customer_identifier": "ref",
    "shipper_service_level": "service_type_ref",
    "shipping_address": "customer",
    "line_items": "items",
    "sku_customer_identifier": "sku_ref",
    "unit_price": "price",
    "name": "first_name",
    "address1": "address_1",
    "address2": "address_2",
}


def _wire_field(loc: tuple[Any, ...]) -> str:
    return ".".join(_DOMAIN_FIELDS.get(str(part), str(part)) for part in loc) or "base"


def _errors(exc: ValidationError, wire: bool = True) -> FieldErrors:
    return [(".".join(str(p) for p in e["loc"]) if wire else _wire_field(e["loc"]),
             _clean(e["msg"])) for e in exc.errors()]


async def _body(request: Request) -> Any:
    raw = await request.body()
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if raw and media_type != "application/json":
        raise ApiError(415, "the request body must be JSON (Content-Type: application/json)",
                       error_type="unsupported_media_type")
    try:
        return json.loads(raw or b"{}", parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", [("body", str(exc))]
                       ) from None


def _model(model: type[M], payload: Any) -> M:
    if not isinstance(payload, dict):
        raise ApiError(422, "request body must be a JSON object", [("base", "expected {...}")])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "request body is invalid", _errors(exc)) from None


def _private_ref(value: str | None) -> str | None:
    if value is not None and (not 0 < len(value) <= 100 or "\x00" in value):
        raise ApiError(422, "invalid private_ref",
                       [("private_ref", "must be 1 to 100 characters, without NUL")])
    return value


def new_order(body: OrderIn, location: Location, now_ms: int) -> NewOrder:
    """The domain order a HubRise-shaped body describes; 422 with every field at fault."""
    tz, errors = zone(location.timezone), []

    def money(value: str, field: str) -> Decimal:
        try:
            amount, currency = parse_money(value)
        except ValueError as exc:
            errors.append((field, str(exc)))
            return Decimal(0)
        if currency != location.currency:
            errors.append((field, f"must be in {location.currency}, the location's currency"))
        return amount

    if body.status != "new":
        errors.append(("status", "an order is created in status new"))
    if body.service_type not in (None, "delivery"):
        errors.append(("service_type", "this hub fulfils delivery orders only"))
    lines = []
    for i, item in enumerate(body.items):
        try:
            quantity: Decimal | str = parse_decimal(item.quantity)
        except ValueError as exc:
            errors.append((f"items.{i}.quantity", str(exc)))
            quantity = "1"
        price = money(item.price, f"items.{i}.price")
        lines.append({"line_number": item.line_number, "sku_customer_identifier": item.sku_ref,
                      "quantity": quantity, "unit_price": price})
    if body.total is not None:
        stated = money(body.total, "total")
        computed = sum((Decimal(format_money(Decimal(line["unit_price"]) * Decimal(
            line["quantity"]), location.currency).partition(" ")[0]) for line in lines),
            Decimal(0))
        if not errors and stated != computed:
            errors.append(("total", f"must be the sum of the items, "
                           f"{format_money(computed, location.currency)}"))
    days = None
    if body.delivery_days is not None:
        try:
            days = parse_dow(body.delivery_days)
        except ValueError as exc:
            errors.append(("delivery_days", str(exc)))
    submitted = now_ms
    if body.submitted_at is not None:
        try:
            submitted = parse_time(body.submitted_at, tz)
        except ValueError as exc:
            errors.append(("submitted_at", str(exc)))
    fields: dict[str, Any] = {
        "customer_identifier": body.ref,
        "order_type": body.order_type,
        "priority": body.priority,
        "shipping_provider": body.shipping_provider,
        "shipper_service_level": body.service_type_ref,
        "shipping_address": _address(body.customer),
        "billing_address": _address(body.billing_address or body.customer),
        "submitted_at": format_rfc3339(submitted),
        "line_items": lines,
        "delivery_days": days,
    }
    for optional in ("order_policy", "pick_from", "value_added_services"):
        if getattr(body, optional) is not None:
            fields[optional] = getattr(body, optional)
    try:
        order = NewOrder.model_validate(fields)
    except ValidationError as exc:
        errors += [e for e in _errors(exc, wire=False) if e[0] not in {f for f, _ in errors}]
        order = None
    if errors or order is None:
        raise ApiError(422, "Validation failed", errors)
    return order


def _address(customer: CustomerIn) -> dict[str, Any]:
    name = " ".join(p for p in (customer.first_name, customer.last_name) if p and p.strip())
    return {"name": name, "address1": customer.address_1, "address2": customer.address_2,
            "city": customer.city, "state": customer.state or "",
            "postal_code": customer.postal_code, "country": customer.country}


# -- orders ------------------------------------------------------------------------------------


@router.get("/location/orders", summary="List orders, newest first, with cursor paging")
async def list_orders(
    request: Request,
    caller: Caller,
    count: Annotated[int, Query(ge=1, le=MAX_COUNT, description="1..100")] = MAX_COUNT,
    cursor: Annotated[str | None, Query(description="the previous X-Cursor-Next")] = None,
    status: Annotated[str | None, Query(description="a HubRise order status")] = None,
    private_ref: Annotated[str | None, Query(description="this connection's ref")] = None,
    after: Annotated[str | None, Query(description="created at or after (ISO 8601)")] = None,
    before: Annotated[str | None, Query(description="created before (ISO 8601)")] = None,
) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    query = _order_query(location, count, cursor, status, private_ref, after, before)
    rows = [] if query.statuses == () else await queries.list_orders(caller, query)
    page, more = rows[:count], len(rows) > count
    headers = {"X-Cursor-Next": encode_cursor(page[-1].created_at, page[-1].id)} if more else {}
    body = orjson.dumps([_render_row(row, location) for row in page])
    return _conditional(request, body, headers)


def _order_query(location: Location, count: int, cursor: str | None, status: str | None,
                 private_ref: str | None, after: str | None, before: str | None) -> OrderQuery:
    errors: FieldErrors = []
    position = None
    if cursor is not None:
        try:
            position = decode_cursor(cursor)
        except ValueError as exc:
            errors.append(("cursor", str(exc)))
    statuses: tuple[str, ...] | None = None
    if status is not None:
        if status in STATUS_IN:
            statuses = (str(STATUS_IN[status]),)
        elif status in UNMAPPED_STATUSES:
            statuses = ()
        else:
            errors.append(("status", f"{status!r} is not an order status; one of "
                           f"{', '.join([*STATUS_IN, *sorted(UNMAPPED_STATUSES)])}"))
    bounds: dict[str, int | None] = {"after": None, "before": None}
    for name, value in (("after", after), ("before", before)):
        if value is not None:
            try:
                bounds[name] = parse_time(value, zone(location.timezone))
            except ValueError as exc:
                errors.append((name, str(exc)))
    if errors:
        raise ApiError(400, "request parameters are invalid", errors)
    return OrderQuery(count, position, statuses, private_ref, bounds["after"], bounds["before"])


@router.get("/location/orders/{order_id}", summary="Get one order")
async def get_order(request: Request, caller: Caller, order_id: str) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    row = await queries.get_order(caller, order_id)
    return _conditional(request, orjson.dumps(_render_row(row, location)))


@router.post("/location/orders", summary="Create an order", status_code=201)
async def create_order(request: Request, caller: Caller) -> Response:
    body = _model(OrderIn, await _body(request))
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    order = new_order(body, location, _store(request).clock())
    ref = _private_ref(body.private_ref)
    if ref is not None and await queries.ref_holder(caller, "order", ref) is not None:
        raise PrivateRefTaken(f"this connection already uses private_ref {ref!r} on an order")
    (result,) = await _store(request).create_orders(caller, [order])
    if result.order is None:
        raise ApiError(422, "Validation failed",
                       [(_wire_field((f,)), m) for f, m in result.errors])
    if ref is not None:
        await queries.set_private_ref(caller, "order", result.order.id, ref)
    row = await queries.get_order(caller, result.order.id)
    return _json(_render_row(row, location), 201)


@router.patch("/location/orders/{order_id}", summary="Update status and/or private_ref")
async def patch_order(request: Request, caller: Caller, order_id: str) -> Response:
    payload = await _body(request)
    patch = _model(OrderPatch, payload)
    queries, store = _hubrise(request), _store(request)
    location = await queries.location(caller.account_id)
    current = await store.get_order(caller.account_id, order_id)
    target = None
    if patch.status is not None:
        if patch.status not in STATUS_IN:
            raise ApiError(422, "Validation failed", [("status", (
                f"{patch.status!r} has no equivalent on this hub; one of {', '.join(STATUS_IN)}"
            ))])
        target = STATUS_IN[patch.status]
    set_ref = "private_ref" in payload
    ref = _private_ref(patch.private_ref)
    # Check both parts before doing either, so that a refused request changes nothing.
    if target is not None and target != current.status:
        check_transition(current.status, target)
    if set_ref and ref is not None and await queries.ref_holder(caller, "order", ref) not in (
            None, order_id):
        raise PrivateRefTaken(f"this connection already uses private_ref {ref!r} on an order")
    if target is not None and target != current.status:
        await store.transition_order(caller, caller.account_id, order_id, target)
    if set_ref:
        await queries.set_private_ref(caller, "order", order_id, ref)
    return _json(_render_row(await queries.get_order(caller, order_id), location))


# -- callbacks ---------------------------------------------------------------------------------


def _render_callback(events: dict[str, list[str]] | None) -> dict[str, Any]:
    return {"url": None, "events": events or {}}


@router.get("/callback", summary="This connection's callback")
async def get_callback(request: Request, caller: Caller) -> Response:
    callback = await _hubrise(request).get_callback(caller)
    return _json(_render_callback(callback.events if callback else None))


@router.post("/callback", summary="Create or replace this connection's (passive) callback")
async def put_callback(request: Request, caller: Caller) -> Response:
    body = _model(CallbackIn, await _body(request))
    errors: FieldErrors = []
    if body.url is not None:
        errors.append(("url", "this hub keeps passive callbacks only: leave url out and poll "
                       "GET /v1/callback/events"))
    if not body.events:
        errors.append(("events", 'name at least one, e.g. {"order": ["create", "update"]}'))
    for kind, types in body.events.items():
        if kind not in EVENT_KINDS:
            errors.append((f"events.{kind}", f"one of {', '.join(EVENT_KINDS)}"))
        elif not types or not set(types) <= set(EVENT_TYPES):
            errors.append((f"events.{kind}", f"a non-empty list of {', '.join(EVENT_TYPES)}"))
    if errors:
        raise ApiError(422, "Validation failed", errors)
    callback = await _hubrise(request).put_callback(caller, body.events)
    return _json(_render_callback(callback.events))


@router.delete("/callback", summary="Delete this connection's callback and its events")
async def delete_callback(request: Request, caller: Caller) -> Response:
    await _hubrise(request).delete_callback(caller)
    return _json(_render_callback(None))


@router.get("/callback/events", summary="Unacknowledged events, oldest first (at most 100)")
async def list_events(request: Request, caller: Caller) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    events = await queries.pending_events(caller)
    return _json([render_event(event, location) for event in events])


def _event_seq(event_id: str) -> int:
    if not event_id.isdigit() or len(event_id) > 18:
        raise NotFound(f"no pending event with id {event_id}")
    return int(event_id)


@router.get("/callback/events/{event_id}", summary="One unacknowledged event")
async def get_event(request: Request, caller: Caller, event_id: str) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    event = await queries.get_event(caller, _event_seq(event_id))
    return _json(render_event(event, location))


@router.delete("/callback/events/{event_id}", summary="Acknowledge (delete) one event")
async def acknowledge_event(request: Request, caller: Caller, event_id: str) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    event = await queries.acknowledge(caller, _event_seq(event_id))
    return _json(render_event(event, location))
