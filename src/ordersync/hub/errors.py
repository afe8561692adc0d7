"""Every error the hub returns has one shape (seed 003):

    {"error_type": "unprocessable_entity", "message": "...",
     "errors": [{"field": ..., "message": ...}]}

No request may produce a 500 with a traceback: unexpected exceptions become `internal_error`
with a reference the operator can find in the log.
"""

from __future__ import annotations

import traceback
import uuid
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ordersync.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidTransition,
    NotFound,
    ValidationFailed,
    WriteTimedOut,
)
from ordersync.store.events import PositionPruned

log = structlog.get_logger("ordersync.hub")

FieldErrors = list[tuple[str, str]]

_TYPE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error response, raised from anywhere inside a request."""

    def __init__(
        self,
        status: int,
        message: str,
        errors: FieldErrors | None = None,
        *,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []
        self.error_type = error_type or _TYPE_BY_STATUS.get(status, "error")
        self.headers = headers
        self.extra = extra or {}  # more members of the body (e.g. `head` of a 410)


def error_response(error: ApiError) -> Response:
    body: dict[str, Any] = {"error_type": error.error_type, "message": error.message}
    if error.errors:
        body["errors"] = [{"field": f, "message": m} for f, m in error.errors]
    body.update(error.extra)
    headers = dict(error.headers or {})
    if error.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return Response(orjson.dumps(body), error.status, headers, media_type="application/json")


def write_timed_out(exc: WriteTimedOut) -> ApiError:
    """503: the write was rolled back (nothing changed) and may be retried at once."""
    return ApiError(503, str(exc), error_type="write_timeout", headers={"Retry-After": "1"})


def position_pruned(exc: PositionPruned) -> ApiError:
    """410: the follower's position is older than the retention; its body says how to resync."""
    return ApiError(
        410,
        str(exc),
        [("after", f"must be at least {exc.pruned_through} (the pruned horizon)")],
        error_type="position_pruned",
        extra={"head": exc.head, "pruned_through": exc.pruned_through},
    )


def pydantic_errors(raw: list[Any], *, drop_prefix: int = 0) -> FieldErrors:
    """(field, message) pairs from pydantic errors, the field as a dotted path."""
    pairs = []
    for err in raw:
        loc = [str(part) for part in err.get("loc", ())][drop_prefix:]
        pairs.append((".".join(loc) or "body", str(err.get("msg", "invalid"))))
    return pairs


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        raw = list(exc.errors())
        in_body = any(err.get("loc", ("",))[0] == "body" for err in raw)
        status = 422 if in_body else 400
        message = "request body is invalid" if in_body else "request parameters are invalid"
        return error_response(ApiError(status, message, pydantic_errors(raw, drop_prefix=1)))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(ApiError(404, "no such route", error_type="routing_error"))
        return error_response(ApiError(exc.status_code, str(exc.detail)))

    async def on_domain(_: Request, exc: Exception) -> Response:
        if isinstance(exc, NotFound):
            return error_response(ApiError(404, str(exc)))
        if isinstance(exc, AuthenticationFailed):
            return error_response(ApiError(401, str(exc)))
        if isinstance(exc, Conflict):
            return error_response(ApiError(409, str(exc)))
        if isinstance(exc, InvalidTransition):
            return error_response(ApiError(422, str(exc), [("status", str(exc))]))
        if isinstance(exc, WriteTimedOut):
            return error_response(write_timed_out(exc))
        if isinstance(exc, PositionPruned):
            return error_response(position_pruned(exc))
        assert isinstance(exc, ValidationFailed)
        return error_response(ApiError(422, str(exc), exc.errors))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        reference = uuid.uuid4().hex[:12]
        # A plain traceback string, not exc_info: structlog's default renderer draws it with
        # rich, locals included, which took over 10 s for a large request (the client timed
        # out instead of getting this 500) and itself failed on a RecursionError.
        log.error(
            "unhandled_error",
            reference=reference,
            path=request.url.path,
            error=repr(exc),
            traceback="".join(traceback.format_exception(exc)),
        )
        return error_response(
            ApiError(500, f"internal error; quote reference {reference} to the operator")
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for exc_type in (
        NotFound,
        AuthenticationFailed,
        Conflict,
        InvalidTransition,
        ValidationFailed,
        WriteTimedOut,
        PositionPruned,
    ):
        app.add_exception_handler(exc_type, on_domain)
    app.add_exception_handler(Exception, on_unexpected)
