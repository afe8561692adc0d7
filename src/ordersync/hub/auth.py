"""Bearer-token authentication: a token names one connection of one account."""

from __future__ import annotations

from fastapi import Request

from ordersync.errors import AuthenticationFailed
from ordersync.hub.errors import ApiError
from ordersync.store.store import Principal, Store


async def bearer_principal(request: Request) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(401, "missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Authorization header must be 'Bearer <token>'")
    store: Store = request.app.state.store
    try:
        return await store.authenticate(token.strip())
    except AuthenticationFailed:
        raise ApiError(401, "the bearer token is not valid for this hub") from None
