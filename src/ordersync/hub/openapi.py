"""The hub's OpenAPI description: truthful per dialect, and its docs served without a CDN.

Request bodies are read by `hub.json_body` and the dialects' own pydantic checks, not by
FastAPI, so FastAPI sees no body and cannot describe one. Each route therefore declares its
body and answers here, by model (`request_body`, `answers`), as plain decorator arguments:
how a body is parsed does not change. `install_openapi` then completes the description with
what every operation of a dialect shares, in one place (so a route added later gets it too):

- the dialect's security scheme (MasonHub bearer; Tradecloud Basic or bearer; HubRise
  `X-Access-Token`), hence the Authorize button in /docs;
- the errors any request can meet, in the dialect's error envelope: 400 (a repeated credential
  header, a NUL in the query), 401, 404 (NUL in a path parameter), 413 (body over the limit),
  429 (quota, with `Retry-After`) and 503 (the fault injector, with `Retry-After`);
- the quota headers (`RateLimit-Policy`, `RateLimit`) on every answer;
- no trace of FastAPI's own 422 validation schema, which the hub never sends (its
  RequestValidationError handler answers 400 or 422 in the hub's envelope).
- on each writing route that takes one (`hub.idempotency.idempotent`), the `Idempotency-Key`
  header parameter, its 409 and 422 answers, and `Idempotent-Replayed` on its answers.

Decimals are described as strings, as the wire sends them (JSON numbers are accepted in
requests too). Responses are open to extension fields (no `additionalProperties: false`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema
from starlette.responses import HTMLResponse

JSON = "application/json"
REF = "#/components/schemas/"
DOCS_ASSETS = "/docs-assets"

# Component schemas declared by the routes: name -> (type, mode); built by install_openapi.
_MODELS: dict[str, tuple[Any, str]] = {}

DECIMAL_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"


class _WireSchema(GenerateJsonSchema):
    """Decimals as the decimal text the wire carries (`"9.99"`), in requests and answers."""

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        return {"type": "string", "pattern": DECIMAL_TEXT, "examples": ["9.99"]}


def model_ref(model: Any, name: str, *, mode: str = "serialization") -> dict[str, str]:
    """A `$ref` to `model`'s schema under `name` (registered for install_openapi)."""
    known = _MODELS.get(name)
    if known is not None and known != (model, mode):
        raise ValueError(f"two schemas named {name}")
    _MODELS[name] = (model, mode)
    return {"$ref": REF + name}


def request_body(
    model: Any,
    name: str,
    *,
    example: Any = None,
    required: bool = True,
    description: str | None = None,
) -> dict[str, Any]:
    """`openapi_extra` declaring a JSON request body validated as `model`, with a valid
    `example` (Swagger UI pre-fills it; the fuzzing run sends it first)."""
    media: dict[str, Any] = {"schema": model_ref(model, name, mode="validation")}
    if example is not None:
        media["example"] = example
    body: dict[str, Any] = {"required": required, "content": {JSON: media}}
    if description:
        body["description"] = description
    return {"requestBody": body}


def answer(
    description: str, schema: dict[str, Any] | None = None, headers: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One documented answer: its JSON body schema and the named headers it carries."""
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {JSON: {"schema": schema}}
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return response


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Route-specific error answers; `install_openapi` gives them the dialect's envelope."""
    return {status: {"description": ERROR_DESCRIPTIONS[status]} for status in statuses}


ERROR_DESCRIPTIONS = {
    400: "Bad request: a malformed parameter or body, a repeated credential header, or an "
    "offset beyond the cap",
    401: "The credentials are missing or not valid for this hub",
    404: "No such resource for this account",
    409: "Conflict with the current state",
    410: "Gone: the position asked for is no longer kept",
    413: "The request body is larger than the hub accepts",
    415: "The request body must be JSON (Content-Type: application/json)",
    422: "The request body is well-formed but refused; `errors` names each field",
    429: "This connection's quota is used up; retry after `Retry-After` seconds",
    503: "Service unavailable (the fault injector, when switched on); retry after "
    "`Retry-After` seconds",
}

# Every dialect's error envelope: `error_type` always, the rest when there is something to say.
_FIELD_ERROR = {
    "type": "object",
    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    "required": ["field", "message"],
}
ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "description": "The hub's error envelope (MasonHub and Tradecloud dialects, and any "
        "refusal made before a route runs)",
        "properties": {
            "error_type": {"type": "string", "examples": ["unprocessable_entity"]},
            "message": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": REF + "FieldError"}},
        },
        "required": ["error_type", "message"],
    },
    "HubRiseError": {
        "type": "object",
        "description": "HubRise's error shape: 401 is `{error_type}` alone; 422 says "
        '`"message": "Validation failed"` with a field breakdown',
        "properties": {
            "error_type": {"type": "string", "examples": ["unprocessable_entity"]},
            "message": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": REF + "FieldError"}},
        },
        "required": ["error_type"],
    },
    "FieldError": _FIELD_ERROR,
}

HEADERS: dict[str, dict[str, Any]] = {
    "RateLimit-Policy": {
        "description": 'Every quota window that applies, e.g. `"minute";q=500;w=60`',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'The tightest window after this request, e.g. `"minute";r=499;t=42`',
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {"description": "The scheme to send", "schema": {"type": "string"}},
    "X-Ordersync-Keyset": {
        "description": "ordersync extension: `after_id` continues an updated_since listing",
        "schema": {"type": "string"},
    },
    "X-Ordersync-Events": {
        "description": "ordersync extension: the path of this dialect's event log",
        "schema": {"type": "string"},
    },
    "X-Ordersync-Commit-Lag-Ms": {
        "description": "ordersync extension: the most a commit can become visible after its "
        "`updated_at` (ms); a poller's lookback",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "X-Cursor-Next": {
        "description": "The cursor of the next page; absent on the last page",
        "schema": {"type": "string"},
    },
    "ETag": {"description": "A weak tag of the content", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true`: this is the stored answer of an earlier request with the same "
        "Idempotency-Key and body, replayed byte for byte; nothing was done again",
        "schema": {"type": "string", "enum": ["true"]},
    },
}

IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any unique value (a UUID) naming this write: a retry with the same key and "
    "body is answered with the first answer (`Idempotent-Replayed: true`) and changes nothing; "
    "the same key with another body or path is refused (422 `idempotency_key_reused`). Keys "
    "are per connection and kept at least 24 hours.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
}
IDEMPOTENCY_ERRORS = {
    409: "`idempotency_key_in_use`: a concurrent request with this key is not settled yet; "
    "retry after `Retry-After` seconds",
    422: "Refused: `errors` names each field (`idempotency_key_reused`: the Idempotency-Key was "
    "used for another request)",
}

SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "MasonHubBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "MasonHub dialect (/api/v1): `Authorization: Bearer <token>`",
    },
    "TradecloudBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "Tradecloud dialect (/v2): `Basic base64(<connection name>:<token>)`",
    },
    "TradecloudBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Tradecloud dialect (/v2): `Authorization: Bearer <token>`",
    },
    "HubRiseAccessToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Access-Token",
        "description": "HubRise dialect (/v1): `X-Access-Token: <token>`",
    },
}

# Each dialect's paths, its security requirement and its error schema; the longest prefix first.
DIALECTS: tuple[tuple[str, list[dict[str, list[str]]], str], ...] = (
    ("/api/v1/", [{"MasonHubBearer": []}], "Error"),
    ("/v2/", [{"TradecloudBasic": []}, {"TradecloudBearer": []}], "Error"),
    ("/v1/", [{"HubRiseAccessToken": []}], "HubRiseError"),
)
# Errors any request of a dialect can meet, whatever its route.
COMMON_ERRORS = (400, 401, 413, 429, 503)
RATE_HEADERS = ("RateLimit-Policy", "RateLimit")


def _schemas() -> dict[str, Any]:
    """The registered models' JSON schemas, nested models included, under their names.

    Answers are open to extension fields, and their nested models get an `Out` suffix so that
    a model used both ways (the domain's `Address`) keeps its strict request form as well."""
    out: dict[str, Any] = {}
    for name, (model, mode) in sorted(_MODELS.items()):
        suffix = "" if mode == "validation" else "Out"
        schema = TypeAdapter(model).json_schema(
            mode=mode,  # type: ignore[arg-type]
            ref_template=REF + "{model}" + suffix,
            schema_generator=_WireSchema,
        )
        defs = {key + suffix: value for key, value in schema.pop("$defs", {}).items()}
        for def_name, value in [*defs.items(), (name, schema)]:
            if mode != "validation":
                _open(value)
            if out.get(def_name, value) != value:
                raise ValueError(f"two different schemas named {def_name}")
            out[def_name] = value
    return out


def _open(schema: Any) -> None:
    """Drop `additionalProperties: false` throughout: answers may gain extension fields."""
    if isinstance(schema, dict):
        if schema.get("additionalProperties") is False:
            del schema["additionalProperties"]
        for value in schema.values():
            _open(value)
    elif isinstance(schema, list):
        for value in schema:
            _open(value)


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get(JSON, {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def complete(
    spec: dict[str, Any], keyed: frozenset[tuple[str, str]] = frozenset()
) -> dict[str, Any]:
    """`spec` (FastAPI's) with the shared parts of every operation filled in; `keyed` holds the
    (path, method) of the operations that take an Idempotency-Key."""
    spec = copy.deepcopy(spec)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_schemas())
    schemas.update(copy.deepcopy(ERROR_SCHEMAS))
    components["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)
    components["headers"] = copy.deepcopy(HEADERS)
    for path, operations in spec.get("paths", {}).items():
        dialect = next((d for d in DIALECTS if path.startswith(d[0])), None)
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                if _is_fastapi_validation(response):
                    del responses[status]
            if (path, method) in keyed:
                _declare_idempotency(operation, responses)
            if dialect is None:
                continue
            _, security, error_schema = dialect
            operation["security"] = security
            statuses = [*COMMON_ERRORS, *([404] if "{" in path else [])]
            for status in statuses:
                responses.setdefault(str(status), {"description": ERROR_DESCRIPTIONS[status]})
            for status, response in responses.items():
                _complete_answer(int(status), response, error_schema)
    return spec


def _declare_idempotency(operation: dict[str, Any], responses: dict[str, Any]) -> None:
    operation.setdefault("parameters", []).append(copy.deepcopy(IDEMPOTENCY_PARAMETER))
    for status, response in responses.items():
        if str(status).startswith("2"):
            response.setdefault("headers", {})["Idempotent-Replayed"] = {
                "$ref": "#/components/headers/Idempotent-Replayed"
            }
    for code, description in IDEMPOTENCY_ERRORS.items():
        responses.setdefault(str(code), {"description": description})
    in_use = responses[str(409)].setdefault("headers", {})
    in_use.setdefault("Retry-After", {"$ref": "#/components/headers/Retry-After"})


def _complete_answer(status: int, response: dict[str, Any], error_schema: str) -> None:
    if status >= 400 and "content" not in response:
        response["content"] = {JSON: {"schema": {"$ref": REF + error_schema}}}
    headers = response.setdefault("headers", {})
    names = [*RATE_HEADERS]
    if status in (429, 503):
        names.append("Retry-After")
    if status == 401:
        names.append("WWW-Authenticate")
    for name in names:
        headers.setdefault(name, {"$ref": f"#/components/headers/{name}"})


def install_openapi(app: FastAPI) -> None:
    """The completed description at /openapi.json, and Swagger UI and ReDoc from assets
    shipped in a Python package (fastapi-offline), so /docs works without internet."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                ),
                _keyed(app),
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    assets = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # No badge from the public validator service: nothing leaves this host.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _keyed(app: FastAPI) -> frozenset[tuple[str, str]]:
    """The (path, method) of every route wrapped by `hub.idempotency.idempotent`."""
    from ordersync.hub.idempotency import is_idempotent

    return frozenset(
        (route.path_format, method.lower())
        for route in _api_routes(app.routes)
        if is_idempotent(route.endpoint)
        for method in route.methods or ()
    )


def _api_routes(routes: Any) -> Iterator[APIRoute]:
    """Every APIRoute under `routes`: FastAPI lists an included router's routes flat, or (newer
    versions) as one entry holding that router (`original_router`; its routes' paths carry its
    prefix, and the hub includes routers without another)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        else:
            included = getattr(route, "original_router", None)
            if included is not None:
                yield from _api_routes(included.routes)
