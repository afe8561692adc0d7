"""Fuzzing the hub: a bounded schemathesis run over every dialect's operations, and hand-made
garbage below the level of the description (raw bytes, bad media types, huge headers).

Both run against real uvicorn on SQLite and on PostgreSQL. What a user would notice: no
request, however malformed, gets a 5xx or a traceback, and every answer is one the OpenAPI
description documents (status, JSON body, headers), so a generated client can trust it.
A longer run: `bench/fuzz_hub.py --examples N` (bench/README.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from bench.fuzz_hub import Seeded, credentials_for, run_fuzz, seed_hub

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.quotas import QuotaPolicy
from tests.support import serve_in_thread

# Per operation and generation mode (positive, negative); with the seeded-entity pass and the
# mutated examples this is about 700 requests per backend, 20-35 s on the 2-core CI machine.
# Seed fixed: the same cases every run, so a failure reproduces.
EXAMPLES = 8
SEED = 20261202
# Per writing operation: its request example with one value replaced by an edge value (sent
# first, so that every later read of the run renders what they stored).
MUTATED = 60


@dataclass(frozen=True)
class Hub:
    base: str
    seeded: Seeded


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A seeded hub per backend for the module, quotas off (the fuzzer sends many requests)."""
    from tests.support import fresh_pg_database

    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/hub.db"
        else:
            admin = request.getfixturevalue("pg_admin_url")
            template = request.getfixturevalue("pg_hub_template")
            db_url = stack.enter_context(fresh_pg_database(admin, template=template))
        seeded = asyncio.run(seed_hub(db_url))
        settings = HubSettings(db_url=db_url, quotas=QuotaPolicy())
        base = stack.enter_context(serve_in_thread(create_app(settings)))
        yield Hub(base, seeded)


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(hub: Hub) -> None:
    """Every operation of every dialect (mutated examples, then positive and negative cases),
    valid credentials: 0 x 5xx and 0 answers outside the description (status, content type,
    headers, body schema)."""
    report = run_fuzz(
        hub.base,
        credentials_for(hub.seeded.tokens),
        examples=EXAMPLES,
        seed=SEED,
        known=hub.seeded.known,
        mutated=MUTATED,
    )
    failures = "\n".join(
        f"{f.operation} [{f.mode}] {f.status} {f.checks}: {f.message}\n  {f.curl}"
        for f in report.failures
    )
    assert report.failures == [], f"{report.summary()}\n{failures}"
    assert not [code for code in report.statuses if code >= 500], report.summary()
    spec = httpx.get(f"{hub.base}/openapi.json").json()
    operations = {
        f"{method.upper()} {path}"
        for path, ops in spec["paths"].items()
        if path.startswith(("/api/v1/", "/v2/", "/v1/"))
        for method in ops
    }
    assert set(report.per_operation) == operations  # every operation was fuzzed
    # Success answers were checked too, not only refusals: creates and reads of real entities.
    assert report.statuses[201] >= 2 and report.statuses[200] >= 50, report.summary()


# -- hand-made: below the OpenAPI description ------------------------------------------------


def _raw(base: str, payload: bytes, timeout: float = 10) -> bytes:
    """Send `payload` on a fresh connection; everything the server answers before closing."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        with contextlib.suppress(ConnectionResetError):
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None  # closed without an answer: acceptable for bytes that are not HTTP
    return int(answer[9:12])


GARBAGE = {
    "not http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
    "binary request line": b"\xff\xfe GET / HTTP/1.1\r\n\r\n",
    "unknown method": b"BREW /api/v1/orders HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET /api/v1/orders HTTP/9.9\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /api/v1/orders HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n",
    "nul in header": b"GET /v1/location/orders HTTP/1.1\r\nHost: x\r\n"
    b"X-Access-Token: a\x00b\r\n\r\n",
    "truncated body": b"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
    b"\r\nContent-Length: 500\r\n\r\n[{",
    "bad chunked body": b"POST /v2/order-search/poll HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nnot hex\r\n0\r\n\r\n",
    "content-length and chunked": b"POST /v1/callback HTTP/1.1\r\nHost: x\r\nContent-Length: 3"
    b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "negative content-length": b"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: -1\r\n\r\n",
    "absolute uri elsewhere": b"GET http://elsewhere.example/api/v1/orders HTTP/1.1\r\n"
    b"Host: x\r\n\r\n",
    "percent garbage in path": b"GET /v2/order/%zz%ff%00%c0%af HTTP/1.1\r\nHost: x\r\n\r\n",
    "overlong utf-8 in query": b"GET /api/v1/orders?sdt=%c0%af%ed%a0%80 HTTP/1.1\r\n"
    b"Host: x\r\n\r\n",
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_raw_garbage_gets_a_4xx_or_a_closed_connection_never_a_5xx(hub: Hub, name: str) -> None:
    """Bytes that are not (valid) HTTP are answered 4xx or the connection is closed; the hub
    keeps serving afterwards."""
    status = _status(_raw(hub.base, GARBAGE[name]))
    assert status is None or 400 <= status < 500, status
    token = hub.seeded.tokens["mh"]
    after = httpx.get(f"{hub.base}/api/v1/orders", headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 200


@pytest.mark.parametrize("size", [16 * 1024, 200 * 1024])
def test_a_huge_header_is_refused_without_a_5xx(hub: Hub, size: int) -> None:
    """A header of 16 KiB or 200 KiB (a credential or any other) is a 4xx or a closed
    connection, never a 5xx; so are a thousand headers."""
    token = hub.seeded.tokens["hr"]
    for headers in (
        {"X-Access-Token": "x" * size},
        {"X-Access-Token": token, "X-Padding": "p" * size},
        {"X-Access-Token": token, **{f"X-H{i}": "v" for i in range(1000)}},
    ):
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = f"GET /v1/location/orders HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode()
        status = _status(_raw(hub.base, request))
        assert status is None or status < 500, status


@pytest.mark.parametrize(
    ("dialect", "path", "body"),
    [
        ("mh", "/api/v1/orders", b"customer_identifier=PO-1"),
        ("tc", "/v2/order-search/poll", b"offset=0&limit=5"),
        ("hr", "/v1/location/orders", b"ref=R-1"),
        ("hr", "/v1/callback", b"events=order"),
    ],
)
@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "text/plain; charset=utf-16",
        "application/json; charset=latin-1",
        "\u00e9/\u00e9",
    ],
)
def test_a_non_json_body_under_any_content_type_is_a_4xx_in_the_dialects_envelope(
    hub: Hub, dialect: str, path: str, body: bytes, content_type: str
) -> None:
    """A form, multipart or mislabelled body is a 400 (not JSON) or 415 (HubRise: not
    labelled JSON) with an error_type, never a 5xx."""
    headers = credentials_for(hub.seeded.tokens)[
        {"mh": "/api/v1/", "tc": "/v2/"}.get(dialect, "/v1/")
    ]
    response = httpx.post(
        f"{hub.base}{path}",
        content=body,
        headers=[*headers.items(), ("Content-Type", content_type.encode("utf-8"))],
    )
    assert response.status_code in (400, 415, 422), response.text
    assert response.json()["error_type"] in (
        "bad_request",
        "unsupported_media_type",
        "unprocessable_entity",
    )


# -- root causes the fuzzing found (each was a 500) --------------------------------------------


def _client(hub: Hub, dialect: str) -> httpx.Client:
    prefix = {"mh": "/api/v1/", "tc": "/v2/", "hr": "/v1/"}[dialect]
    return httpx.Client(base_url=hub.base, headers=credentials_for(hub.seeded.tokens)[prefix])


def _new_order(**overrides: object) -> dict[str, object]:
    from ordersync.hub.openapi_shapes import NEW_ORDER_EXAMPLE

    return {**NEW_ORDER_EXAMPLE, "customer_identifier": f"PO-{uuid.uuid4().hex[:10]}", **overrides}


def test_an_order_with_large_exact_amounts_renders_in_every_dialect(hub: Hub) -> None:
    """A MasonHub order of 18-digit quantity x 18-digit price (within the domain's 30 digits)
    is created and then served by every HubRise read with its exact subtotal: its subtotal used
    to overflow the 28-digit decimal context, and every HubRise listing and callback event list
    of the account answered 500 from then on."""
    big = "9" * 18
    line = {"sku_customer_identifier": "SKU-BIG", "quantity": big, "unit_price": big}
    with _client(hub, "mh") as masonhub, _client(hub, "hr") as hubrise:
        callback = hubrise.post("/v1/callback", json={"events": {"order": ["create"]}})
        assert callback.status_code == 200, callback.text
        created = masonhub.post("/api/v1/orders", json=[_new_order(line_items=[line])])
        assert created.status_code == 201, created.text
        order_id = created.json()["data"][0]["id"]
        exact = f"{int(big) * int(big)}.00 EUR"
        one = hubrise.get(f"/v1/location/orders/{order_id}")
        assert one.status_code == 200, one.text
        assert one.json()["items"][0]["subtotal"] == exact
        assert one.json()["total"] == exact
        listing = hubrise.get("/v1/location/orders")
        assert listing.status_code == 200, listing.text
        assert order_id in {o["id"] for o in listing.json()}
        events = hubrise.get("/v1/callback/events")
        assert events.status_code == 200, events.text
        mine = [e for e in events.json() if e["resource_id"] == order_id]
        assert [e["new_state"]["total"] for e in mine] == [exact]


@pytest.mark.parametrize(
    "items",
    [
        [{"sku_ref": "S", "price": f"{'9' * 29}.99 EUR", "quantity": "9" * 29}],
        [{"sku_ref": "S", "price": "1.00 EUR", "quantity": 10**40}],
        [{"sku_ref": "S", "price": "1.00 EUR", "quantity": "9" * 500}],
    ],
    ids=["29-digit price x quantity", "40-digit integer quantity", "500-digit quantity"],
)
def test_hubrise_create_with_a_total_and_huge_amounts_is_a_422(
    hub: Hub, items: list[dict[str, object]]
) -> None:
    """HubRise create with `total` and amounts beyond the hub's 30 digits is a 422 naming a
    field (the total check's rounding to the cent raised InvalidOperation: a 500)."""
    from ordersync.hub.openapi_shapes import HUBRISE_ORDER_EXAMPLE

    body = {**HUBRISE_ORDER_EXAMPLE, "ref": uuid.uuid4().hex, "items": items, "total": "1.00 EUR"}
    with _client(hub, "hr") as hubrise:
        response = hubrise.post("/v1/location/orders", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "unprocessable_entity"
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields & {"total", "items.0.quantity", "items.0.price"}, fields


@pytest.mark.parametrize(
    "submitted_at", ["9999-12-31T23:30:00Z", "9999-12-31T00:00:00Z", "0001-01-01T12:00:00Z"]
)
def test_an_instant_no_time_zone_can_render_is_refused_naming_submitted_at(
    hub: Hub, submitted_at: str
) -> None:
    """submitted_at within a day of year 1 or 9999 is a 422 naming it: such an order was
    stored, then every HubRise rendering of it in the location's zone overflowed (a 500 on
    each listing of the account)."""
    with _client(hub, "mh") as masonhub, _client(hub, "hr") as hubrise:
        response = masonhub.post("/api/v1/orders", json=[_new_order(submitted_at=submitted_at)])
        assert response.status_code == 422, response.text
        errors = response.json()["data"][0]["errors"]
        assert [e["field"] for e in errors] == ["submitted_at"]
        assert "0001-01-02 to 9999-12-30" in errors[0]["message"]
        assert hubrise.get("/v1/location/orders").status_code == 200


def test_a_year_before_1000_is_kept_with_four_digits(hub: Hub) -> None:
    """submitted_at 0999-06-01 is stored and served as `0999-06-01T00:00:00.000Z` (it was
    written `999-06-01...`, which the store could not read back: a 500 on create)."""
    with _client(hub, "mh") as masonhub, _client(hub, "hr") as hubrise:
        response = masonhub.post(
            "/api/v1/orders", json=[_new_order(submitted_at="0999-06-01T00:00:00Z")]
        )
        assert response.status_code == 201, response.text
        order = response.json()["data"][0]["order"]
        assert order["submitted_at"] == "0999-06-01T00:00:00.000Z"
        fetched = masonhub.get(f"/api/v1/orders/{order['id']}").json()
        assert fetched["submitted_at"] == "0999-06-01T00:00:00.000Z"
        rendered = hubrise.get(f"/v1/location/orders/{order['id']}")
        assert rendered.status_code == 200, rendered.text
        assert rendered.json()["submitted_at"].startswith("0999-06-01T00:")


@pytest.mark.parametrize("identifier", [1.5, 1e308, 10**40, 7, True, ["PO-1"], {"a": 1}])
def test_a_non_text_customer_identifier_is_refused_and_echoed_as_null(
    hub: Hub, identifier: object
) -> None:
    """A batch item whose customer_identifier is not text is refused naming the field, and the
    answer echoes it as null: a decimal or 40-digit number used to fail the whole batch's
    answer with a 500 (the refusal echoed the raw value, which orjson cannot write)."""
    with _client(hub, "mh") as masonhub:
        good = _new_order()
        response = masonhub.post(
            "/api/v1/orders", json=[good, _new_order(customer_identifier=identifier)]
        )
        assert response.status_code == 207, response.text
        created, refused = response.json()["data"]
        assert created["status"] == "created"
        assert refused["status"] == "refused"
        assert refused["customer_identifier"] is None
        assert [e["field"] for e in refused["errors"]] == ["customer_identifier"]


def _hostile_requests(hub: Hub) -> dict[str, tuple[str, str, dict[str, str], bytes | None]]:
    tokens, order_id = hub.seeded.tokens, hub.seeded.known["order_id"]
    mh = {"Authorization": f"Bearer {tokens['mh']}"}
    hr = {"X-Access-Token": tokens["hr"]}
    json = {"Content-Type": "application/json"}

    def basic(raw: bytes) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    return {
        "basic not utf-8": ("GET", "/v2/order/x", basic(b"\xff\xfe:token"), None),
        "basic without colon": ("GET", "/v2/order/x", basic(b"no-colon"), None),
        "basic not base64": ("GET", "/v2/order/x", {"Authorization": "Basic ===="}, None),
        "100 KB bearer": ("GET", "/v2/order/x", {"Authorization": "Bearer " + "x" * 100_000}, None),
        "5,000 etags": (
            "GET",
            f"/v1/location/orders/{order_id}",
            {**hr, "If-None-Match": ", ".join(['W/"x"'] * 5000)},
            None,
        ),
        "override on a GET": (
            "GET",
            "/v1/callback",
            {**hr, "X-Http-Method-Override": "DELETE"},
            None,
        ),
        "override to TRACE": (
            "POST",
            "/v1/callback",
            {**hr, "X-Http-Method-Override": "TRACE"},
            b"",
        ),
        "10 KB cursor": ("GET", "/v1/location/orders?cursor=" + "A" * 10_000, hr, None),
        "10 KB hubrise id": ("GET", "/v1/location/orders/" + "x" * 10_000, hr, None),
        "10 KB tradecloud id": (
            "GET",
            "/v2/order/" + "x" * 10_000,
            {"Authorization": f"Bearer {tokens['tc']}"},
            None,
        ),
        "5,000 status filters": (
            "GET",
            "/api/v1/orders?" + "&".join(["status=open"] * 5000),
            mh,
            None,
        ),
        "gzip claimed, garbage sent": (
            "POST",
            "/api/v1/orders",
            {**mh, **json, "Content-Encoding": "gzip"},
            b"\x1f\x8b garbage",
        ),
        "100,000 brackets (Tradecloud)": (
            "POST",
            "/v2/order-search/poll",
            {"Authorization": f"Bearer {tokens['tc']}", **json},
            b"[" * 100_000,
        ),
        "UTF-16 body (Tradecloud)": (
            "POST",
            "/v2/order-search/poll",
            {"Authorization": f"Bearer {tokens['tc']}", **json},
            '{"offset": 0}'.encode("utf-16"),
        ),
    }


HOSTILE = [
    "basic not utf-8",
    "basic without colon",
    "basic not base64",
    "100 KB bearer",
    "5,000 etags",
    "override on a GET",
    "override to TRACE",
    "10 KB cursor",
    "10 KB hubrise id",
    "10 KB tradecloud id",
    "5,000 status filters",
    "gzip claimed, garbage sent",
    "100,000 brackets (Tradecloud)",
    "UTF-16 body (Tradecloud)",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_headers_and_bodies_get_a_clear_answer_never_a_5xx(hub: Hub, name: str) -> None:
    """Mangled credentials, oversized headers and values, a lying Content-Encoding, deep or
    UTF-16 bodies: each gets a 2xx or a 4xx with an error_type, never a 5xx."""
    method, path, headers, body = _hostile_requests(hub)[name]
    response = httpx.request(method, f"{hub.base}{path}", headers=headers, content=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["error_type"], response.text
