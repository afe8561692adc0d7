"""Webhook subscription routes of the three dialects (README, "Webhooks").

- MasonHub: `POST /api/v1/callbacks` (an array of `{url, message_type, api_version, token}`),
  `GET /api/v1/callbacks?message_type=`, `DELETE /api/v1/callbacks?id=...` (every one when no
  id is given).
- Tradecloud (ordersync extension; Tradecloud configures webhooks in its portal):
  `POST /v2/webhooks` `{url, auth: {type: none|basic|bearer, username, password, token}}`,
  `GET /v2/webhooks`, `DELETE /v2/webhooks/{id}`.
- HubRise: `POST /v1/callback` with a `url` (in the HubRise router).

Every subscription answers its Standard Webhooks secret (`whsec_...`) once, at creation. The
ordersync extension routes of each dialect (`{base}` = `/api/v1/callbacks`, `/v2/webhooks`,
`/v1/webhooks`): `POST {base}/{id}/secret` (rotate: the new secret, the old one keeps signing
for 24 hours), `POST {base}/{id}/enable`, `GET {base}/{id}/attempts?limit=`,
`POST {base}/{id}/replay` `{event_id}` or `{since, until}` (RFC 3339).
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from ordersync.domain import format_rfc3339, parse_rfc3339_ms
from ordersync.hub.auth import hubrise_principal, masonhub_principal, tradecloud_principal
from ordersync.hub.dialects.hubrise import HubRiseRoute
from ordersync.hub.errors import ApiError, pydantic_errors
from ordersync.hub.json_body import parse_json
from ordersync.hub.openapi import answer, errors, request_body
from ordersync.store.store import Principal
from ordersync.store.webhooks import Attempt, Subscription, WebhookStore, url_problem

MASONHUB_MESSAGE_TYPES = (
    "orderEvent",
    "orderUpdateResolution",
    "orderCancelResolution",
    "skuInventoryChange",
)
MAX_CALLBACKS = 30

_OBJECT: dict[str, Any] = {"type": "object"}
_LIST: dict[str, Any] = {"type": "array", "items": _OBJECT}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MasonHubCallbackIn(_Strict):
    url: str = Field(max_length=2000)
    message_type: str
    api_version: str | None = Field(default=None, max_length=20)
    token: str | None = Field(default=None, max_length=500)


class WebhookAuth(_Strict):
    type: Literal["none", "basic", "bearer"] = "none"
    username: str | None = Field(default=None, max_length=200)
    password: str | None = Field(default=None, max_length=500)
    token: str | None = Field(default=None, max_length=500)


class WebhookIn(_Strict):
    url: str = Field(max_length=2000)
    auth: WebhookAuth = Field(default_factory=WebhookAuth)


class NoBody(_Strict):
    """No fields: the body may be left out."""


class ReplayIn(_Strict):
    event_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    since: str | None = None
    until: str | None = None


def _webhooks(request: Request) -> WebhookStore:
    store: WebhookStore = request.app.state.webhooks
    return store


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


async def _body(request: Request, model: type[BaseModel] | None = None) -> Any:
    raw = await request.body()
    payload = parse_json(raw) if raw else None
    if model is None:
        return payload
    try:
        return model.model_validate(payload if payload is not None else {})
    except ValidationError as exc:
        raise ApiError(422, "request body is invalid", pydantic_errors(exc.errors())) from None


def render_subscription(sub: Subscription, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": sub.id,
        "url": sub.url,
        "message_type": sub.message_type,
        "api_version": sub.api_version,
        "status": sub.status,
        "disabled_reason": sub.disabled_reason,
        "created_at": format_rfc3339(sub.created_at),
    }
    if sub.auth is not None:
        out["auth"] = {"type": sub.auth.get("scheme")}
    if secret is not None:
        out["secret"] = secret
    return out


def _attempt(a: Attempt) -> dict[str, Any]:
    return {
        "delivery_id": a.delivery_id,
        "event_id": a.event_id,
        "at": format_rfc3339(a.at),
        "status_code": a.status_code,
        "latency_ms": a.latency_ms,
        "outcome": a.outcome,
        "error": a.error,
    }


def _time(value: str | None, field: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_rfc3339_ms(value)
    except ValueError:
        raise ApiError(422, "request body is invalid", [(field, "an RFC 3339 time")]) from None


# No `from __future__ import annotations` in this module: the extension routes are built per
# dialect in a function, and FastAPI must see their `Caller` annotation as an object, not as a
# name it cannot resolve from the module.
def extension_routes(router: APIRouter, base: str, principal: Callable[..., Any], tag: str) -> None:
    """The rotate / enable / attempts / replay routes of one dialect under `base`."""
    Caller = Annotated[Principal, Depends(principal)]

    @router.post(
        f"{base}/{{sub_id}}/secret",
        summary="ordersync extension: rotate the signing secret",
        description="A new `whsec_` secret, answered once; the previous one keeps signing "
        "(a second `v1,` signature) for 24 hours.",
        responses=errors(404, 422) | {200: answer("The new secret", _OBJECT)},
        tags=[tag],
        operation_id=f"{tag}_rotate_webhook_secret",
        openapi_extra=request_body(NoBody, "WebhookNoBody", required=False),
    )
    async def rotate(request: Request, caller: Caller, sub_id: str) -> Response:
        await _body(request, NoBody)
        secret = await _webhooks(request).rotate(caller, sub_id)
        return _json({"id": sub_id, "secret": secret})

    @router.post(
        f"{base}/{{sub_id}}/enable",
        summary="ordersync extension: enable a disabled subscription (its queue goes out)",
        responses=errors(404, 422) | {200: answer("The subscription", _OBJECT)},
        tags=[tag],
        operation_id=f"{tag}_enable_webhook",
        openapi_extra=request_body(NoBody, "WebhookNoBody", required=False),
    )
    async def enable(request: Request, caller: Caller, sub_id: str) -> Response:
        await _body(request, NoBody)
        return _json(render_subscription(await _webhooks(request).enable(caller, sub_id)))

    @router.get(
        f"{base}/{{sub_id}}/attempts",
        summary="ordersync extension: delivery attempts, newest first",
        responses=errors(404) | {200: answer("The attempts", _OBJECT)},
        tags=[tag],
        operation_id=f"{tag}_webhook_attempts",
    )
    async def attempts(
        request: Request,
        caller: Caller,
        sub_id: str,
        limit: Annotated[int, Query(ge=1, le=100, description="1..100")] = 100,
    ) -> Response:
        found = await _webhooks(request).attempts(caller, sub_id, limit)
        return _json({"data": [_attempt(a) for a in found]})

    @router.post(
        f"{base}/{{sub_id}}/replay",
        summary="ordersync extension: send delivered events again",
        description="`{event_id}`: that event; `{since, until}` (RFC 3339, until exclusive): "
        "the events whose change was made in that range. Answers how many were queued.",
        responses=errors(404, 422) | {200: answer("How many were queued", _OBJECT)},
        tags=[tag],
        operation_id=f"{tag}_replay_webhook",
        openapi_extra=request_body(ReplayIn, "WebhookReplay", example={"event_id": 1}),
    )
    async def replay(request: Request, caller: Caller, sub_id: str) -> Response:
        body: ReplayIn = await _body(request, ReplayIn)
        if body.event_id is None and body.since is None:
            raise ApiError(422, "request body is invalid", [("event_id", "event_id or since")])
        queued = await _webhooks(request).replay(
            caller,
            sub_id,
            event_id=body.event_id,
            since_ms=_time(body.since, "since"),
            until_ms=_time(body.until, "until"),
        )
        return _json({"queued": queued})


# -- MasonHub ------------------------------------------------------------------------------

masonhub_router = APIRouter(prefix="/api/v1", tags=["masonhub"])
MasonCaller = Annotated[Principal, Depends(masonhub_principal)]


@masonhub_router.post(
    "/callbacks",
    summary="Subscribe URLs to message types (each answers its signing secret once)",
    responses=errors(400, 422) | {200: answer("The callbacks created", _LIST)},
    openapi_extra=request_body(
        list[MasonHubCallbackIn],
        "MasonHubCallbacksIn",
        example=[{"url": "http://127.0.0.1:9/hook", "message_type": "orderEvent"}],
    ),
)
async def create_callbacks(request: Request, caller: MasonCaller) -> Response:
    payload = await _body(request)
    if not isinstance(payload, list) or not 1 <= len(payload) <= MAX_CALLBACKS:
        raise ApiError(
            422, "request body is invalid", [("body", f"an array of 1..{MAX_CALLBACKS} callbacks")]
        )
    items: list[MasonHubCallbackIn] = []
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(payload):
        try:
            parsed = MasonHubCallbackIn.model_validate(item)
        except ValidationError as exc:
            problems += [(f"{index}.{f}", m) for f, m in pydantic_errors(exc.errors())]
            continue
        if parsed.message_type not in MASONHUB_MESSAGE_TYPES:
            problems.append(
                (f"{index}.message_type", f"one of {', '.join(MASONHUB_MESSAGE_TYPES)}")
            )
        problem = url_problem(parsed.url)
        if problem is not None:
            problems.append((f"{index}.url", problem))
        items.append(parsed)
    if problems:
        raise ApiError(422, "request body is invalid", problems)
    created = []
    for item in items:
        sub, secret = await _webhooks(request).create(
            caller,
            "masonhub",
            item.url,
            item.message_type,
            api_version=item.api_version,
            auth=None if item.token is None else {"scheme": "token", "token": item.token},
        )
        created.append(render_subscription(sub, secret))
    return _json(created)


@masonhub_router.get(
    "/callbacks",
    summary="This connection's callbacks",
    responses={200: answer("The callbacks", _LIST)},
)
async def list_callbacks(
    request: Request,
    caller: MasonCaller,
    message_type: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    subs = await _webhooks(request).subscriptions(caller, "masonhub", message_type)
    return _json([render_subscription(s) for s in subs])


@masonhub_router.delete(
    "/callbacks",
    summary="Delete callbacks by id (all of this connection's when no id is given)",
    responses={200: answer("How many were deleted", _OBJECT)},
)
async def delete_callbacks(
    request: Request,
    caller: MasonCaller,
    id: Annotated[list[str] | None, Query()] = None,
) -> Response:
    deleted = await _webhooks(request).delete(caller, "masonhub", id)
    return _json({"deleted": deleted})


extension_routes(masonhub_router, "/callbacks", masonhub_principal, "masonhub")


# -- Tradecloud (extension) ----------------------------------------------------------------

tradecloud_router = APIRouter(prefix="/v2", tags=["tradecloud"])
TradecloudCaller = Annotated[Principal, Depends(tradecloud_principal)]


@tradecloud_router.post(
    "/webhooks",
    summary="ordersync extension: subscribe a URL to this connection's order events",
    responses=errors(400, 422) | {201: answer("The webhook, with its secret", _OBJECT)},
    status_code=201,
    openapi_extra=request_body(
        WebhookIn, "TradecloudWebhookIn", example={"url": "http://127.0.0.1:9/hook"}
    ),
)
async def create_webhook(request: Request, caller: TradecloudCaller) -> Response:
    body: WebhookIn = await _body(request, WebhookIn)
    problem = url_problem(body.url)
    if problem is not None:
        raise ApiError(422, "request body is invalid", [("url", problem)])
    auth: dict[str, Any] | None = None
    if body.auth.type == "basic":
        if not body.auth.username:
            raise ApiError(422, "request body is invalid", [("auth.username", "required")])
        auth = {"scheme": "basic", "username": body.auth.username, "password": body.auth.password}
    elif body.auth.type == "bearer":
        if not body.auth.token:
            raise ApiError(422, "request body is invalid", [("auth.token", "required")])
        auth = {"scheme": "bearer", "token": body.auth.token}
    sub, secret = await _webhooks(request).create(
        caller, "tradecloud", body.url, "orderEvent", auth=auth
    )
    return _json(render_subscription(sub, secret), 201)


@tradecloud_router.get(
    "/webhooks",
    summary="ordersync extension: this connection's webhooks",
    responses={200: answer("The webhooks", _LIST)},
)
async def list_webhooks(request: Request, caller: TradecloudCaller) -> Response:
    subs = await _webhooks(request).subscriptions(caller, "tradecloud")
    return _json([render_subscription(s) for s in subs])


@tradecloud_router.delete(
    "/webhooks/{sub_id}",
    summary="ordersync extension: delete a webhook",
    responses=errors(404) | {200: answer("Deleted", _OBJECT)},
)
async def delete_webhook(request: Request, caller: TradecloudCaller, sub_id: str) -> Response:
    if await _webhooks(request).delete(caller, "tradecloud", [sub_id]) == 0:
        raise ApiError(404, f"no webhook with id {sub_id}")
    return _json({"deleted": 1})


extension_routes(tradecloud_router, "/webhooks", tradecloud_principal, "tradecloud")

# -- HubRise (extension routes; the callback itself is in the HubRise router) --------------

hubrise_router = APIRouter(prefix="/v1", tags=["hubrise"], route_class=HubRiseRoute)
extension_routes(hubrise_router, "/webhooks", hubrise_principal, "hubrise")
