"""One structured log line per request, and the request metrics from the same observation.

    {"event": "request", "method": "GET", "path": "/api/v1/orders",
     "query": "updated_since=...&limit=100", "status": 200, "duration_ms": 3.1,
     "connection_id": 7, "route": "/api/v1/orders", "client": "10.0.0.5", ...}

Never a credential: headers are not logged, and a query parameter whose name looks like one
(token, key, secret, password, signature, auth) is logged as `***`. The connection is the one
authentication found (`hub.auth` keeps it in the request's state), so a refused token logs none.

The middleware is the outermost of the hub's own: it sees the 413s, 429s and injected faults
of the layers inside it, and times them too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordersync.hub.metrics import UNMATCHED, HubMetrics
from ordersync.hub.ratelimit import request_method

log = structlog.get_logger("ordersync.hub.access")
_SECRET_NAME = re.compile(r"token|key|secret|passw|signature|auth", re.IGNORECASE)
_AUTH_STATE_KEY = "ordersync.auth"  # where hub.auth keeps the request's caller


def redacted_query(raw: bytes) -> str:
    """The query string with the values of credential-like parameters replaced by ***."""
    if not raw:
        return ""
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, "***" if _SECRET_NAME.search(k) else v) for k, v in pairs], safe="*")


class AccessLog:
    """ASGI middleware: log and measure every HTTP request once its response is complete."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: HubMetrics,
        routes: Callable[[], list[Any]],
        log: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.log = log
        self.metrics = metrics
        self.routes = routes  # the app's routes, read when needed (they are added after us)
        self.clock = clock
        self._flat_routes: _FlatRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Shared with every layer inside, even those that copy the scope: auth writes here.
        state = scope.setdefault("state", {})
        started = self.clock()
        response: dict[str, Any] = {"status": 500, "quota": False}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = int(message["status"])
                response["quota"] = message["status"] == 429 and any(
                    k.lower() == b"ratelimit-policy" for k, _ in message.get("headers", [])
                )
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._record(scope, state, response, self.clock() - started)

    def _record(
        self, scope: Scope, state: dict[str, Any], response: dict[str, Any], seconds: float
    ) -> None:
        # The method the request means: HubRise lets a POST say PATCH (X-Http-Method-Override).
        method, status = request_method(scope), int(response["status"])
        route = self._route({**scope, "method": method})
        self.metrics.observe(method, route, status, seconds, bool(response["quota"]))
        if not self.log:
            return
        caller = state.get(_AUTH_STATE_KEY)
        client = scope.get("client")
        log.info(
            "request",
            method=method,
            path=scope["path"],
            query=redacted_query(scope.get("query_string", b"")),
            status=status,
            duration_ms=round(seconds * 1000, 2),
            connection_id=getattr(caller, "connection_id", None),
            route=route,
            client=client[0] if client else None,
        )

    def _route(self, scope: Scope) -> str:
        """The template of the route that served the request (`unmatched` if none did)."""
        route = scope.get("route")
        if route is not None and isinstance(getattr(route, "path", None), str):
            return str(route.path)
        flat = self._flat()
        by_endpoint = flat.by_endpoint.get(id(scope.get("endpoint")))
        if by_endpoint is not None:
            return by_endpoint
        # A layer inside copied the scope (HubRise's method override): match again.
        for candidate in flat.routes:
            if candidate.matches(scope)[0] == Match.FULL:
                return str(candidate.path)
        return UNMATCHED

    def _flat(self) -> _FlatRoutes:
        if self._flat_routes is None:
            self._flat_routes = _FlatRoutes(list(_leaf_routes(self.routes())))
        return self._flat_routes


class _FlatRoutes:
    def __init__(self, routes: list[Any]) -> None:
        self.routes = routes
        # An endpoint serving one path names it; one serving several (a shared handler) does not.
        paths: dict[int, set[str]] = {}
        for r in routes:
            if getattr(r, "endpoint", None) is not None:
                paths.setdefault(id(r.endpoint), set()).add(str(r.path))
        self.by_endpoint = {key: found.pop() for key, found in paths.items() if len(found) == 1}


def _leaf_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route with a path template, routers included by FastAPI opened up."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(list(inner.routes))
        elif isinstance(getattr(route, "path", None), str):
            yield route
