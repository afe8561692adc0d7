"""`Idempotency-Key` on the hub's writing routes: a retried write is answered, not redone.

A writing route opts in with one decorator, `@idempotent` (under `@router.post(...)`; the
endpoint must take `request` and `caller`). Then, per connection:

- no key: the route runs as before;
- a key that is not 1 to 255 printable ASCII characters: 400 naming `Idempotency-Key`;
- a key already used with the same method, path, query and body (SHA-256 of them): the first
  answer again, byte for byte, with `Idempotent-Replayed: true`; nothing runs;
- a key already used with anything else: 422 `idempotency_key_reused`;
- a new key: the route runs, and the answer it builds inside its write transaction is stored
  with the key in that transaction (`ordersync.store.idempotency.settle`).

What is kept (as Stripe does): the answer of a request that reached its write transaction,
whatever its status (a MasonHub batch refused item by item, 422, is replayed as such). A
request refused before that (malformed body, validation, unknown order, a transition the
lifecycle forbids: raised, so rolled back) keeps nothing, and can be corrected and sent again
with the same key. A 5xx or a rolled-back write keeps nothing.

Concurrent requests with one key: the second waits for the first's transaction (the key's
unique index) and then replays the first's answer; it never commits a write of its own. If
the second was refused meanwhile by what the first wrote (the duplicate order the first
created, the event the first acknowledged), the stored answer is replayed instead. 409
`idempotency_key_in_use` (with Retry-After) remains for the one case where the first's record
cannot be read back (pruned meanwhile).

Read-only POSTs (Tradecloud's `/v2/.../poll` and `/search`) do not take keys: a read is safe
to repeat as is, and a replay would serve a stale page. They ignore the header.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import Response

from ordersync.hub.errors import ApiError
from ordersync.store.idempotency import KeyRecord, KeyTaken, Pending, StoredAnswer, armed, find
from ordersync.store.store import Principal, Store

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY = 255
# Marks an endpoint wrapped by `idempotent` (install_openapi declares the header on it).
MARK = "__ordersync_idempotent__"

E = TypeVar("E", bound=Callable[..., Awaitable[Response]])


def idempotent(endpoint: E) -> E:
    """The route honours `Idempotency-Key` (see the module's docstring)."""

    @functools.wraps(endpoint)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        request: Request = kwargs["request"]
        caller: Principal = kwargs["caller"]
        return await run(request, caller, lambda: endpoint(*args, **kwargs))

    setattr(wrapper, MARK, True)
    return wrapper  # type: ignore[return-value]


def is_idempotent(endpoint: Any) -> bool:
    return bool(getattr(endpoint, MARK, False))


async def run(
    request: Request, caller: Principal, call: Callable[[], Awaitable[Response]]
) -> Response:
    """`call()` under the request's idempotency key, if it has one."""
    key = _key(request)
    if key is None:
        return await call()
    store: Store = request.app.state.store
    described = f"{request.method} {request.url.path}"[:300]
    fingerprint = await _fingerprint(request)
    found = await find(store.reader, caller.connection_id, key)
    if found is not None:
        return _reply(found, fingerprint, key)
    pending = Pending(caller.connection_id, key, described, fingerprint, _render, store.clock)
    with armed(pending):
        try:
            response = await call()
        except KeyTaken:
            return await _after_race(store, caller, key, fingerprint, None)
        except Exception as exc:
            # Refused because a concurrent request with this key wrote first (the order it
            # created, the event it acknowledged)? Then its answer is this request's answer.
            return await _after_race(store, caller, key, fingerprint, exc)
    if not pending.settled and response.status_code >= 400:
        return await _after_race(store, caller, key, fingerprint, None, response)
    return response


def _key(request: Request) -> str | None:
    values = request.headers.getlist(HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise _bad_key("send one Idempotency-Key header, not several")
    key = values[0]
    if not 1 <= len(key) <= MAX_KEY or not all(" " <= c <= "~" for c in key):
        raise _bad_key(f"must be 1 to {MAX_KEY} printable ASCII characters")
    return key


def _bad_key(message: str) -> ApiError:
    return ApiError(400, "invalid Idempotency-Key header", [(HEADER, message)])


async def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), request.url.query.encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(await request.body())
    return digest.hexdigest()


def _render(answer: Any) -> StoredAnswer | None:
    """A route's answer as stored: only a full-bodied Response under 500 is kept."""
    body = getattr(answer, "body", None)
    if not isinstance(answer, Response) or not isinstance(body, bytes) or answer.status_code >= 500:
        return None
    return StoredAnswer(answer.status_code, answer.headers.get("content-type"), body)


def _reply(found: KeyRecord, fingerprint: str, key: str) -> Response:
    if found.fingerprint != fingerprint:
        raise ApiError(
            422,
            f"Idempotency-Key {key!r} was already used for another request ({found.request} "
            "with another body); use a new key for a new request",
            [(HEADER, "already used with a different request")],
            error_type="idempotency_key_reused",
        )
    answer = found.answer
    headers = {REPLAYED: "true"}
    if answer.content_type:
        headers["content-type"] = answer.content_type
    return Response(answer.body, answer.status, headers)


async def _after_race(
    store: Store,
    caller: Principal,
    key: str,
    fingerprint: str,
    error: Exception | None,
    response: Response | None = None,
) -> Response:
    """The request did not store its answer: replay the key's record if another request
    committed it meanwhile, else answer as the request did (its error, or its response)."""
    try:
        found = await find(store.writer, caller.connection_id, key)
    except Exception:
        if error is not None:
            raise error from None
        found = None
    if found is not None:
        return _reply(found, fingerprint, key)
    if error is not None:
        raise error
    if response is not None:
        return response
    raise ApiError(
        409,
        f"Idempotency-Key {key!r} is in use by another request; retry shortly",
        [(HEADER, "in use by a concurrent request")],
        error_type="idempotency_key_in_use",
        headers={"Retry-After": "1"},
    )
