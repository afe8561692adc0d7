"""Hostile input never gets a 5xx nor half-applies: lone surrogates, NUL, deep offsets and
overlong numbers, on every dialect, through real uvicorn on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ordersync.hub.app import create_app
from ordersync.hub.offsets import MAX_OFFSET
from ordersync.hub.ratelimit import QuotaPolicy
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store
from tests.integration.test_api_hubrise import hubrise_order
from tests.support import fresh_pg_database, order_payload, serve_in_thread

SURROGATE = "\ud800"
NUL = "\x00"


@dataclass(frozen=True)
class Hub:
    masonhub: httpx.Client
    tradecloud: httpx.Client
    hubrise: httpx.Client


async def _tokens(db_url: str) -> list[str]:
    store = await Store.open(db_url)
    await store.ensure_account("acme", timezone="Europe/Paris")
    tokens = [await store.create_token("acme", name) for name in ("mh", "tc", "hr")]
    await store.close()
    return tokens


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One hub per backend for the module, quotas off."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url = f"sqlite:///{tmp_path_factory.mktemp('hostile')}/hub.db"
        else:
            admin = request.getfixturevalue("pg_admin_url")
            template = request.getfixturevalue("pg_hub_template")
            db_url = stack.enter_context(fresh_pg_database(admin, template=template))
        mh, tc, hr = asyncio.run(_tokens(db_url))
        base = stack.enter_context(
            serve_in_thread(create_app(HubSettings(db_url=db_url, quotas=QuotaPolicy())))
        )
        clients = Hub(
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {mh}"}, timeout=30),
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tc}"}, timeout=30),
            httpx.Client(base_url=base, headers={"X-Access-Token": hr}, timeout=30),
        )
        for client in (clients.masonhub, clients.tradecloud, clients.hubrise):
            stack.callback(client.close)
        yield clients


def _raw(payload: Any) -> bytes:
    """JSON text with non-ASCII escaped, so a lone surrogate goes out as the text \\ud800."""
    return json.dumps(payload, ensure_ascii=True).encode()


def _post(client: httpx.Client, path: str, payload: Any, method: str = "POST") -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    return client.request(method, path, content=_raw(payload), headers=headers)


def _fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json()["errors"]]


def _unique(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- lone surrogates and NUL in write bodies ----------------------------------------------------


@pytest.mark.parametrize("bad", [SURROGATE, f"a{NUL}b"], ids=["surrogate", "nul"])
def test_masonhub_unstorable_text_in_a_field_refuses_the_order_naming_it(
    hub: Hub, bad: str
) -> None:
    """A lone surrogate or NUL in a MasonHub order field is a 422 naming the field, not a 500."""
    order = order_payload(_unique("PO"))
    order["shipping_address"]["name"] = bad
    response = _post(hub.masonhub, "/api/v1/orders", [order])
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "unprocessable_entity"
    assert _fields(response) == ["[0].shipping_address.name"]


@pytest.mark.parametrize("bad", [SURROGATE, NUL], ids=["surrogate", "nul"])
def test_masonhub_unstorable_text_in_value_added_services_is_refused(hub: Hub, bad: str) -> None:
    """Nested text (value_added_services details, keys too) is checked like top-level fields."""
    services = [{"service": "gift_message", "details": {"text": bad, bad: "x"}}]
    order = order_payload(_unique("PO"), value_added_services=services)
    response = _post(hub.masonhub, "/api/v1/orders", [order])
    assert response.status_code == 422, response.text
    fields = _fields(response)
    assert "[0].value_added_services[0].details.text" in fields
    assert any(f.startswith("[0].value_added_services[0].details.") for f in fields)


def test_masonhub_mixed_batch_creates_the_valid_order_and_reports_it(hub: Hub) -> None:
    """A batch of one valid order and one with a lone surrogate answers 207: the valid one
    created with its id (and stored once), the other refused naming its field."""
    good = _unique("PO")
    response = _post(
        hub.masonhub,
        "/api/v1/orders",
        [order_payload(good), order_payload(SURROGATE)],
    )
    assert response.status_code == 207, response.text
    body = response.json()
    assert (body["created"], body["refused"]) == (1, 1)
    created, refused = body["data"]
    assert created["status"] == "created" and created["customer_identifier"] == good
    assert refused["status"] == "refused"
    assert refused["customer_identifier"] is None  # not echoable
    assert [e["field"] for e in refused["errors"]] == ["customer_identifier"]
    fetched = hub.masonhub.get(f"/api/v1/orders/{created['id']}")
    assert fetched.status_code == 200 and fetched.json()["customer_identifier"] == good
    again = _post(hub.masonhub, "/api/v1/orders", [order_payload(good)])
    assert again.status_code == 422  # a duplicate: it was stored exactly once


def test_a_surrogate_sent_as_raw_utf8_bytes_is_refused_like_the_escape(hub: Hub) -> None:
    """A surrogate encoded directly in the body bytes (ED A0 80, which the JSON reader decodes
    leniently) is refused like the escaped form, naming the field."""
    body = _raw([order_payload("PLACEHOLDER")]).replace(b"PLACEHOLDER", b"\xed\xa0\x80")
    response = hub.masonhub.post(
        "/api/v1/orders", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert _fields(response) == ["[0].customer_identifier"]


@pytest.mark.parametrize("bad", [SURROGATE, f"r{NUL}"], ids=["surrogate", "nul"])
def test_hubrise_create_with_unstorable_private_ref_is_a_422(hub: Hub, bad: str) -> None:
    """HubRise create with a lone surrogate or NUL in private_ref: 422 naming private_ref."""
    order = hubrise_order(_unique("R"), private_ref=bad)
    response = _post(hub.hubrise, "/v1/location/orders", order)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "unprocessable_entity"
    assert _fields(response) == ["private_ref"]


def test_hubrise_create_with_nul_in_a_nested_field_is_a_422(hub: Hub) -> None:
    """NUL anywhere in a HubRise body is refused, naming the nested field."""
    order = hubrise_order(_unique("R"))
    order["customer"]["first_name"] = f"A{NUL}da"
    response = _post(hub.hubrise, "/v1/location/orders", order)
    assert response.status_code == 422, response.text
    assert _fields(response) == ["customer.first_name"]


def test_hubrise_patch_with_a_surrogate_private_ref_is_a_422_and_changes_nothing(
    hub: Hub,
) -> None:
    """PATCH private_ref with a lone surrogate: 422 naming it, the order untouched."""
    created = _post(hub.hubrise, "/v1/location/orders", hubrise_order(_unique("R")))
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    path = f"/v1/location/orders/{order_id}"
    before = hub.hubrise.get(path).json()
    response = _post(hub.hubrise, path, {"private_ref": SURROGATE}, method="PATCH")
    assert response.status_code == 422, response.text
    assert _fields(response) == ["private_ref"]
    assert hub.hubrise.get(path).json() == before


def test_hubrise_callback_with_a_surrogate_event_kind_is_a_422(hub: Hub) -> None:
    """A callback whose event kind or type holds a lone surrogate is a 422 naming it."""
    response = _post(hub.hubrise, "/v1/callback", {"events": {SURROGATE: ["create"]}})
    assert response.status_code == 422, response.text
    assert _fields(response) == ["events.\\ud800"]
    response = _post(hub.hubrise, "/v1/callback", {"events": {"order": [SURROGATE]}})
    assert response.status_code == 422, response.text
    assert _fields(response) == ["events.order[0]"]


# -- NUL in paths and query parameters --------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "path"),
    [
        ("tradecloud", "/v2/order/a%00b"),
        ("masonhub", "/api/v1/orders/a%00b"),
        ("hubrise", "/v1/location/orders/a%00b"),
    ],
)
def test_a_nul_in_the_path_is_a_404(hub: Hub, dialect: str, path: str) -> None:
    """A NUL in a path is a 404 on every dialect (PostgreSQL used to answer 500)."""
    response = getattr(hub, dialect).get(path)
    assert response.status_code == 404, response.text
    assert response.json()["error_type"] == "not_found"


@pytest.mark.parametrize(
    ("dialect", "path", "field"),
    [
        ("masonhub", "/api/v1/orders?sdt=2024%00", "sdt"),
        ("hubrise", "/v1/location/orders?cursor=a%00", "cursor"),
        ("hubrise", "/v1/location/orders?status=new%00", "status"),
    ],
)
def test_a_nul_in_a_query_parameter_is_a_400_naming_it(
    hub: Hub, dialect: str, path: str, field: str
) -> None:
    """A NUL in a query parameter is a 400 bad_request naming the parameter."""
    response = getattr(hub, dialect).get(path)
    assert response.status_code == 400, response.text
    assert response.json()["error_type"] == "bad_request"
    assert _fields(response) == [field]


# -- deep offsets ---------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [MAX_OFFSET + 1, 2**63, 2**64 + 5])
@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/shipments"])
def test_masonhub_offset_beyond_the_cap_is_a_400_pointing_to_re_anchoring(
    hub: Hub, path: str, offset: int
) -> None:
    """MasonHub listings refuse offset > MAX_OFFSET with a 400 naming offset and the way out."""
    response = hub.masonhub.get(path, params={"offset": offset, "updated_since": "2024-01-01Z"})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_type"] == "bad_request"
    assert [e["field"] for e in body["errors"]] == ["offset"]
    assert "updated_since" in body["errors"][0]["message"]
    assert "after_id" in body["errors"][0]["message"]


@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/shipments"])
def test_masonhub_offset_at_the_cap_is_served(hub: Hub, path: str) -> None:
    """offset = MAX_OFFSET itself is served."""
    response = hub.masonhub.get(path, params={"offset": MAX_OFFSET})
    assert response.status_code == 200, response.text
    assert response.json()["offset"] == MAX_OFFSET


@pytest.mark.parametrize("offset", [MAX_OFFSET + 1, 2**63, 2**64 + 5])
@pytest.mark.parametrize("path", ["/v2/order-search/poll", "/v2/shipment/poll"])
def test_tradecloud_offset_beyond_the_cap_is_a_400_pointing_to_last_updated_after(
    hub: Hub, path: str, offset: int
) -> None:
    """Tradecloud polls refuse offset > MAX_OFFSET (2^63 used to be a 500) naming offset."""
    response = hub.tradecloud.post(path, json={"offset": offset})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_type"] == "bad_request"
    assert [e["field"] for e in body["errors"]] == ["offset"]
    assert "lastUpdatedAfter" in body["errors"][0]["message"]


def test_tradecloud_offset_at_the_cap_is_served(hub: Hub) -> None:
    """offset = MAX_OFFSET itself is served by a Tradecloud poll."""
    response = hub.tradecloud.post("/v2/order-search/poll", json={"offset": MAX_OFFSET})
    assert response.status_code == 200, response.text


# -- overlong numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "path"), [("masonhub", "/api/v1/orders"), ("hubrise", "/v1/location/orders")]
)
def test_a_5000_digit_number_is_refused_in_plain_words(hub: Hub, dialect: str, path: str) -> None:
    """A 5,000-digit number is a 400 saying so and naming its member, no Python internal."""
    content = b'[{"priority": ' + b"9" * 5000 + b"}]"
    if dialect == "hubrise":
        content = b'{"ref": "x", "total": ' + b"9" * 5000 + b"}"
    response = getattr(hub, dialect).post(
        path, content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error_type"] == "bad_request"
    assert "a number has more than 4300 digits" in body["message"]
    assert _fields(response) == ["priority" if dialect == "masonhub" else "total"]
    assert "sys." not in response.text and "set_int_max_str_digits" not in response.text


@pytest.mark.parametrize("name", ["offset", "limit"])
@pytest.mark.parametrize("path", ["/api/v1/orders", "/api/v1/shipments"])
def test_a_5000_digit_query_integer_is_a_400_naming_it(hub: Hub, path: str, name: str) -> None:
    """A 5,000-digit offset or limit is a 400 naming it (the lean route's int() used to 500)."""
    response = hub.masonhub.get(f"{path}?{name}={'9' * 5000}")
    assert response.status_code == 400, response.text
    assert response.json()["error_type"] == "bad_request"
    assert _fields(response) == [name]


def test_the_offset_cap_is_a_hub_setting(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ORDERSYNC_HUB_MAX_OFFSET moves the cap on both dialects (and both MasonHub routes)."""
    monkeypatch.setenv("ORDERSYNC_HUB_MAX_OFFSET", "50")
    db_url = f"sqlite:///{tmp_path_factory.mktemp('cap')}/hub.db"
    settings = HubSettings.from_env(db_url=db_url, quotas=QuotaPolicy())
    assert settings.max_offset == 50
    mh, tc, _ = asyncio.run(_tokens(db_url))
    with (
        serve_in_thread(create_app(settings)) as base,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {mh}"}) as masonhub,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tc}"}) as tradecloud,
    ):
        assert masonhub.get("/api/v1/orders?offset=50").status_code == 200
        assert masonhub.get("/api/v1/orders?offset=51").status_code == 400
        assert masonhub.get("/api/v1/orders?offset=51&limit=5&limit=6").status_code == 400
        assert tradecloud.post("/v2/order-search/poll", json={"offset": 50}).status_code == 200
        refused = tradecloud.post("/v2/order-search/poll", json={"offset": 51})
        assert refused.status_code == 400 and "at most 50" in refused.json()["message"]
