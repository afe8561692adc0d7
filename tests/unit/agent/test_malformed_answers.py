"""Whatever a platform answers, each source returns a valid page or raises ProtocolError:
never another exception, which would end the agent with a traceback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ordersync.agent.budget import Budget, parse_structured_list
from ordersync.agent.client import ApiClient
from ordersync.agent.engine import SyncEngine
from ordersync.agent.errors import ProtocolError
from ordersync.agent.records import Record
from ordersync.agent.retry import parse_http_date_ms, parse_retry_after
from ordersync.agent.sinks.jsonl import JsonlSink
from ordersync.agent.sources.hubrise import HubRiseSource
from ordersync.agent.sources.masonhub import MasonHubSource
from ordersync.agent.sources.tradecloud import TradecloudSource

# Any JSON value; keys and strings lean towards the names the dialects use, so that documents
# get past the first checks and reach the parsing of records.
NAMES = st.sampled_from(
    [
        "data", "id", "version", "updated_at", "created_at", "lastUpdatedAt", "lines",
        "buyerLine", "position", "quantity", "netPrice", "items", "price", "status",
        "resource_type", "new_state", "line_number", "order", "orders", "x",
    ]
)  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | NAMES
    | st.sampled_from(
        ["2024-01-01T10:30:00.123Z", "2024-01-01T10:30:00+02:00", "9.99 EUR", "1e999999", "NaN"]
    )
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(NAMES | st.text(), inner, max_size=6)
    ),
    max_leaves=40,
)
# Also an answer shaped like a page whose records are arbitrary.
DOCUMENTS = JSON | st.builds(lambda data: {"data": data}, st.lists(JSON, max_size=4))


def client_answering(content: bytes, *, exact_numbers: bool = False) -> ApiClient:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return ApiClient(http, "http://platform.test/api", "tok", exact_numbers=exact_numbers)


Fetch = Callable[[bytes], Awaitable[object]]


async def masonhub_page(content: bytes) -> object:
    return await MasonHubSource(client_answering(content)).fetch_page("orders", 0, 0, 100)


async def masonhub_shipments(content: bytes) -> object:
    return await MasonHubSource(client_answering(content)).fetch_page("shipments", 0, 0, 100)


async def tradecloud_page(content: bytes) -> object:
    source = TradecloudSource(client_answering(content, exact_numbers=True), echo="apply")
    return await source.fetch_page("orders", 0, 0, 100)


async def tradecloud_shipments(content: bytes) -> object:
    source = TradecloudSource(client_answering(content, exact_numbers=True), echo="apply")
    return await source.fetch_page("shipments", 0, 0, 100)


async def hubrise_orders(content: bytes) -> object:
    return await HubRiseSource(client_answering(content)).list_orders()


async def hubrise_events(content: bytes) -> object:
    return await HubRiseSource(client_answering(content)).pending_events()


FETCHES: dict[str, Fetch] = {
    "masonhub-orders": masonhub_page,
    "masonhub-shipments": masonhub_shipments,
    "tradecloud-orders": tradecloud_page,
    "tradecloud-shipments": tradecloud_shipments,
    "hubrise-orders": hubrise_orders,
    "hubrise-events": hubrise_events,
}


async def outcome(fetch: Fetch, content: bytes) -> object:
    try:
        return await fetch(content)
    except ProtocolError as exc:
        return exc


@pytest.mark.parametrize("answer", sorted(FETCHES))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=DOCUMENTS)
async def test_any_json_answer_is_a_page_or_a_protocol_error(answer: str, document: Any) -> None:
    """Any JSON document as the answer: a valid page (records with ids) or ProtocolError."""
    result = await outcome(FETCHES[answer], json.dumps(document).encode())
    if isinstance(result, ProtocolError):
        return
    records = [e.record for e in result] if isinstance(result, list) else result.records  # type: ignore[attr-defined]
    for record in records:
        assert record is None or isinstance(record, Record)


ANY = sorted(FETCHES)
TRADECLOUD_ORDER = (
    b'{"data": [{"id": "1", "version": 1, "lastUpdatedAt": "2024-01-01T00:00:00Z", "lines": '
)
LINE = b'[{"buyerLine": {"position": 1, "quantity": %s}}]}]}'
KNOWN_MALFORMED = [
    (ANY, b"[1, 2, 3]"),
    (ANY, b'"text"'),
    (ANY, b"42"),
    (ANY, b"null"),
    (ANY, b"true"),
    (ANY, b"{not json"),
    (ANY, b"\xff\xfe\x00garbage"),
    (ANY, b"[" * 100_000 + b"]" * 100_000),
    (ANY, b'{"data": [{"id": "1", "version": Infinity, "updated_at": NaN}]}'),
    (ANY, b'{"data": [{"id": "1", "version": 1e999, "updated_at": "2024-01-01T00:00:00Z"}]}'),
    (ANY, b'{"data": [{"id": "1", "version": 1, "updated_at": {"a": 1}}]}'),
    (["tradecloud-orders"], TRADECLOUD_ORDER + LINE % b'"lots"'),
    (["tradecloud-orders"], TRADECLOUD_ORDER + LINE % b"1e999999999"),
    (["tradecloud-shipments"], TRADECLOUD_ORDER + b'[], "trackingNumber": 1e999999999}]}'),
    (
        ["hubrise-events"],
        b'[{"id": "1", "created_at": 5, "resource_type": "order", "new_state": null}]',
    ),
    (
        ["hubrise-orders"],
        b'[{"id": "1", "version": 1, "updated_at": "2024-01-01T00:00:00Z",'
        b' "created_at": "2024-01-01T00:00:00Z", "items": [{"quantity": "1e999999999"}]}]',
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "content"),
    [(answer, content) for answers, content in KNOWN_MALFORMED for answer in answers],
    ids=lambda value: repr(value[:24]) if isinstance(value, bytes) else value,
)
async def test_each_known_malformed_answer_is_a_protocol_error(answer: str, content: bytes) -> None:
    """Wrong JSON types, invalid JSON, absurd numbers and nesting: ProtocolError, not a crash;
    a record whose id, version and time are readable but whose body is not (an absurd amount)
    comes with its `problem` instead, for the sink to quarantine without failing the page."""
    result = await outcome(FETCHES[answer], content)
    if isinstance(result, ProtocolError):
        return
    records = [e.record for e in result] if isinstance(result, list) else result.records  # type: ignore[attr-defined]
    assert records, result
    assert all(r.problem is not None and r.snapshot is None for r in records), records


@pytest.mark.parametrize(
    ("answer", "content"),
    [
        ("masonhub-orders", b"[]"),
        ("tradecloud-orders", b"[]"),
        ("hubrise-orders", b'{"data": []}'),
        ("hubrise-events", b"{}"),
    ],
)
async def test_the_other_dialects_top_level_type_is_a_protocol_error(
    answer: str, content: bytes
) -> None:
    """A top-level array where an object is promised (and the reverse for HubRise)."""
    result = await outcome(FETCHES[answer], content)
    assert isinstance(result, ProtocolError), result


async def test_an_answer_over_the_size_limit_is_a_protocol_error_not_read_whole() -> None:
    """A body past `max_body_bytes` ends the read there, whatever its Content-Length says."""
    sent: list[int] = []

    async def endless() -> Any:
        for _ in range(10_000):
            sent.append(1)
            yield b"[" + b"0," * 50_000 + b"0]"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    client = ApiClient(http, "http://platform.test/api", "tok", max_body_bytes=1_000_000)
    with pytest.raises(ProtocolError, match="over 1000000 bytes"):
        await MasonHubSource(client).fetch_page("orders", 0, 0, 100)
    assert len(sent) < 20


async def test_a_body_not_in_its_declared_encoding_is_a_protocol_error() -> None:
    """`Content-Encoding: gzip` over bytes that are not gzip: ProtocolError (httpx raises
    DecodingError, which is no transport error)."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not gzip", headers={"content-encoding": "gzip"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    with pytest.raises(ProtocolError, match="unreadably"):
        await MasonHubSource(ApiClient(http, "http://p.test", "tok")).fetch_page("orders", 0, 0, 9)


@settings(max_examples=500)
@given(value=st.text(max_size=40))
def test_any_retry_after_or_date_header_is_read_or_ignored(value: str) -> None:
    """A Retry-After or Date header of any text gives a number or None, never an exception."""
    parse_retry_after(value, 1_704_067_200_000)
    parse_http_date_ms(value)


def test_a_retry_after_of_unicode_digits_is_ignored() -> None:
    """'²' passes str.isdigit but is no delta-seconds: ignored, not a ValueError."""
    assert parse_retry_after("²", 0) is None


async def test_a_malformed_answer_is_one_warning_and_a_retry_next_cycle(tmp_path: Path) -> None:
    """A platform answering a top-level array: each cycle fails with one `sync_cycle_failed`
    warning naming it, the loop goes on and asks again; nothing is applied, no traceback."""
    stop = asyncio.Event()
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if len(asked) >= 6:
            stop.set()
        return httpx.Response(200, json=[{"id": "o1"}])

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    source = MasonHubSource(ApiClient(http, "http://p.test", "t"), streams=("orders",))
    sink = await JsonlSink.open(tmp_path / "changes.jsonl")
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(SyncEngine(source, sink).run(0.001, stop), 60)
    await sink.close()
    failures = [entry for entry in logs if entry["event"] == "sync_cycle_failed"]
    assert len(failures) == len(asked) >= 6
    assert all(f["log_level"] == "warning" and "data array" in f["error"] for f in failures)
    assert await sink.load_cursor("masonhub", "orders") is None


@settings(max_examples=300)
@given(value=st.text(max_size=40))
def test_any_ratelimit_header_is_read_or_skipped(value: str) -> None:
    """`RateLimit` / `RateLimit-Policy` of any text (e.g. `r=²`) never raises."""
    parse_structured_list(value)
    parse_structured_list(f'"minute";r={value}')


async def test_a_rate_limit_header_of_unicode_digits_does_not_end_the_call() -> None:
    """A platform sends `RateLimit: "minute";r=²` (latin-1 byte 0xB2): the page is read."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": []}, headers=[(b"ratelimit", b'"minute";r=\xb2')])

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    client = ApiClient(http, "http://p.test", "t", budget=Budget("p"))
    assert (await MasonHubSource(client).fetch_page("orders", 0, 0, 10)).records == []
