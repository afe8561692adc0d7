"""The hub's OpenAPI description tells the truth a client developer needs, and /docs works
without internet: what is asserted here is what a user of /docs or of a client generator sees.
(Whether the answers really match it is tests/integration/test_fuzz.py's job.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings

API_PREFIXES = ("/api/v1/", "/v2/", "/v1/")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(HubSettings(db_url=f"sqlite:///{tmp_path}/hub.db"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
        yield http


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    parsed: dict[str, Any] = response.json()
    return parsed


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if path.startswith(API_PREFIXES)
    ]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_writing_operation_declares_its_json_body(spec: dict[str, Any]) -> None:
    """All 7 POST/PATCH operations (and any PUT) say what body they take, as JSON."""
    writing = [(m, p, op) for m, p, op in _operations(spec) if m in ("POST", "PATCH", "PUT")]
    assert len(writing) >= 7
    missing = [f"{m} {p}" for m, p, op in writing if "requestBody" not in op]
    assert missing == []
    for _, _, operation in writing:
        assert "application/json" in operation["requestBody"]["content"]


def test_request_bodies_come_from_the_models_with_decimals_as_strings(
    spec: dict[str, Any],
) -> None:
    """The MasonHub batch is 1..100 NewOrders whose quantities and prices are decimal text;
    the Tradecloud poll and HubRise create name their real fields."""
    batch = spec["paths"]["/api/v1/orders"]["post"]["requestBody"]["content"]["application/json"]
    array = _resolve(spec, batch["schema"])
    assert (array["type"], array["minItems"], array["maxItems"]) == ("array", 1, 100)
    order = _resolve(spec, array["items"])
    assert {"customer_identifier", "line_items", "shipping_address"} <= set(order["required"])
    line = _resolve(spec, order["properties"]["line_items"]["items"])
    for name in ("quantity", "unit_price"):
        assert line["properties"][name]["type"] == "string"
        assert re.fullmatch(line["properties"][name]["pattern"], "9.99")
    poll = spec["paths"]["/v2/order-search/poll"]["post"]["requestBody"]
    assert poll["required"] is False  # an empty body polls without filters
    assert set(_resolve(spec, poll["content"]["application/json"]["schema"])["properties"]) == {
        "filters",
        "offset",
        "limit",
    }
    create = spec["paths"]["/v1/location/orders"]["post"]["requestBody"]
    assert "ref" in _resolve(spec, create["content"]["application/json"]["schema"])["required"]


def test_security_schemes_per_dialect(spec: dict[str, Any]) -> None:
    """The Authorize button offers each dialect's scheme, and each operation names its own."""
    schemes = spec["components"]["securitySchemes"]
    assert schemes["MasonHubBearer"] == {**schemes["MasonHubBearer"], "type": "http"}
    assert schemes["MasonHubBearer"]["scheme"] == "bearer"
    assert schemes["TradecloudBasic"]["scheme"] == "basic"
    assert schemes["TradecloudBearer"]["scheme"] == "bearer"
    assert schemes["HubRiseAccessToken"] == {
        **schemes["HubRiseAccessToken"],
        "type": "apiKey",
        "in": "header",
        "name": "X-Access-Token",
    }
    expected = {
        "/api/v1/": [{"MasonHubBearer": []}],
        "/v2/": [{"TradecloudBasic": []}, {"TradecloudBearer": []}],
        "/v1/": [{"HubRiseAccessToken": []}],
    }
    for method, path, operation in _operations(spec):
        prefix = next(p for p in API_PREFIXES if path.startswith(p))
        assert operation.get("security") == expected[prefix], f"{method} {path}"


def test_no_fastapi_validation_schema_the_hub_never_sends(spec: dict[str, Any]) -> None:
    """FastAPI's HTTPValidationError (`detail: [...]`) is nowhere: the hub answers 400/422 in
    its own envelope."""
    text = orjson.dumps(spec).decode()
    assert "HTTPValidationError" not in text
    assert '"ValidationError"' not in text
    for method, path, operation in _operations(spec):
        for status in ("400", "422"):
            if status in operation["responses"]:
                content = operation["responses"][status]["content"]["application/json"]
                schema = _resolve(spec, content["schema"])
                for alternative in schema.get("anyOf", [schema]):
                    properties = _resolve(spec, alternative)["properties"]
                    assert "error_type" in properties, f"{method} {path} {status}"


def test_answers_are_described_with_each_dialects_error_envelope(spec: dict[str, Any]) -> None:
    """200/201 answers have real schemas (not `{}`); 401/413/429/503 are documented with the
    dialect's envelope; 429 and 503 carry Retry-After and every answer the RateLimit headers."""
    envelope = {"/api/v1/": "Error", "/v2/": "Error", "/v1/": "HubRiseError"}
    for method, path, operation in _operations(spec):
        responses = operation["responses"]
        ok = responses.get("200") or responses["201"]
        assert ok["content"]["application/json"]["schema"] != {}, f"{method} {path}"
        prefix = next(p for p in API_PREFIXES if path.startswith(p))
        for status in ("400", "401", "413", "429", "503"):
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{envelope[prefix]}"}
        for status in ("429", "503"):
            assert "Retry-After" in responses[status]["headers"]
        for status, response in responses.items():
            assert {"RateLimit", "RateLimit-Policy"} <= set(response["headers"]), status
    hubrise_error = spec["components"]["schemas"]["HubRiseError"]
    assert hubrise_error["required"] == ["error_type"]  # 401 is {"error_type": "unauthorized"}
    create = spec["paths"]["/v1/location/orders"]["post"]["responses"]
    assert {"201", "415", "422"} <= set(create)


_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_reference_no_external_host_and_their_assets_are_served(
    client: httpx.AsyncClient, page: str
) -> None:
    """/docs and /redoc load everything from the hub itself, so they work offline."""
    response = await client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "://" not in html.replace("window.location.origin", "")
    urls = [a or b for a, b in _URL.findall(html)]
    assert any(u.endswith(".js") for u in urls)
    for url in urls:
        assert url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url


async def test_swagger_ui_has_no_public_validator(client: httpx.AsyncClient) -> None:
    """Swagger UI's default validator badge is fetched from a public service: switched off."""
    html = (await client.get("/docs")).text
    assert '"validatorUrl": null' in html
