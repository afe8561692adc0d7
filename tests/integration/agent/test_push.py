"""`agent push`: the ERP's creates, updates and cancels reach a real hub (uvicorn, its request
resolver running) through the outbox; each line ends resolved or failed with the platform's
reason; pushing again sends nothing new; a SIGKILL at any step of a push, then the same push
again, ends with each order created exactly once and every line resolved; two copies at once
do not duplicate anything either."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import delete, func, select

from ordersync.agent.client import exact_json
from ordersync.agent.config import SourceConfig
from ordersync.agent.factory import open_engine
from ordersync.agent.inbox import carried_document, fetch_entity
from ordersync.agent.outbox import push_outbox
from ordersync.agent.push import PushFileError, PushReport, parse_lines, push
from ordersync.agent.retry import RetryPolicy
from ordersync.agent.sinks.sql import orders as replica_orders
from ordersync.domain import OrderStatus
from ordersync.hub.app import create_app
from ordersync.hub.ratelimit import QuotaPolicy
from ordersync.hub.settings import HubSettings
from ordersync.store.engine import create_engines, parse_database_url
from ordersync.store.store import Principal, Store
from ordersync.store.tables import changes, idempotency_keys
from tests.integration.agent.harness import BASE_URLS, Hub
from tests.support import ORDERSYNC_CLI, order_payload, serve_in_thread

ROOTS = {"masonhub": "/api/v1", "hubrise": "/v1", "tradecloud": "/v2"}


@dataclass
class LiveHub:
    root: str
    token: str
    store: Store
    warehouse: Principal

    def source(self, dialect: str = "masonhub") -> SourceConfig:
        return SourceConfig(
            name=dialect,
            dialect=dialect,  # type: ignore[arg-type]
            base_url=self.root + ROOTS[dialect],
            token_env="T",
            connection_name="erp",  # the token's connection (Tradecloud's Basic user)
        )

    async def orders(self) -> dict[str, dict[str, Any]]:
        """customer_identifier -> the order as the hub serves it."""
        async with httpx.AsyncClient() as http:
            answer = await http.get(
                f"{self.root}/api/v1/orders",
                params={"updated_since": "2000-01-01T00:00:00Z", "limit": 100},
                headers={"Authorization": f"Bearer {self.token}"},
            )
        return {o["customer_identifier"]: o for o in answer.json()["data"]}

    async def creations(self) -> dict[str, int]:
        """order id -> how many `order.created` events the hub's log holds for it."""
        async with self.store.writer.connect() as conn:
            rows = await conn.execute(
                select(changes.c.entity_id, func.count())
                .where(changes.c.event_type == "order.created")
                .group_by(changes.c.entity_id)
            )
            return {str(i): int(n) for i, n in rows}


@pytest.fixture
async def live_hub(tmp_path: Path) -> AsyncIterator[LiveHub]:
    db_url = f"sqlite:///{tmp_path}/hub.db"
    store = await Store.open(db_url)
    token = await store.create_token("acme", "erp")
    warehouse = await store.authenticate(await store.create_token("acme", "warehouse"))
    settings = HubSettings(
        db_url=db_url,
        quotas=QuotaPolicy(),
        request_resolve_delay_ms=0,
        request_resolve_interval_s=0.05,
    )
    with serve_in_thread(create_app(settings)) as root:
        yield LiveHub(root, token, store, warehouse)
    await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The replica the outbox lives in: SQLite, or a PostgreSQL database of its own."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path}/replica.db"


def lines_of(*changes: dict[str, Any]) -> list[str]:
    return [orjson.dumps(change, default=exact_json).decode() for change in changes]


async def push_text(
    hub: LiveHub, replica: str, text: list[str], dialect: str = "masonhub", **kwargs: Any
) -> PushReport:
    lines = parse_lines(dialect, dialect, text)
    kwargs.setdefault("poll_interval_s", 0.05)
    kwargs.setdefault("wait_s", 20)
    return await push(hub.source(dialect), hub.token, replica, lines, **kwargs)


def states(report: PushReport) -> list[tuple[str, str]]:
    return [(r.ref, r.state) for r in report.results]


MIXED = lines_of(
    {"op": "create", "order": order_payload("SO-1")},
    {"op": "create", "order": order_payload("SO-2")},
    {"op": "update", "order": order_payload("SO-1", shipping_provider="DHL")},
    {"op": "cancel", "customer_identifier": "SO-2"},
)


async def test_creates_updates_and_cancels_are_applied_and_each_line_resolved(
    live_hub: LiveHub, replica: str
) -> None:
    """Each line is resolved (the update and cancel once the hub's resolver applied them) and
    the hub shows the result; the report names the platform's order and request ids."""
    report = await push_text(live_hub, replica, MIXED)
    assert states(report) == [("SO-1", "resolved")] * 1 + [("SO-2", "resolved")] + [
        ("SO-1", "resolved"),
        ("SO-2", "resolved"),
    ]
    assert report.exit_code == 0
    orders = await live_hub.orders()
    assert orders["SO-1"]["shipping_provider"] == "DHL"
    assert orders["SO-2"]["status"] == "canceled"
    assert report.results[0].order_id == orders["SO-1"]["id"]
    assert report.results[2].request_id and report.results[3].request_id


async def test_refusals_and_failed_resolutions_carry_the_platforms_reason(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """An invalid create fails naming the field; an update of a packed order fails with the
    resolver's reason; a cancel of an unknown order fails (303); other lines go on (exit 1)."""
    replica = f"sqlite:///{tmp_path}/replica.db"
    await push_text(live_hub, replica, lines_of({"op": "create", "order": order_payload("P-1")}))
    packed = (await live_hub.orders())["P-1"]["id"]
    for target in (OrderStatus.AT_WAREHOUSE, OrderStatus.IN_PROCESS, OrderStatus.PACKED):
        await live_hub.store.transition_order(
            live_hub.warehouse, live_hub.warehouse.account_id, packed, target
        )
    report = await push_text(
        live_hub,
        replica,
        lines_of(
            {"op": "create", "order": order_payload("BAD-1", line_items=[])},
            {"op": "update", "order": order_payload("P-1", shipping_provider="DHL")},
            {"op": "cancel", "customer_identifier": "NOBODY"},
            {"op": "create", "order": order_payload("OK-1")},
        ),
    )
    assert [r.state for r in report.results] == ["failed", "failed", "failed", "resolved"]
    bad, late, unknown, _ = report.results
    assert bad.reason is not None and "line_items" in bad.reason
    assert late.reason is not None and "packed" in late.reason
    assert unknown.reason is not None and "303" in unknown.reason
    assert report.exit_code == 1


async def test_pushing_the_same_file_again_sends_nothing_new(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """A second push of the same file reports the same results from the outbox and sends no
    request: the hub's log is unchanged."""
    replica = f"sqlite:///{tmp_path}/replica.db"
    first = await push_text(live_hub, replica, MIXED)
    log_before = await live_hub.creations()
    requests: list[httpx.Request] = []
    transport = httpx.AsyncHTTPTransport()
    second = await push_text(live_hub, replica, MIXED, transport=_Spy(transport, requests))
    assert states(second) == states(first)
    assert requests == []
    assert await live_hub.creations() == log_before


async def test_a_key_reused_for_another_change_is_refused_and_not_sent(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """A line whose own `key` was pushed before with other content fails naming the key; the
    earlier change stands and nothing is sent under the key again."""
    replica = f"sqlite:///{tmp_path}/replica.db"
    first = {"op": "create", "order": order_payload("K-1"), "key": "erp-7"}
    await push_text(live_hub, replica, lines_of(first))
    other = {"op": "create", "order": order_payload("K-2"), "key": "erp-7"}
    report = await push_text(live_hub, replica, lines_of(other))
    (result,) = report.results
    assert result.state == "failed" and result.reason is not None
    assert "erp-7" in result.reason and "K-1" in result.reason
    assert set(await live_hub.orders()) == {"K-1"}


class _Died(Exception):
    """Stands for the push process dying at a step: nothing after it runs."""


async def test_a_resend_after_the_platform_forgot_the_key_fails_without_a_duplicate(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """The create went out, the push died before recording the answer, and the platform's
    key expired meanwhile: pushed again, the platform refuses the duplicate, so the line
    fails saying it was sent before; the order exists once."""
    replica = f"sqlite:///{tmp_path}/replica.db"
    line = lines_of({"op": "create", "order": order_payload("X-1")})

    def die(step: str) -> None:
        if step == "after_send":
            raise _Died(step)

    with pytest.raises(_Died):
        await push_text(live_hub, replica, line, hook=die)
    async with live_hub.store.writer.begin() as conn:
        await conn.execute(delete(idempotency_keys))
    (result,) = (await push_text(live_hub, replica, line)).results
    assert result.state == "failed" and result.reason is not None
    assert "sent before under this key" in result.reason
    assert set((await live_hub.creations()).values()) == {1}


class _Spy(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, seen: list[httpx.Request]) -> None:
        self.inner, self.seen = inner, seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return await self.inner.handle_async_request(request)


class _DownFor(httpx.AsyncBaseTransport):
    """The platform answers 503 to every request for the identifier `down`; the rest pass."""

    def __init__(self, down: str) -> None:
        self.inner, self.down = httpx.AsyncHTTPTransport(), down.encode()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.down in request.content:
            return httpx.Response(503, json={"message": "down for maintenance"})
        return await self.inner.handle_async_request(request)


async def test_a_line_without_an_answer_stays_pending_with_the_lines_after_it(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """A request whose retries are spent leaves its line and the later ones pending (exit 8:
    file order is kept); the same push later sends them and ends resolved."""
    replica = f"sqlite:///{tmp_path}/replica.db"
    retry = RetryPolicy(attempts=2, initial=0.01, maximum=0.01)
    first = await push_text(
        live_hub, replica, MIXED, transport=_DownFor("SO-2"), retry=retry, wait_s=0
    )
    assert [r.state for r in first.results] == ["resolved", "pending", "pending", "pending"]
    assert first.results[1].reason is not None and "503" in first.results[1].reason
    assert first.exit_code == 8
    second = await push_text(live_hub, replica, MIXED)
    assert {r.state for r in second.results} == {"resolved"}
    assert set((await live_hub.creations()).values()) == {1}


async def test_two_copies_at_once_create_each_order_once(live_hub: LiveHub, tmp_path: Path) -> None:
    """Two pushes of one file running side by side on one replica: every order is created
    once, and both report every line resolved."""
    replica = f"sqlite:///{tmp_path}/replica.db"
    text = MIXED + lines_of(*({"op": "create", "order": order_payload(f"T-{i}")} for i in range(8)))
    first, second = await asyncio.gather(
        push_text(live_hub, replica, text), push_text(live_hub, replica, text)
    )
    assert {r.state for r in first.results + second.results} == {"resolved"}
    assert len(await live_hub.orders()) == 10
    assert set((await live_hub.creations()).values()) == {1}


HUBRISE_ORDER = {
    "ref": "R-1",
    "private_ref": "erp-1",
    "service_type_ref": "ground",
    "shipping_provider": "UPS",
    "customer": {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "address_1": "12 Analytical Row",
        "city": "London",
        "postal_code": "EC1A 1BB",
        "country": "GB",
    },
    "items": [{"sku_ref": "SKU-1", "price": "9.99 EUR", "quantity": "2"}],
}


async def test_hubrise_creates_updates_and_cancels_by_private_ref(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """HubRise: POST /location/orders, then PATCH by the order's private_ref (status, and
    `cancelled` for a cancel); every answer is final."""
    report = await push_text(
        live_hub,
        f"sqlite:///{tmp_path}/replica.db",
        lines_of(
            {"op": "create", "order": HUBRISE_ORDER},
            {"op": "update", "private_ref": "erp-1", "order": {"status": "received"}},
            {"op": "cancel", "private_ref": "erp-1"},
            {"op": "cancel", "private_ref": "erp-unknown"},
        ),
        dialect="hubrise",
    )
    assert states(report) == [
        ("erp-1", "resolved"),
        ("erp-1", "resolved"),
        ("erp-1", "resolved"),
        ("erp-unknown", "failed"),
    ]
    assert (await live_hub.orders())["R-1"]["status"] == "canceled"


# A JSON number a float cannot hold: it reaches the platform digit for digit.
EXACT = Decimal("123456789012345.000000000001")


def tradecloud_message(number: str, quantity: Any = "2", **header: Any) -> dict[str, Any]:
    return {
        "order": {
            "purchaseOrderNumber": number,
            "destination": {
                "names": ["Main warehouse"],
                "addressLines": ["Street 123"],
                "postalCode": "1234 AB",
                "city": "Rotterdam",
                "countryCodeIso2": "NL",
            },
            **header,
        },
        "lines": [
            {
                "position": "0001",
                "item": {"number": "SKU-1"},
                "deliverySchedule": [{"date": "2026-12-24", "quantity": quantity}],
                "prices": {"netPrice": {"priceInTransactionCurrency": {"value": "9.99"}}},
            }
        ],
    }


async def test_tradecloud_sends_the_buyers_order_message_for_each_change(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """Tradecloud: create and update by the order message (keyed by purchaseOrderNumber; a
    quantity sent as a JSON number arrives exactly), cancel by `indicators.cancelled`; the
    answer is final, the hub holds the result."""
    report = await push_text(
        live_hub,
        f"sqlite:///{tmp_path}/replica.db",
        lines_of(
            {"op": "create", "order": tradecloud_message("PO-1")},
            {"op": "create", "order": tradecloud_message("PO-2")},
            {"op": "update", "order": tradecloud_message("PO-1", quantity=EXACT)},
            {"op": "cancel", "purchaseOrderNumber": "PO-2"},
            {"op": "update", "order": tradecloud_message("PO-3", orderType="nonsense" * 40)},
        ),
        dialect="tradecloud",
    )
    assert [r.state for r in report.results] == ["resolved"] * 4 + ["failed"]
    assert report.results[4].reason is not None and "orderType" in report.results[4].reason
    orders = await live_hub.orders()
    assert orders["PO-1"]["line_items"][0]["quantity"] == "123456789012345.000000000001"
    assert orders["PO-2"]["status"] == "canceled"
    assert report.results[0].order_id == orders["PO-1"]["id"]


def test_a_line_that_is_no_change_is_refused_before_anything_is_sent() -> None:
    """Not JSON, an unknown op, an order without its identifier, a cancel naming none, an
    identifier too long to keep: PushFileError naming the line."""
    for text, expected in (
        (["{nope"], "line 1: not JSON"),
        (['{"op": "delete"}'], "op must be one of"),
        (['{"op": "create", "order": {}}', '{"op": "update"}'], "line 1: the order needs"),
        (['{"op": "cancel"}'], "cancel needs customer_identifier"),
        (lines_of({"op": "cancel", "customer_identifier": "x" * 201}), "longer than 200"),
    ):
        with pytest.raises(PushFileError, match=expected):
            parse_lines("masonhub", "masonhub", text)


def test_keys_are_stable_and_repeated_lines_get_their_own() -> None:
    """The same file gives the same keys; two identical lines get two keys; a line's own key
    is kept."""
    text = lines_of(
        {"op": "cancel", "customer_identifier": "A"},
        {"op": "cancel", "customer_identifier": "A"},
        {"op": "cancel", "customer_identifier": "B", "key": "erp-change-7"},
    )
    keys = [line.key for line in parse_lines("masonhub", "m", text)]
    assert keys == [line.key for line in parse_lines("masonhub", "m", text)]
    assert len(set(keys)) == 3 and keys[2] == "erp-change-7"
    assert keys[0] != parse_lines("masonhub", "other-source", text)[0].key


# -- SIGKILL at every step ---------------------------------------------------------------------


@pytest.fixture
def push_cli(live_hub: LiveHub, tmp_path: Path) -> Iterator[Any]:
    replica = tmp_path / "replica.db"
    (tmp_path / "agent.toml").write_text(
        f'[[sources]]\nname = "masonhub"\nbase_url = "{live_hub.root}/api/v1"\n'
        'token_env = "HUB_TOKEN"\n'
        f'[[sources]]\nname = "hubrise"\ndialect = "hubrise"\nbase_url = "{live_hub.root}/v1"\n'
        'token_env = "HUB_TOKEN"\n'
        f'[sink]\nurl = "sqlite:///{replica}"\n'
    )
    (tmp_path / "masonhub.jsonl").write_text("\n".join(MIXED) + "\n")
    (tmp_path / "hubrise.jsonl").write_text("\n".join(HUBRISE_LINES) + "\n")

    def run(
        kill_at: str | None = None, source: str = "masonhub"
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HUB_TOKEN": live_hub.token,
            "PYTHONPATH": os.pathsep.join(sys.path),
        }
        env.pop("ORDERSYNC_PUSH_KILL_AT", None)
        if kill_at:
            env["ORDERSYNC_PUSH_KILL_AT"] = kill_at
        return subprocess.run(
            [
                *ORDERSYNC_CLI,
                "agent",
                "push",
                "--source",
                source,
                f"{source}.jsonl",
                "--poll-interval",
                "0.05",
                "--wait",
                "20",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    yield run


@pytest.mark.parametrize(
    "kill_at",
    [
        "after_insert",
        "after_send:1",
        "after_send:3",
        "after_send:4",
        "after_answer:2",
        "during_poll",
    ],
)
async def test_sigkill_at_every_step_then_the_same_push_creates_each_order_once(
    live_hub: LiveHub, push_cli: Any, tmp_path: Path, kill_at: str
) -> None:
    """The push dies (SIGKILL) at `kill_at`; pushed again it ends exit 0 with every line
    resolved, each order created exactly once, the update and the cancel applied."""
    killed = push_cli(kill_at)
    assert killed.returncode == -9, killed.stderr
    again = push_cli()
    assert again.returncode == 0, again.stderr
    results = [orjson.loads(line) for line in again.stdout.splitlines()]
    assert [(r["ref"], r["state"]) for r in results] == [
        ("SO-1", "resolved"),
        ("SO-2", "resolved"),
        ("SO-1", "resolved"),
        ("SO-2", "resolved"),
    ]
    orders = await live_hub.orders()
    assert set(orders) == {"SO-1", "SO-2"}
    assert set((await live_hub.creations()).values()) == {1}
    assert orders["SO-1"]["shipping_provider"] == "DHL"
    assert orders["SO-2"]["status"] == "canceled"
    engine = create_engines(parse_database_url(f"sqlite:///{tmp_path}/replica.db"))[1]
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(push_outbox))).scalar() == 4
    await engine.dispose()


# -- echo ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["masonhub", "tradecloud"])
async def test_pushed_changes_come_back_marked_as_echoes(
    live_hub: LiveHub, tmp_path: Path, dialect: str
) -> None:
    """What the push wrote comes back through polling (and a webhook's fetch by id) marked
    `"echo": true` and counted; the warehouse's change to another order does not."""
    replica = f"sqlite:///{tmp_path}/replica.db"
    await push_text(
        live_hub,
        replica,
        lines_of(
            {"op": "create", "order": order_payload("E-1")},
            {"op": "create", "order": order_payload("E-2")},
            {"op": "update", "order": order_payload("E-1", shipping_provider="DHL")},
        ),
    )
    orders = await live_hub.orders()
    await live_hub.store.transition_order(
        live_hub.warehouse, live_hub.warehouse.account_id, orders["E-2"]["id"],
        OrderStatus.AT_WAREHOUSE,
    )  # fmt: skip
    root = {"masonhub": "/api/v1", "tradecloud": "/v2"}[dialect]
    config = SourceConfig(
        name=dialect,
        dialect=dialect,  # type: ignore[arg-type]
        base_url=live_hub.root + root,
        token_env="T",
        connection_name="erp",  # the push's connection (its token's name)
        streams=["orders"],
    )
    async with await open_engine(config, live_hub.token, replica) as agent:
        await agent.engine.run_cycle()
        assert agent.source.echoes_recognised == 1  # E-1 at its pushed update's version
        again = await fetch_entity(agent.source, dialect, "order", orders["E-1"]["id"], b"")
        foreign = await fetch_entity(agent.source, dialect, "order", orders["E-2"]["id"], b"")
        assert again is not None and again.echo and again.version == 2
        assert foreign is not None and not foreign.echo
        if dialect == "masonhub":  # a webhook carrying the order is marked as its fetch is
            body = orjson.dumps({"message_type": "orderEvent", "data": {"order": orders["E-1"]}})
            carried = carried_document(agent.source, dialect, "order", orders["E-1"]["id"], body)
            assert carried is not None and carried.echo
    engine = create_engines(parse_database_url(replica))[1]
    async with engine.connect() as conn:
        rows = await conn.execute(select(replica_orders.c.id, replica_orders.c.data))
        echoed = {i for i, data in rows if orjson.loads(data).get("echo")}
    await engine.dispose()
    assert echoed == {orders["E-1"]["id"]}


# -- resolution callbacks ----------------------------------------------------------------------


async def test_a_resolution_callback_settles_the_pushed_request_without_polling(
    tmp_path: Path, hub: Hub
) -> None:
    """A MasonHub `orderUpdateResolution` delivered to the running agent's receiver resolves
    the outbox row of the request `agent push` sent: the next push reports it resolved without
    asking the platform (polling stays the fallback)."""
    from tests.integration.agent.test_webhook_receiver import agent, signed_headers

    (order,) = await hub.create_orders(1)
    replica = f"sqlite:///{tmp_path}/replica.db"
    line = lines_of({"op": "update", "order": order_payload(order.customer_identifier)})
    source = SourceConfig(
        name="masonhub", base_url=BASE_URLS["masonhub"], token_env="T", connection_name="agent"
    )
    pushed = await push(
        source, hub.token, replica, parse_lines("masonhub", "masonhub", line),
        wait_s=0, transport=httpx.ASGITransport(app=hub.app),
    )  # fmt: skip
    (accepted,) = pushed.results
    assert accepted.state == "accepted" and accepted.request_id is not None
    requests = hub.app.state.requests
    hub.clock.advance(10_000)
    assert await requests.resolve_due(everything=True) == 1
    data = await requests.resolution("orderUpdateResolution", accepted.request_id)
    body = orjson.dumps(
        {"callback_url": "http://agent/webhooks/masonhub", "message_type":
         "orderUpdateResolution", "message_id": "m-1", "data": data}
    )  # fmt: skip
    async with agent(tmp_path, hub, sink_url=replica) as (runtime, port):
        answer = await port.post("/webhooks/masonhub", content=body, headers=signed_headers(body))
        assert answer.status_code == 204
        await runtime.engines["masonhub"].sync_feed(runtime.inbox_feeds["masonhub"])
    seen: list[httpx.Request] = []
    again = await push(
        source, hub.token, replica, parse_lines("masonhub", "masonhub", line),
        wait_s=0, transport=_Spy(httpx.ASGITransport(app=hub.app), seen),
    )  # fmt: skip
    assert [r.state for r in again.results] == ["resolved"]
    assert seen == []


HUBRISE_LINES = lines_of(
    {"op": "create", "order": HUBRISE_ORDER},
    {"op": "cancel", "private_ref": "erp-1"},
)


@pytest.mark.parametrize("kill_at", ["after_send:1", "after_send:2"])
async def test_sigkill_after_a_hubrise_request_is_sent_then_the_same_push_does_it_once(
    live_hub: LiveHub, push_cli: Any, kill_at: str
) -> None:
    """HubRise: the create (its private_ref is unique) or the cancel went out and the push
    died before recording the answer; pushed again, the replayed answer resolves the line
    instead of a refusal, and the order exists once, cancelled."""
    assert push_cli(kill_at, source="hubrise").returncode == -9
    again = push_cli(source="hubrise")
    assert again.returncode == 0, again.stderr
    results = [orjson.loads(line) for line in again.stdout.splitlines()]
    assert [r["state"] for r in results] == ["resolved", "resolved"]
    assert (await live_hub.orders())["R-1"]["status"] == "canceled"
    assert set((await live_hub.creations()).values()) == {1}
