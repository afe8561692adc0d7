"""The HubRise dialect under /v1 (seed 003): wire shape <-> domain, nothing else.

`X-Access-Token` names the connection. `GET /v1/location/orders` pages newest first with an
opaque keyset cursor (`X-Cursor-Next`); money is `"8.90 EUR"`, decimals are strings, times are
ISO 8601 in the account's time zone, days of the week are DOW text. Errors have HubRise's shape
(`error_type`, and for 422 `"message": "Validation failed"` with a field breakdown). Private
refs belong to the connection that set them. Passive callbacks list the changes made by other
connections until they are acknowledged. `X-Http-Method-Override` turns a POST into a PATCH,
PUT or DELETE and is refused on a GET.

ordersync extension: each listed order carries `event_id` (as a string, like HubRise ids): the
id of the change that made its version, which is also the `id` of that change's callback event;
`GET /v1/location/events?after=<id>&count=100` follows the event log (see
`ordersync.hub.event_feed`), advertised on the order listing by `X-Ordersync-Events`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ordersync.errors import InvalidTransition, NotFound, ValidationFailed, WriteTimedOut
from ordersync.hub.auth import hubrise_principal
from ordersync.hub.dialects.hubrise_shapes import (
    STATUS_IN,
    UNMAPPED_STATUSES,
    CallbackIn,
    FieldErrors,
    OrderIn,
    OrderPatch,
    clean_message,
    errors_of,
    new_order,
    render_event,
    render_row,
    wire_field,
)
from ordersync.hub.dialects.hubrise_types import (
    decode_cursor,
    encode_cursor,
    parse_time,
    zone,
)
from ordersync.hub.errors import ApiError, position_pruned, write_timed_out
from ordersync.hub.event_feed import MAX_EVENT_ID, MAX_EVENTS_PAGE, extension_headers, read_events
from ordersync.hub.idempotency import idempotent
from ordersync.hub.json_body import parse_json, require_storable_text
from ordersync.hub.openapi import answer, errors, model_ref, request_body
from ordersync.hub.openapi_shapes import (
    CALLBACK_EXAMPLE,
    HUBRISE_ORDER_EXAMPLE,
    HUBRISE_PATCH_EXAMPLE,
    HubRiseCallback,
    HubRiseEvent,
    HubRiseEventLogPage,
    HubRiseOrder,
)
from ordersync.store.events import PositionPruned
from ordersync.store.hubrise import (
    EVENT_KINDS,
    EVENT_TYPES,
    UNSET,
    Event,
    HubRiseStore,
    Location,
    OrderQuery,
    PrivateRefTaken,
)
from ordersync.store.store import Principal, Store
from ordersync.store.webhooks import Subscription as WebhookSubscription
from ordersync.store.webhooks import WebhookStore, url_problem

PREFIX = "/v1"
MAX_COUNT = 100
EVENTS_PATH = "/v1/location/events"

M = TypeVar("M", bound=BaseModel)


# -- errors in HubRise's shape -----------------------------------------------------------------


def hubrise_error(error: ApiError) -> Response:
    body: dict[str, Any]
    if error.status == 401:
        body = {"error_type": "unauthorized"}
    elif error.status == 422:
        body = {
            "message": "Validation failed",
            "errors": [{"field": f, "message": m} for f, m in error.errors]
            or [{"field": "base", "message": error.message}],
            # "unprocessable_entity" unless the refusal names its own (idempotency_key_reused)
            "error_type": error.error_type,
        }
    else:
        body = {"error_type": error.error_type, "message": error.message}
        if error.errors:
            body["errors"] = [{"field": f, "message": m} for f, m in error.errors]
        body.update(error.extra)
    return Response(orjson.dumps(body), error.status, error.headers, media_type="application/json")


def _as_api_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RequestValidationError):
        errors = [
            (
                ".".join(str(p) for p in e.get("loc", ())[1:]) or "query",
                clean_message(str(e.get("msg", "invalid"))),
            )
            for e in exc.errors()
        ]
        return ApiError(400, "request parameters are invalid", errors)
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc))
    if isinstance(exc, InvalidTransition):
        return ApiError(422, str(exc), [("status", str(exc))])
    if isinstance(exc, PrivateRefTaken):
        return ApiError(422, str(exc), [("private_ref", str(exc))])
    if isinstance(exc, ValidationFailed):
        return ApiError(422, str(exc), exc.errors)
    if isinstance(exc, WriteTimedOut):
        return write_timed_out(exc)
    if isinstance(exc, PositionPruned):
        error = position_pruned(exc)
        error.extra = {k: str(v) for k, v in error.extra.items()}  # HubRise ids are strings
        return error
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
            error = ApiError(
                400,
                "X-Http-Method-Override is not accepted in a GET request",
                [("X-Http-Method-Override", "only a POST can be overridden")],
            )
        elif wanted not in self.ALLOWED:
            error = ApiError(
                400,
                f"cannot override POST with {wanted!r}",
                [("X-Http-Method-Override", "must be PATCH, PUT or DELETE")],
            )
        else:
            await self.app({**scope, "method": wanted}, receive, send)
            return
        await hubrise_error(error)(scope, receive, send)


def install(app: FastAPI) -> None:
    """Serve the dialect on `app`: its router and the method override it honours."""
    app.include_router(router)
    app.add_middleware(MethodOverride)


router = APIRouter(prefix=PREFIX, tags=["hubrise"], route_class=HubRiseRoute)


Caller = Annotated[Principal, Depends(hubrise_principal)]

_ORDER = model_ref(HubRiseOrder, "HubRiseOrder")
_ORDERS = {"type": "array", "items": _ORDER}
_CALLBACK = model_ref(HubRiseCallback, "HubRiseCallback")
_EVENT = model_ref(HubRiseEvent, "HubRiseEvent")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _hubrise(request: Request) -> HubRiseStore:
    queries: HubRiseStore = request.app.state.hubrise_store
    return queries


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status, media_type="application/json")


def _conditional(request: Request, body: bytes, headers: dict[str, str] | None = None) -> Response:
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


async def _body(request: Request) -> Any:
    raw = await request.body()
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if raw and media_type != "application/json":
        raise ApiError(
            415,
            "the request body must be JSON (Content-Type: application/json)",
            error_type="unsupported_media_type",
        )
    payload = parse_json(raw or b"{}")
    require_storable_text(payload)
    return payload


def _model(model: type[M], payload: Any) -> M:
    if not isinstance(payload, dict):
        raise ApiError(422, "request body must be a JSON object", [("base", "expected {...}")])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ApiError(422, "request body is invalid", errors_of(exc)) from None


def _private_ref(value: str | None) -> str | None:
    if value is not None and (not 0 < len(value) <= 100 or "\x00" in value):
        raise ApiError(
            422,
            "invalid private_ref",
            [("private_ref", "must be 1 to 100 characters, without NUL")],
        )
    return value


# -- orders ------------------------------------------------------------------------------------


@router.get(
    "/location/orders",
    summary="List orders, newest first, with cursor paging",
    responses={
        200: answer("Orders, newest first", _ORDERS, ("X-Cursor-Next", "ETag")),
        304: answer("Not modified (If-None-Match)", headers=("ETag",)),
    },
)
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
    headers |= extension_headers(request.app.state, EVENTS_PATH)
    body = orjson.dumps([render_row(row, location) for row in page])
    return _conditional(request, body, headers)


def _known_id(order_id: str) -> str:
    # No order has such an id, and PostgreSQL refuses NUL in text parameters (a 500 otherwise).
    if "\x00" in order_id or len(order_id) > 36:
        raise NotFound(f"no order with id {order_id!r}")
    return order_id


def _order_query(
    location: Location,
    count: int,
    cursor: str | None,
    status: str | None,
    private_ref: str | None,
    after: str | None,
    before: str | None,
) -> OrderQuery:
    errors: FieldErrors = []
    if private_ref is not None and "\x00" in private_ref:
        errors.append(("private_ref", "must not contain NUL characters"))
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
            errors.append(
                (
                    "status",
                    f"{status!r} is not an order status; one of "
                    f"{', '.join([*STATUS_IN, *sorted(UNMAPPED_STATUSES)])}",
                )
            )
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


@router.get(
    "/location/orders/{order_id}",
    summary="Get one order",
    responses={
        200: answer("The order", _ORDER, ("ETag",)),
        304: answer("Not modified (If-None-Match)", headers=("ETag",)),
    },
)
async def get_order(request: Request, caller: Caller, order_id: str) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    row = await queries.get_order(caller, _known_id(order_id))
    return _conditional(request, orjson.dumps(render_row(row, location)))


@router.post(
    "/location/orders",
    summary="Create an order",
    status_code=201,
    responses=errors(415, 422) | {201: answer("The order created", _ORDER)},
    openapi_extra=request_body(OrderIn, "HubRiseOrderIn", example=HUBRISE_ORDER_EXAMPLE),
)
@idempotent
async def create_order(request: Request, caller: Caller) -> Response:
    body = _model(OrderIn, await _body(request))
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    order = new_order(body, location, _store(request).clock())
    ref = _private_ref(body.private_ref)
    # Order, ref and answer in one transaction: a ref taken meanwhile, or an answer that
    # cannot be rendered, saves nothing (PrivateRefTaken / 500) instead of an order the client
    # never learned of.
    result, response = await queries.create_order(
        caller, order, ref, lambda row: _json(render_row(row, location), 201)
    )
    if response is None:
        raise ApiError(
            422,
            "Validation failed",
            [(wire_field(tuple(f.split("."))), m) for f, m in result.errors],
        )
    return response


@router.patch(
    "/location/orders/{order_id}",
    summary="Update status and/or private_ref",
    responses=errors(415, 422) | {200: answer("The order as it now is", _ORDER)},
    openapi_extra=request_body(
        OrderPatch, "HubRiseOrderPatch", example=HUBRISE_PATCH_EXAMPLE, required=False
    ),
)
@idempotent
async def patch_order(request: Request, caller: Caller, order_id: str) -> Response:
    payload = await _body(request)
    patch = _model(OrderPatch, payload)
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    order_id = _known_id(order_id)
    target = None
    if patch.status is not None:
        if patch.status not in STATUS_IN:
            known = ", ".join(STATUS_IN)
            message = f"{patch.status!r} has no equivalent on this hub; one of {known}"
            raise ApiError(422, "Validation failed", [("status", message)])
        target = STATUS_IN[patch.status]
    ref = _private_ref(patch.private_ref) if "private_ref" in payload else UNSET
    # Both parts and the answer in one transaction, the order locked: a refused part changes
    # nothing, and what is checked is what is changed.
    return await queries.patch_order(
        caller, order_id, target, ref, lambda row: _json(render_row(row, location))
    )


# -- callbacks ---------------------------------------------------------------------------------


def _render_callback(
    events: dict[str, list[str]] | None, active: WebhookSubscription | None = None
) -> dict[str, Any]:
    """The callback; with an active one (a url) also its ordersync extension fields: the
    subscription `id` (for /v1/webhooks/{id}/...) and `status`."""
    if active is None:
        return {"url": None, "events": events or {}}
    return {"url": active.url, "events": events or {}, "id": active.id, "status": active.status}


async def _active(request: Request, caller: Principal) -> WebhookSubscription | None:
    webhooks: WebhookStore = request.app.state.webhooks
    found = await webhooks.subscriptions(caller, "hubrise")
    return found[0] if found else None


@router.get(
    "/callback",
    summary="This connection's callback",
    responses={200: answer("The callback", _CALLBACK)},
)
async def get_callback(request: Request, caller: Caller) -> Response:
    callback = await _hubrise(request).get_callback(caller)
    active = await _active(request, caller) if callback else None
    return _json(_render_callback(callback.events if callback else None, active))


@router.post(
    "/callback",
    summary="Create or replace this connection's callback (active with a url)",
    responses=errors(415, 422) | {200: answer("The callback", _CALLBACK)},
    openapi_extra=request_body(CallbackIn, "HubRiseCallbackIn", example=CALLBACK_EXAMPLE),
)
@idempotent
async def put_callback(request: Request, caller: Caller) -> Response:
    body = _model(CallbackIn, await _body(request))
    errors: FieldErrors = []
    problem = None if body.url is None else url_problem(body.url)
    if problem is not None:
        errors.append(("url", problem))
    if not body.events:
        errors.append(("events", 'name at least one, e.g. {"order": ["create", "update"]}'))
    for kind, types in body.events.items():
        if kind not in EVENT_KINDS:
            errors.append((f"events.{kind}", f"one of {', '.join(EVENT_KINDS)}"))
        elif not types or not set(types) <= set(EVENT_TYPES):
            errors.append((f"events.{kind}", f"a non-empty list of {', '.join(EVENT_TYPES)}"))
    if errors:
        raise ApiError(422, "Validation failed", errors)
    # Active delivery (a url): one subscription per connection, replaced when the url changes;
    # its secret (extension field `secret`) is answered when it is created. Events stay
    # listable (passive) either way. The passive callback and the answer (with an
    # Idempotency-Key, the key too) commit last, together.
    webhooks: WebhookStore = request.app.state.webhooks
    active = await _active(request, caller)
    secret = None
    if body.url is None:
        if active is not None:
            await webhooks.delete(caller, "hubrise", None)
        active = None
    elif active is None or active.url != body.url:
        active, secret = await webhooks.create(
            caller, "hubrise", body.url, "*", events=body.events, replace=True
        )
    else:
        active = await webhooks.set_events(caller, active.id, body.events)

    def render(callback: Any) -> Response:
        rendered = _render_callback(callback.events, active)
        if secret is not None:
            rendered["secret"] = secret
        return _json(rendered)

    return await _hubrise(request).put_callback_answered(caller, body.events, render)


@router.delete(
    "/callback",
    summary="Delete this connection's callback and its events",
    responses={200: answer("No callback any more", _CALLBACK)},
)
@idempotent
async def delete_callback(request: Request, caller: Caller) -> Response:
    webhooks: WebhookStore = request.app.state.webhooks
    await webhooks.delete(caller, "hubrise", None)
    return await _hubrise(request).delete_callback_answered(
        caller, lambda _: _json(_render_callback(None))
    )


@router.get(
    "/callback/events",
    summary="Unacknowledged events, oldest first (at most 100)",
    responses=errors(404) | {200: answer("The events", {"type": "array", "items": _EVENT})},
)
async def list_events(request: Request, caller: Caller) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    events = await queries.pending_events(caller)
    return _json([render_event(event, location) for event in events])


def _event_seq(event_id: str) -> int:
    if not event_id.isdigit() or len(event_id) > 18:
        raise NotFound(f"no pending event with id {event_id}")
    return int(event_id)


@router.get(
    "/callback/events/{event_id}",
    summary="One unacknowledged event",
    responses={200: answer("The event", _EVENT)},
)
async def get_event(request: Request, caller: Caller, event_id: str) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    event = await queries.get_event(caller, _event_seq(event_id))
    return _json(render_event(event, location))


@router.delete(
    "/callback/events/{event_id}",
    summary="Acknowledge (delete) one event",
    responses={200: answer("The event acknowledged", _EVENT)},
)
@idempotent
async def acknowledge_event(request: Request, caller: Caller, event_id: str) -> Response:
    queries = _hubrise(request)
    location = await queries.location(caller.account_id)
    return await queries.acknowledge_answered(
        caller, _event_seq(event_id), lambda event: _json(render_event(event, location))
    )


# -- the event log (ordersync extension) -------------------------------------------------------


@router.get(
    "/location/events",
    summary="ordersync extension: the event log, every change in commit order",
    description="Events after `after` (an event id; 0: from the start) in id order, in the "
    "shape of callback events plus `connection` and `ordersync_event_type`; continue with "
    "`after=next_after`: no event is missed, each is served once. `new_state` is the entity "
    "at the event's version, null when a later version superseded it. A position older than "
    "the retention answers 410 `position_pruned` with the `head` to follow from after a "
    "resync.",
    responses=errors(410)
    | {200: answer("A page of events", model_ref(HubRiseEventLogPage, "HubRiseEventLogPage"))},
)
async def list_log_events(
    request: Request,
    caller: Caller,
    after: Annotated[
        int, Query(ge=0, le=MAX_EVENT_ID, description="the last event id seen; 0: the start")
    ] = 0,
    count: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE, description="1..100")] = MAX_EVENTS_PAGE,
) -> Response:
    location = await _hubrise(request).location(caller.account_id)
    page = await read_events(request, caller, after, count)
    events = []
    for e in page.events:
        kind_created = f"{e.kind}.created"
        shown = Event(
            e.event_id,
            e.kind,
            e.entity_id,
            e.version,
            "create" if e.event_type == kind_created else "update",
            e.created_at,
            e.doc,
            None,
        )
        rendered = render_event(shown, location)
        if rendered["new_state"] is not None and e.kind == "order":
            rendered["new_state"]["event_id"] = str(e.event_id)
        rendered |= {"connection": e.connection, "ordersync_event_type": e.event_type}
        events.append(rendered)
    body = {"events": events, "next_after": str(page.next_after), "head": str(page.head)}
    return _json(body)
