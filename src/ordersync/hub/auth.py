"""Who is calling: one credential parser per dialect, one token check, for every consumer.

Authentication (each dialect's route dependency) and quota keying (`ratelimit.RateLimiter`)
both go through `principal_of`, so they can never disagree about who sent a request:

- each dialect reads its credential from one header: MasonHub `Authorization: Bearer <token>`,
  Tradecloud the same or `Basic base64(<connection name>:<token>)`, HubRise `X-Access-Token`.
  Schemes are matched case-insensitively. A credential header sent more than once is refused
  with 400: which copy counts would otherwise be a matter of taste, and a client could send a
  valid copy to one reader and a random one to another.
- the token is checked against the database on every request (`Store.authenticate`), so a
  revoked token is refused on the very next request, by every worker process.
- the result is kept for the rest of the request only (in the ASGI scope's state), so that the
  limiter's check and the route's are one database read.

Quotas are counted per authenticated connection (its id), never per header text.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.types import Scope

from ordersync.errors import AuthenticationFailed
from ordersync.hub.errors import ApiError
from ordersync.store.store import Principal, Store

Headers = Sequence[tuple[bytes, bytes]]
_SCOPE_KEY = "ordersync.auth"


@dataclass(frozen=True)
class Credential:
    """A token, and for Basic the connection name it was sent with (which must match)."""

    token: str
    connection_name: str | None = None


CredentialParser = Callable[[Headers], Credential]


def single_header(headers: Headers, name: str) -> str | None:
    """The one value of header `name` (lower case), None if absent; 400 if sent twice."""
    wanted = name.encode("latin-1")
    values = [value for key, value in headers if key.lower() == wanted]
    if len(values) > 1:
        shown = "-".join(part.capitalize() for part in name.split("-"))
        raise ApiError(
            400,
            f"the {shown} header was sent {len(values)} times; send it once",
            [(shown, "repeated header")],
            error_type="bad_request",
        )
    return values[0].decode("latin-1").strip() if values else None


def _authorization(headers: Headers, *, basic: bool) -> Credential:
    wanted = "'Bearer <token>'" + (" or 'Basic <name:token>'" if basic else "")
    header = single_header(headers, "authorization")
    if not header:
        raise ApiError(401, f"missing Authorization header; send 'Authorization: {wanted[1:]}")
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return Credential(rest.strip())
    if basic and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "malformed Basic credentials") from None
        name, _, token = decoded.partition(":")
        return Credential(token, name)
    raise ApiError(401, f"the Authorization header must be {wanted}")


def masonhub_credential(headers: Headers) -> Credential:
    return _authorization(headers, basic=False)


def tradecloud_credential(headers: Headers) -> Credential:
    return _authorization(headers, basic=True)


def hubrise_credential(headers: Headers) -> Credential:
    token = single_header(headers, "x-access-token")
    if not token:
        raise ApiError(401, "missing X-Access-Token header")
    return Credential(token)


# Each dialect's paths and its parser; the longest prefix first.
PARSERS: tuple[tuple[str, CredentialParser], ...] = (
    ("/api/v1/", masonhub_credential),
    ("/v2/", tradecloud_credential),
    ("/v1/", hubrise_credential),
)


def parser_for(path: str) -> CredentialParser | None:
    return next((parser for prefix, parser in PARSERS if path.startswith(prefix)), None)


async def authenticate(store: Store, credential: Credential) -> Principal:
    """The one token check: the database says whether the token names a live connection."""
    try:
        principal = await store.authenticate(credential.token)
    except AuthenticationFailed:
        raise ApiError(401, "the credentials are not valid for this hub") from None
    if credential.connection_name not in (None, principal.connection_name):
        raise ApiError(401, "the credentials are not valid for this hub")
    return principal


async def principal_of(scope: Scope, store: Store, parser: CredentialParser) -> Principal:
    """The request's caller, or the ApiError that refuses it; decided once per request."""
    state = scope.setdefault("state", {})
    outcome = state.get(_SCOPE_KEY)
    if outcome is None:
        try:
            outcome = await authenticate(store, parser(scope["headers"]))
        except ApiError as error:
            outcome = error
        state[_SCOPE_KEY] = outcome
    if isinstance(outcome, ApiError):
        raise outcome
    assert isinstance(outcome, Principal)
    return outcome


def dependency(parser: CredentialParser) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """A FastAPI dependency giving the caller's `Principal` through `parser`."""

    async def caller(request: Request) -> Principal:
        store: Store = request.app.state.store
        return await principal_of(request.scope, store, parser)

    return caller


masonhub_principal = dependency(masonhub_credential)
tradecloud_principal = dependency(tradecloud_credential)
hubrise_principal = dependency(hubrise_credential)
