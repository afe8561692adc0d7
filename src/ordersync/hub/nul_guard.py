"""Refuse NUL (U+0000) in the path (404) or a query parameter (400) before any route runs.

No id, filter or cursor the hub serves holds a NUL, and PostgreSQL refuses NUL in text
parameters: `GET /v2/order/a%00b` used to reach the database and answer 500. One guard in
front of every dialect keeps each route from needing its own check.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from ordersync.hub.errors import ApiError, error_response


class NulGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = _nul_error(scope["path"], scope.get("query_string", b""))
            if error is not None:
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _nul_error(path: str, query: bytes) -> ApiError | None:
    if "\x00" in path:
        return ApiError(404, "no such resource: the path contains a NUL (U+0000) character")
    if b"%00" not in query and b"\x00" not in query:
        return None
    names = [
        name or "query"
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if "\x00" in name or "\x00" in value
    ]
    if not names:
        return None
    return ApiError(
        400,
        "query parameters are invalid",
        [(name.replace("\x00", "\\u0000"), "must not contain NUL (U+0000)") for name in names],
    )
