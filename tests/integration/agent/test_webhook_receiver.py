"""The agent's webhook receiver (`POST /webhooks/{source}`) and its inbox: signed deliveries are
verified, stored and answered at once, then applied through the engine's version-checked apply
without waiting for the poll interval; a crash between receipt and apply re-applies exactly
once after the restart; polling still reconciles what a dropped webhook would have brought."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ordersync.agent import inbox as inbox_module
from ordersync.agent.config import parse_config
from ordersync.agent.runner import (
    AgentRuntime,
    observability_app,
    open_runtime,
    run_sources,
    status_payload,
)
from ordersync.agent.webhooks import (
    Rejected,
    decode_secret,
    entities_named,
    hubrise_hmac,
    sign,
    verify,
)
from ordersync.errors import ConfigurationError
from tests.integration.agent.harness import (
    BASE_URLS,
    CONNECTION,
    Hub,
    applied_changes,
)

OLD_SECRET = "whsec_" + base64.b64encode(b"old-secret-0123456789abcdef").decode()
SECRET = "whsec_" + base64.b64encode(b"new-secret-0123456789abcdef").decode()
WRONG = "whsec_" + base64.b64encode(b"not-the-secret-0123456789ab").decode()
NOW = 1_800_000_000


class SimulatedCrash(Exception):
    """Stands for the process dying at this point: nothing after it runs."""


def signed_headers(
    body: bytes, *, secret: str = SECRET, event_id: str | None = None, at: int | None = None
) -> dict[str, str]:
    event_id = event_id or f"msg_{uuid.uuid4().hex}"
    at = int(time.time()) if at is None else at
    key = decode_secret(secret)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(at),
        "webhook-signature": sign(key, event_id, at, body),
        "content-type": "application/json",
        "x-hubrise-hmac-sha256": hubrise_hmac(key, body),
    }


def body_naming(dialect: str, order_id: str) -> bytes:
    """A delivery of each dialect naming one changed order (platform-apis.md's shapes)."""
    if dialect == "masonhub":
        document: dict[str, Any] = {
            "callback_url": "http://agent.test/webhooks/masonhub",
            "message_type": "orderEvent",
            "message_id": str(uuid.uuid4()),
            "data": {"order_id": order_id, "status": "open", "shipments": []},
        }
    elif dialect == "tradecloud":
        document = {
            "eventName": "OrderUpdatedByBuyer",
            "orderEvent": {"order": {"id": order_id}, "lines": []},
            "meta": {"messageId": str(uuid.uuid4())},
        }
    else:
        document = {
            "id": uuid.uuid4().hex[:10],
            "resource_type": "order",
            "event_type": "update",
            "resource_id": order_id,
            "order_id": order_id,
            "new_state": None,
        }
    return orjson.dumps(document)


# -- verification (pure) ---------------------------------------------------------------------


def test_a_valid_signature_passes_and_names_the_event() -> None:
    """The Standard Webhooks v1 signature over id.timestamp.body verifies with the secret."""
    body = b'{"data": {}}'
    headers = signed_headers(body, event_id="evt_1", at=NOW)
    delivery = verify([decode_secret(SECRET)], headers, body, now_s=NOW, tolerance_s=300)
    assert (delivery.event_id, delivery.timestamp) == ("evt_1", NOW)


def test_a_wrong_secret_or_a_changed_body_is_refused_401() -> None:
    """A signature made with another secret, or over another body, does not verify."""
    body = b'{"data": {}}'
    for headers, sent in (
        (signed_headers(body, secret=WRONG, at=NOW), body),
        (signed_headers(body, at=NOW), b'{"data": {"x": 1}}'),
    ):
        with pytest.raises(Rejected) as refused:
            verify([decode_secret(SECRET)], headers, sent, now_s=NOW, tolerance_s=300)
        assert (refused.value.status, refused.value.error_type) == (401, "invalid_signature")


def test_rotation_accepts_the_old_and_the_new_secret() -> None:
    """With both secrets configured, a sender still signing with the old one passes; a sender
    listing two signatures (old and new) passes with only the new one configured."""
    body = b'{"data": {}}'
    keys = [decode_secret(SECRET), decode_secret(OLD_SECRET)]
    old = signed_headers(body, secret=OLD_SECRET, event_id="e", at=NOW)
    assert verify(keys, old, body, now_s=NOW, tolerance_s=300).event_id == "e"
    both = dict(old)
    both["webhook-signature"] += " " + sign(decode_secret(SECRET), "e", NOW, body)
    assert verify([decode_secret(SECRET)], both, body, now_s=NOW, tolerance_s=300)


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_timestamp_beyond_the_tolerance_is_refused(skew: int) -> None:
    """A correctly signed delivery older (or further ahead) than 5 minutes is refused 400."""
    body = b"{}"
    headers = signed_headers(body, at=NOW + skew)
    with pytest.raises(Rejected) as refused:
        verify([decode_secret(SECRET)], headers, body, now_s=NOW, tolerance_s=300)
    assert (refused.value.status, refused.value.error_type) == (400, "stale_timestamp")
    assert verify([decode_secret(SECRET)], headers, body, now_s=NOW + skew, tolerance_s=300)


def test_hubrise_hmac_is_checked_on_hubrise_sources() -> None:
    """On a HubRise source X-HubRise-Hmac-SHA256 must match too; alone, it is enough (the
    event's own id stands for webhook-id)."""
    body = b'{"id": "ev42", "resource_type": "order", "resource_id": "o1"}'
    keys = [decode_secret(SECRET)]
    headers = signed_headers(body, at=NOW)
    headers["x-hubrise-hmac-sha256"] = hubrise_hmac(decode_secret(WRONG), body)
    with pytest.raises(Rejected) as refused:
        verify(keys, headers, body, now_s=NOW, tolerance_s=300, hubrise=True)
    assert refused.value.field == "X-HubRise-Hmac-SHA256"
    as_text = {"x-hubrise-hmac-sha256": hubrise_hmac(SECRET.encode(), body)}
    assert verify(keys, as_text, body, now_s=NOW, tolerance_s=300, hubrise=True)
    only_hubrise = {"x-hubrise-hmac-sha256": hubrise_hmac(keys[0], body)}
    assert verify(keys, only_hubrise, body, now_s=NOW, tolerance_s=300, hubrise=True).event_id == (
        "ev42"
    )


@pytest.mark.parametrize(
    ("dialect", "document", "named"),
    [
        (
            "masonhub",
            {"data": {"order_id": "o1", "shipments": [{"shipment_id": "s1"}, "junk"]}},
            [("order", "o1"), ("shipment", "s1")],
        ),
        ("masonhub", {"message_type": "orderUpdateResolution", "data": {"id": "r1"}}, []),
        ("tradecloud", {"eventName": "X", "orderEvent": {"id": "o2"}}, [("order", "o2")]),
        (
            "tradecloud",
            {"shipmentEvent": {"shipment": {"id": "s2"}}},
            [("shipment", "s2")],
        ),
        (
            "tradecloud",
            {
                "eventName": "ShipmentIssuedBySupplier",
                "singleDeliveryOrderEvent": {"id": "s3", "orderId": "o3"},
            },
            [("shipment", "s3")],
        ),
        (
            "masonhub",
            {"message_type": "orderEvent", "data": {"order_id": "o4", "shipments": [{"id": "s4"}]}},
            [("order", "o4"), ("shipment", "s4")],
        ),
        ("hubrise", {"id": "e", "resource_type": "order", "resource_id": "o3"}, [("order", "o3")]),
    ],
)
def test_each_dialect_names_its_entities(
    dialect: str, document: dict[str, Any], named: list[tuple[str, str]]
) -> None:
    """The entity a delivery is about, read as each platform writes it; nothing named is fine
    (it wakes polling), a body without MasonHub's `data` is malformed."""
    assert entities_named(dialect, orjson.dumps(document)) == named
    with pytest.raises(Rejected):
        entities_named("masonhub", b'{"message_type": "orderEvent"}')


# -- the agent, against the hub in-process -----------------------------------------------------


def config(tmp_path: Path, dialect: str, sink_url: str, **source: Any) -> Any:
    raw = {
        "sources": [
            {
                "name": dialect,
                "dialect": dialect,
                "base_url": BASE_URLS[dialect],
                "token_env": "HUB_TOKEN",
                "connection_name": CONNECTION,
                "interval": 3600,  # an hour: anything applied sooner came by the webhook
                "webhook_secrets": [SECRET, OLD_SECRET],
                **source,
            }
        ],
        "sink": {"url": sink_url},
        "port": 0,
    }
    return parse_config(raw, {})


@asynccontextmanager
async def agent(
    tmp_path: Path, hub: Hub, dialect: str = "masonhub", sink_url: str | None = None
) -> AsyncIterator[tuple[AgentRuntime, httpx.AsyncClient]]:
    """An agent over the hub in-process, and an HTTP client of its port's app."""
    url = sink_url or f"sqlite:///{tmp_path}/replica.db"
    runtime = await open_runtime(
        config(tmp_path, dialect, url),
        {"HUB_TOKEN": hub.token},
        transport=httpx.ASGITransport(app=hub.app),
        state_dir=tmp_path,
    )
    port = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=observability_app(runtime)), base_url="http://agent"
    )
    try:
        yield runtime, port
    finally:
        await port.aclose()
        await runtime.close()


async def eventually(
    runtime: AgentRuntime, check: Callable[[], Awaitable[bool]], what: str
) -> None:
    """Wait for `check`, looked at after every commit of the agent's engines (the deadline is
    against a hang, not a measurement)."""
    committed = asyncio.Event()

    def on_commit(step: str, _stream: str) -> None:
        if step == "after_commit":
            committed.set()

    for engine in runtime.engines.values():
        engine.hook = on_commit
    try:
        async with asyncio.timeout(60):
            while True:
                committed.clear()
                if await check():
                    return
                await committed.wait()
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


async def held_version(runtime: AgentRuntime, source: str, order_id: str) -> int | None:
    return (await runtime.sink.load_versions(source, "order")).get(order_id)


def webhooks_row(runtime: AgentRuntime) -> dict[str, Any]:
    return next(row for row in status_payload(runtime) if row["stream"] == "webhooks")


@pytest.mark.parametrize("dialect", ["masonhub", "tradecloud", "hubrise"])
async def test_a_webhook_is_applied_without_waiting_for_the_poll_interval(
    tmp_path: Path, hub: Hub, dialect: str
) -> None:
    """With polling every hour, a signed delivery naming a changed order gets the order's new
    version into the replica at once: 204, fetched by id, applied by the webhooks stream."""
    (order,) = await hub.create_orders(1)
    async with agent(tmp_path, hub, dialect) as (runtime, port):
        stop = asyncio.Event()
        running = asyncio.ensure_future(run_sources(runtime, stop))
        try:
            await eventually(
                runtime, lambda: _is(held_version(runtime, dialect, order.id), 1), "the first poll"
            )
            hub.clock.advance(5)
            changed = await hub.advance_order(order.id)
            assert changed is not None and changed.version == 2
            body = body_naming(dialect, order.id)
            answer = await port.post(
                f"/webhooks/{dialect}", content=body, headers=signed_headers(body)
            )
            assert answer.status_code == 204
            await eventually(
                runtime,
                lambda: _is(held_version(runtime, dialect, order.id), 2),
                "the webhook's apply",
            )
        finally:
            stop.set()
            await running
        row = webhooks_row(runtime)
        assert row["webhooks_received"] == 1 and row["inbox_depth"] == 0
        # HubRise: the delivery also wakes the callback-events feed, which may apply the same
        # version first; either way it was applied once, without waiting for the interval.
        assert row["applied"] == 1 or (dialect == "hubrise" and row["applied"] == 0)
        changes = await applied_changes(runtime.sink)
        assert changes.count(("order", order.id, 2)) == 1
        metrics = (await port.get("/metrics")).text
        assert (
            f'ordersync_agent_webhook_apply_seconds_count{{source="{dialect}"}} 1.0' in metrics
            or row["applied"] == 0
        )
        assert 'data-field="inbox_depth">0<' in (await port.get("/")).text


async def _is(value: Awaitable[int | None], expected: int) -> bool:
    return await value == expected


async def test_refusals_are_4xx_with_error_type_and_never_stored(tmp_path: Path, hub: Hub) -> None:
    """Wrong secret 401, stale 400, unknown source 404, too large 413, not JSON 400, a replayed
    id 200 `replayed` (the sender stops retrying) and stored once; none is a 500."""
    (order,) = await hub.create_orders(1)
    async with agent(tmp_path, hub) as (runtime, port):
        body = body_naming("masonhub", order.id)
        first = signed_headers(body, event_id="evt-replayed")
        assert (await port.post("/webhooks/masonhub", content=body, headers=first)).status_code == (
            204
        )
        cases = [
            (
                "/webhooks/masonhub",
                body,
                signed_headers(body, secret=WRONG),
                401,
                "invalid_signature",
            ),
            (
                "/webhooks/masonhub",
                body,
                signed_headers(body, at=int(time.time()) - 3600),
                400,
                "stale_timestamp",
            ),
            ("/webhooks/nosuch", body, signed_headers(body), 404, "unknown_source"),
            ("/webhooks/masonhub", b"x" * 2_000_000, {}, 413, "body_too_large"),
            ("/webhooks/masonhub", b"[1, 2", signed_headers(b"[1, 2"), 400, "malformed_body"),
            (
                "/webhooks/masonhub",
                body,
                {"content-type": "application/json"},
                400,
                "missing_header",
            ),
            (
                "/webhooks/masonhub",
                body,
                signed_headers(body, event_id="evt-replayed"),
                200,
                "replayed",
            ),
        ]
        for path, content, headers, status, error_type in cases:
            answer = await port.post(path, content=content, headers=headers)
            assert (answer.status_code, answer.json()["error_type"]) == (status, error_type), path
            assert "field" in answer.json()
        pending = await runtime.inbox_feeds["masonhub"].inbox.pending("masonhub", 0)
        assert [row.event_id for row in pending] == ["evt-replayed"]
        metrics = (await port.get("/metrics")).text
        assert (
            'ordersync_agent_webhooks_rejected_total{reason="invalid_signature",source="masonhub"}'
            " 1.0" in metrics
        )
        assert 'reason="replayed",source="masonhub"} 1.0' in metrics


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("step", ["after_fetch", "before_cursor", "after_commit"])
async def test_a_crash_between_receipt_and_apply_applies_once_after_restart(
    tmp_path: Path, hub: Hub, request: pytest.FixtureRequest, backend: str, step: str
) -> None:
    """The event stays in the inbox until its apply commits (the done mark is the webhooks
    stream's position, in the apply's transaction): a crash before that re-applies it after the
    restart, a crash after it leaves nothing to do; the ledger holds the version once."""
    url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/replica.db"
    )
    (order,) = await hub.create_orders(1)

    def crash(name: str, *_: object) -> None:
        if name == step:
            raise SimulatedCrash(step)

    async with agent(tmp_path, hub, sink_url=url) as (runtime, port):
        engine, feed = runtime.engines["masonhub"], runtime.inbox_feeds["masonhub"]
        await engine.run_cycle()  # the replica holds version 1
        hub.clock.advance(5)
        await hub.advance_order(order.id)
        body = body_naming("masonhub", order.id)
        answer = await port.post("/webhooks/masonhub", content=body, headers=signed_headers(body))
        assert answer.status_code == 204
        if step == "before_cursor":
            runtime.sink.fault_hook = crash  # type: ignore[attr-defined]
        else:
            engine.hook = crash
        with pytest.raises(SimulatedCrash):
            await engine.sync_feed(feed)
    committed = step == "after_commit"
    async with agent(tmp_path, hub, sink_url=url) as (runtime, _):
        engine, feed = runtime.engines["masonhub"], runtime.inbox_feeds["masonhub"]
        position = await runtime.sink.load_cursor("masonhub", "webhooks")
        assert await feed.inbox.depth("masonhub", inbox_module.seq_of(position)) == (
            0 if committed else 1
        )
        counts = await engine.sync_feed(feed)
        assert counts.applied == (0 if committed else 1)
        assert await held_version(runtime, "masonhub", order.id) == 2
        assert (await applied_changes(runtime.sink)).count(("order", order.id, 2)) == 1
        assert await feed.inbox.depth("masonhub", 10**9) == 0


async def test_polling_reconciles_a_dropped_webhook(tmp_path: Path, hub: Hub) -> None:
    """A change whose webhook never arrives is still applied by the next poll, and a delivery
    naming nothing fetchable (a resolution) wakes the poll loop instead of waiting an hour."""
    orders = await hub.create_orders(2)
    async with agent(tmp_path, hub) as (runtime, port):
        stop = asyncio.Event()
        running = asyncio.ensure_future(run_sources(runtime, stop))
        try:
            await eventually(
                runtime,
                lambda: _is(held_version(runtime, "masonhub", orders[1].id), 1),
                "the first poll",
            )
            hub.clock.advance(5)
            await hub.advance_order(orders[0].id)  # its webhook is dropped
            resolution = orjson.dumps(
                {
                    "callback_url": "http://agent.test/webhooks/masonhub",
                    "message_type": "orderUpdateResolution",
                    "message_id": str(uuid.uuid4()),
                    "data": {"id": str(uuid.uuid4()), "status": "success"},
                }
            )
            answer = await port.post(
                "/webhooks/masonhub", content=resolution, headers=signed_headers(resolution)
            )
            assert answer.status_code == 204
            await eventually(
                runtime,
                lambda: _is(held_version(runtime, "masonhub", orders[0].id), 2),
                "the poll the delivery woke",
            )
        finally:
            stop.set()
            await running
        rows = {row["stream"]: row for row in status_payload(runtime)}
        assert rows["orders"]["applied"] == 3  # two by the first poll, the dropped change
        assert rows["webhooks"]["applied"] == 0


async def test_webhooks_need_a_sql_replica_and_a_port(tmp_path: Path) -> None:
    """A JSONL or HTTP sink has no inbox to commit with: configuring secrets there is refused
    with a message saying why; so is a missing port."""
    with pytest.raises(ConfigurationError, match="need a SQL replica"):
        config(tmp_path, "masonhub", f"jsonl://{tmp_path}/changes.jsonl")
    raw = {
        "sources": [
            {
                "name": "m",
                "base_url": "http://hub/api/v1",
                "token_env": "T",
                "webhook_secrets": [SECRET],
            }
        ],
        "sink": {"url": "sqlite:///r.db"},
    }
    with pytest.raises(ConfigurationError, match="set port"):
        parse_config(raw, {})
    with pytest.raises(ConfigurationError, match="whsec_") as refused:
        parse_config(raw | {"port": 0}, {"ORDERSYNC_SOURCE_M_WEBHOOK_SECRETS": "s3cr3t-typo"})
    assert "s3cr3t-typo" not in str(refused.value)  # a mistyped secret is not echoed
    both = parse_config(
        raw | {"port": 0}, {"ORDERSYNC_SOURCE_M_WEBHOOK_SECRETS": f"{SECRET},{WRONG}"}
    )
    assert both.sources[0].webhook_secrets == [SECRET, WRONG]
    tolerant = parse_config(raw | {"port": 0}, {"ORDERSYNC_AGENT_WEBHOOK_TOLERANCE": "60"})
    assert tolerant.webhook_tolerance == 60


KILLED_CHILD = """
import asyncio, sys
from pathlib import Path
from ordersync.agent.config import parse_config
from ordersync.agent.runner import open_runtime, run_sources, serving_observability

async def main(base_url, token, sink_url, port, secret, block):
    raw = {"sources": [{"name": "masonhub", "base_url": base_url, "token_env": "T",
                        "interval": 3600, "webhook_secrets": [secret]}],
           "sink": {"url": sink_url}, "port": int(port)}
    runtime = await open_runtime(parse_config(raw, {}), {"T": token}, state_dir=Path("."))
    fetches = 0

    async def hook(step, stream):
        nonlocal fetches
        if stream != "webhooks":
            return
        print(step, flush=True)
        fetches += step == "after_fetch"
        if block == "1" and fetches == 2:  # the delivery's entity read, not yet applied
            await asyncio.sleep(3600)

    runtime.engines["masonhub"].hook = hook
    async with serving_observability(runtime, int(port)):
        print("serving", flush=True)
        await run_sources(runtime, asyncio.Event())

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.slow
async def test_an_agent_killed_between_receipt_and_apply_applies_once_after_restart(
    tmp_path: Path,
) -> None:
    """kill -9 of a real agent process after it answered 204 and fetched the entity, before
    the apply: the event waits in the replica's inbox and the next agent applies it, once."""
    import os
    import signal
    import sys

    from ordersync.agent.sinks.sql import SqlSink
    from ordersync.domain import NewOrder, OrderStatus
    from ordersync.hub.app import create_app
    from ordersync.hub.ratelimit import QuotaPolicy
    from ordersync.hub.settings import HubSettings
    from ordersync.store.store import Store
    from tests.support import free_port, order_payload, serve_in_thread

    db_url, sink_url = f"sqlite:///{tmp_path}/hub.db", f"sqlite:///{tmp_path}/replica.db"
    store = await Store.open(db_url)
    token = await store.create_token("acme", "agent")
    warehouse = await store.authenticate(await store.create_token("acme", "warehouse"))
    (created,) = await store.create_orders(
        warehouse, [NewOrder.model_validate(order_payload("K-1"))]
    )
    order = created.order
    assert order is not None
    app = create_app(HubSettings(db_url=db_url, quotas=QuotaPolicy()))

    async def agent_process(port: int, block: str) -> asyncio.subprocess.Process:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            KILLED_CHILD,
            root + "/api/v1",
            token,
            sink_url,
            str(port),
            SECRET,
            block,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=tmp_path,
        )
        return child

    async def until(child: asyncio.subprocess.Process, wanted: str, times: int = 1) -> None:
        assert child.stdout is not None
        seen = 0
        async with asyncio.timeout(60):
            while line := (await child.stdout.readline()).decode():
                seen += line.strip() == wanted
                if seen >= times:
                    return
        pytest.fail(f"the agent ended before {wanted!r}")

    with serve_in_thread(app) as root:
        port = free_port()
        first = await agent_process(port, "1")
        try:
            await until(first, "after_commit")  # the inbox drained at start
            await store.transition_order(
                warehouse, warehouse.account_id, order.id, OrderStatus.AT_WAREHOUSE
            )
            body = body_naming("masonhub", order.id)
            async with httpx.AsyncClient() as client:
                answer = await client.post(
                    f"http://127.0.0.1:{port}/webhooks/masonhub",
                    content=body,
                    headers=signed_headers(body),
                )
            assert answer.status_code == 204
            await until(first, "after_fetch")  # the second: the delivery's drain
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()

        sink = await SqlSink.open(sink_url)
        try:
            pending = await inbox_module.Inbox(sink.engine).depth(
                "masonhub",
                inbox_module.seq_of(await sink.load_cursor("masonhub", "webhooks")),
            )
            assert pending == 1
        finally:
            await sink.close()

        second = await agent_process(port, "0")
        try:
            await until(second, "after_commit")  # the pending event applied at start
        finally:
            second.send_signal(signal.SIGKILL)
            await second.wait()
    sink = await SqlSink.open(sink_url)
    try:
        assert (await sink.load_versions("masonhub", "order"))[order.id] == 2
        assert (await applied_changes(sink)).count(("order", order.id, 2)) == 1
        cursor = await sink.load_cursor("masonhub", "webhooks")
        assert (
            await inbox_module.Inbox(sink.engine).depth("masonhub", inbox_module.seq_of(cursor))
            == 0
        )
    finally:
        await sink.close()
        await store.close()
