"""Webhooks from the outbox, black box: a real hub on uvicorn, real receivers on 127.0.0.1.

Delivery rounds are driven by the test (`Dispatcher.run_once` on a store of its own, the hub's
own background delivery off) and the retry schedule is compressed to zero waits: every
assertion counts rounds and requests, never time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.hub.webhooks import Dispatcher
from ordersync.store.requests import RequestStore
from ordersync.store.store import Store
from ordersync.store.webhooks import WebhookStore
from tests.support import order_payload, serve_in_thread

FAST = (0.0,) * 7  # the retry schedule, compressed


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    method: str = "POST"
    target: str = ""  # path and query

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Receiver:
    """An HTTP endpoint that records every request and answers from a script (then 200)."""

    script: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[tuple[Received, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode()
        target = scope["path"] + (f"?{query}" if query else "")
        with self.lock:
            step = self.script.pop(0) if self.script else 200
            status, extra = step if isinstance(step, tuple) else (step, {})
            self.requests.append((Received(headers, body, scope["method"], target), status))
        answer_headers = [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": answer_headers})
        await send({"type": "http.response.body", "body": b"{}"})

    def delivered(self) -> list[Received]:
        with self.lock:
            return [r for r, status in self.requests if 200 <= status < 300]


@contextlib.contextmanager
def receiver(*script: int | tuple[int, dict[str, str]]) -> Iterator[Receiver]:
    endpoint = Receiver(list(script))
    with serve_in_thread(endpoint) as base:
        endpoint.url = f"{base}/hook"
        yield endpoint


@dataclass
class Hub:
    base_url: str
    db_url: str


@pytest.fixture
def hub(hub_db_url: str) -> Iterator[Hub]:
    async def migrate() -> None:
        store = await Store.open(hub_db_url)
        await store.close()

    asyncio.run(migrate())
    store = Store.connect(hub_db_url)
    settings = HubSettings(db_url=hub_db_url, webhook_delivery=False)
    with serve_in_thread(create_app(settings, store)) as base_url:
        yield Hub(base_url, hub_db_url)


def tokens(hub: Hub, *names: str) -> list[str]:
    account = f"acct-{uuid.uuid4().hex[:8]}"

    async def make() -> list[str]:
        store = await Store.open(hub.db_url)
        try:
            return [await store.create_token(account, name) for name in names]
        finally:
            await store.close()

    return asyncio.run(make())


def drive(hub: Hub, until: Callable[[], bool], *, workers: int = 1, rounds: int = 200) -> list[int]:
    """Delivery rounds (by `workers` dispatchers at once, each on a store of its own) until
    `until()` holds; the attempts each worker made."""

    async def main() -> list[int]:
        stores = [await Store.open(hub.db_url) for _ in range(workers)]
        sent = [0] * workers
        try:
            dispatchers = [Dispatcher(s, WebhookStore(s, schedule_s=FAST)) for s in stores]
            for _ in range(rounds):
                if until():
                    return sent
                counts = await asyncio.gather(*(d.run_once() for d in dispatchers))
                sent = [a + b for a, b in zip(sent, counts, strict=True)]
                if sum(counts) == 0:
                    await asyncio.sleep(0.02)  # events above the frontier settle
            raise AssertionError("the receiver never got what was expected")
        finally:
            for s in stores:
                await s.close()

    return asyncio.run(main())


def verify(secret: str, received: Received) -> int:
    """How many of the `webhook-signature` entries verify with `secret` (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id = received.headers["webhook-id"]
    ts = received.headers["webhook-timestamp"]
    signed = f"{msg_id}.{ts}.".encode() + received.body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return sum(
        1
        for part in received.headers["webhook-signature"].split(" ")
        if part.split(",", 1) == ["v1", expected]
    )


def mason(hub: Hub, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=hub.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def hubrise(hub: Hub, token: str) -> httpx.Client:
    return httpx.Client(base_url=hub.base_url, headers={"X-Access-Token": token}, timeout=30)


def test_masonhub_callback_is_signed_and_rotation_signs_twice(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver() as watching, receiver() as own, mason(hub, erp) as m, mason(hub, watcher) as w:
        made = w.post(
            "/api/v1/callbacks",
            json=[{"url": watching.url, "message_type": "orderEvent", "token": "s3cret"}],
        )
        assert made.status_code == 200, made.text
        (callback,) = made.json()
        secret = callback["secret"]
        assert secret.startswith("whsec_")
        # The erp's own callback: it never gets the changes the erp made.
        assert m.post("/api/v1/callbacks", json=[{"url": own.url, "message_type": "orderEvent"}])
        listed = w.get("/api/v1/callbacks", params={"message_type": "orderEvent"}).json()
        assert [(c["id"], c["url"]) for c in listed] == [(callback["id"], watching.url)]
        assert "secret" not in listed[0]

        created = m.post("/api/v1/orders", json=[order_payload("W-1")])
        order_id = created.json()["data"][0]["id"]
        drive(hub, lambda: len(watching.delivered()) == 1)
        (first,) = watching.delivered()
        event = m.get("/api/v1/events", params={"after": 0}).json()["data"][0]
        assert first.headers["webhook-id"] == str(event["event_id"])
        assert verify(secret, first) == 1
        assert verify("whsec_" + base64.b64encode(b"x" * 24).decode(), first) == 0
        assert first.headers["authorization"] == "Bearer s3cret"
        envelope = first.json
        assert envelope["callback_url"] == watching.url
        assert envelope["message_type"] == "orderEvent"
        uuid.UUID(envelope["message_id"])
        assert envelope["data"]["order_id"] == order_id
        assert envelope["data"]["customer_identifier"] == "W-1"
        assert envelope["data"]["status"] == "open"

        rotated = w.post(f"/api/v1/callbacks/{callback['id']}/secret")
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        with hubrise(hub, erp) as h:
            assert h.patch(f"/v1/location/orders/{order_id}", json={"status": "received"})
        drive(hub, lambda: len(watching.delivered()) == 2)
        second = watching.delivered()[1]
        assert verify(secret, second) == 1 and verify(new_secret, second) == 1
        assert len(second.headers["webhook-signature"].split(" ")) == 2
        assert second.json["data"]["status"] == "atWarehouse"
        assert own.requests == []

        attempts = w.get(f"/api/v1/callbacks/{callback['id']}/attempts").json()["data"]
        assert [(a["status_code"], a["outcome"]) for a in attempts] == [(200, "delivered")] * 2
        assert w.delete("/api/v1/callbacks", params={"id": callback["id"]}).json() == {"deleted": 1}
        assert w.get("/api/v1/callbacks").json() == []


def test_bad_callback_urls_are_refused(hub: Hub) -> None:
    (erp,) = tokens(hub, "erp")
    with mason(hub, erp) as m, hubrise(hub, erp) as h:
        for url in ("ftp://127.0.0.1/x", "not a url", "http://user:pw@127.0.0.1/x"):
            answer = m.post("/api/v1/callbacks", json=[{"url": url, "message_type": "orderEvent"}])
            assert answer.status_code == 422, answer.text
            assert answer.json()["error_type"]
        wrong = m.post(
            "/api/v1/callbacks", json=[{"url": "http://127.0.0.1/", "message_type": "x"}]
        )
        assert wrong.status_code == 422
        refused = h.post(
            "/v1/callback", json={"url": "gopher://x", "events": {"order": ["create"]}}
        )
        assert refused.status_code == 422
        assert m.get("/api/v1/callbacks").json() == []


def test_failing_receiver_gets_every_event_once_in_order_per_order(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver(500, 503, 502, 500) as endpoint, mason(hub, watcher) as w:
        made = w.post(
            "/api/v1/callbacks", json=[{"url": endpoint.url, "message_type": "orderEvent"}]
        )
        sub_id = made.json()[0]["id"]
        with mason(hub, erp) as m, hubrise(hub, erp) as h:
            created = m.post("/api/v1/orders", json=[order_payload(f"F-{i}") for i in range(3)])
            ids = [d["id"] for d in created.json()["data"]]
            # Materialise after each write, so that no version is coalesced into a later one.
            _materialise(hub)
            for status in ("received", "in_preparation"):
                for order_id in ids:
                    patched = h.patch(f"/v1/location/orders/{order_id}", json={"status": status})
                    assert patched.status_code == 200
                    _materialise(hub)
        drive(hub, lambda: len(endpoint.delivered()) >= 9)
        got = [r.json["data"] for r in endpoint.delivered()]
        assert len(got) == 9
        assert len({r.headers["webhook-id"] for r in endpoint.delivered()}) == 9
        for order_id in ids:
            versions = [d["version"] for d in got if d["order_id"] == order_id]
            assert versions == [1, 2, 3]
        attempts = w.get(f"/api/v1/callbacks/{sub_id}/attempts").json()["data"]
        codes = sorted(a["status_code"] for a in attempts)
        assert codes == [200] * 9 + [500, 500, 502, 503]
        # Replay one event: it is delivered again with the same webhook-id.
        replayed_id = endpoint.delivered()[0].headers["webhook-id"]
        again = w.post(f"/api/v1/callbacks/{sub_id}/replay", json={"event_id": int(replayed_id)})
        assert again.json() == {"queued": 1}
        drive(hub, lambda: len(endpoint.delivered()) == 10)
        assert endpoint.delivered()[-1].headers["webhook-id"] == replayed_id


def _materialise(hub: Hub) -> None:
    async def main() -> None:
        store = await Store.open(hub.db_url)
        try:
            dispatcher = Dispatcher(store, WebhookStore(store, schedule_s=FAST))
            for _ in range(100):
                if await dispatcher.webhooks.materialise(dispatcher.render):
                    return
                await asyncio.sleep(0.02)  # the write is above the frontier a moment more
        finally:
            await store.close()

    asyncio.run(main())


def test_410_disables_the_subscription_and_keeps_its_queue(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver(410) as endpoint, mason(hub, watcher) as w, mason(hub, erp) as m:
        made = w.post(
            "/api/v1/callbacks", json=[{"url": endpoint.url, "message_type": "orderEvent"}]
        )
        sub_id = made.json()[0]["id"]
        m.post("/api/v1/orders", json=[order_payload("G-1")])
        drive(hub, lambda: len(endpoint.requests) == 1)
        (listed,) = w.get("/api/v1/callbacks").json()
        assert listed["status"] == "disabled" and "410" in listed["disabled_reason"]
        m.post("/api/v1/orders", json=[order_payload("G-2")])
        sent = _rounds(hub, 5)
        assert sent == 0 and len(endpoint.requests) == 1
        assert w.post(f"/api/v1/callbacks/{sub_id}/enable").json()["status"] == "active"
        drive(hub, lambda: len(endpoint.delivered()) == 2)
        # Two orders: one round may send both at once, in either order (order is per entity).
        assert sorted(r.json["data"]["customer_identifier"] for r in endpoint.delivered()) == [
            "G-1",
            "G-2",
        ]


def _rounds(hub: Hub, n: int) -> int:
    async def main() -> int:
        store = await Store.open(hub.db_url)
        try:
            dispatcher = Dispatcher(store, WebhookStore(store, schedule_s=FAST))
            total = 0
            for _ in range(n):
                total += await dispatcher.run_once()
                await asyncio.sleep(0.02)
            return total
        finally:
            await store.close()

    return asyncio.run(main())


def test_hubrise_active_callback_and_tradecloud_webhook_bodies(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver() as hr, receiver() as tc, hubrise(hub, watcher) as h, mason(hub, erp) as m:
        made = h.post("/v1/callback", json={"url": hr.url, "events": {"order": ["create"]}})
        assert made.status_code == 200, made.text
        assert made.json()["url"] == hr.url
        hr_secret = made.json()["secret"]
        assert h.get("/v1/callback").json()["url"] == hr.url
        with httpx.Client(
            base_url=hub.base_url, headers={"Authorization": f"Bearer {watcher}"}
        ) as t:
            hook = t.post(
                "/v2/webhooks",
                json={"url": tc.url, "auth": {"type": "basic", "username": "u", "password": "p"}},
            )
            assert hook.status_code == 201, hook.text
            tc_secret = hook.json()["secret"]
        created = m.post("/api/v1/orders", json=[order_payload("H-1")])
        order_id = created.json()["data"][0]["id"]
        drive(hub, lambda: len(hr.delivered()) == 1 and len(tc.delivered()) == 1)
        (event,) = hr.delivered()
        digest = hmac.new(
            base64.b64decode(hr_secret.removeprefix("whsec_")), event.body, hashlib.sha256
        ).hexdigest()
        assert event.headers["x-hubrise-hmac-sha256"] == digest
        assert verify(hr_secret, event) == 1
        assert event.json["id"] == event.headers["webhook-id"]
        assert (event.json["resource_type"], event.json["event_type"]) == ("order", "create")
        assert event.json["new_state"]["id"] == order_id
        # Delivered: acknowledged, so no longer in the passive list.
        assert h.get("/v1/callback/events").json() == []
        (delivery,) = tc.delivered()
        assert verify(tc_secret, delivery) == 1
        assert delivery.headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
        assert delivery.json["eventName"] == "OrderIssuedByBuyer"
        assert delivery.json["meta"]["eventId"] == int(delivery.headers["webhook-id"])
        assert "orderEvent" in delivery.json
        # Only "create" was asked of HubRise: an update goes to Tradecloud only.
        with hubrise(hub, erp) as e:
            assert e.patch(f"/v1/location/orders/{order_id}", json={"status": "received"})
        drive(hub, lambda: len(tc.delivered()) == 2)
        assert len(hr.delivered()) == 1


@pytest.mark.postgres
def test_two_workers_on_postgresql_never_deliver_an_event_twice(hub: Hub) -> None:
    if not hub.db_url.startswith("postgresql"):
        pytest.skip("several delivery workers share work on PostgreSQL")
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver() as endpoint, mason(hub, watcher) as w, mason(hub, erp) as m:
        w.post("/api/v1/callbacks", json=[{"url": endpoint.url, "message_type": "orderEvent"}])
        for batch in range(4):
            payload = [order_payload(f"P-{batch}-{i}") for i in range(25)]
            assert m.post("/api/v1/orders", json=payload).status_code == 201
        sent = drive(hub, lambda: len(endpoint.delivered()) >= 100, workers=2)
        ids = [r.headers["webhook-id"] for r in endpoint.delivered()]
        assert len(ids) == 100 and len(set(ids)) == 100
        assert sum(sent) == 100


def test_an_endpoint_failing_for_5_days_is_disabled(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver(*[500] * 50) as endpoint, mason(hub, watcher) as w, mason(hub, erp) as m:
        w.post("/api/v1/callbacks", json=[{"url": endpoint.url, "message_type": "orderEvent"}])
        m.post("/api/v1/orders", json=[order_payload("D-1")])
        _materialise(hub)
        day = 86_400_000
        now = [int(time.time() * 1000)]

        async def main() -> list[str]:
            store = await Store.open(hub.db_url, clock=lambda: now[0])
            try:
                dispatcher = Dispatcher(store, WebhookStore(store, schedule_s=(3600.0,) * 7))
                statuses = []
                for _ in range(7):  # one attempt a day (the schedule's hour has passed)
                    await dispatcher.run_once()
                    (listed,) = w.get("/api/v1/callbacks").json()
                    statuses.append(listed["status"])
                    now[0] += day
                return statuses
            finally:
                await store.close()

        statuses = asyncio.run(main())
        assert statuses == ["active"] * 5 + ["disabled"] * 2
        assert len(endpoint.requests) == 6
        (listed,) = w.get("/api/v1/callbacks").json()
        assert "5 days" in listed["disabled_reason"]


def test_retry_after_is_honoured_and_tradecloud_4xx_is_not_retried(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    throttled = (429, {"Retry-After": "3600"})
    with receiver(throttled) as mh, receiver(400) as tc, mason(hub, watcher) as w:
        w.post("/api/v1/callbacks", json=[{"url": mh.url, "message_type": "orderEvent"}])
        with httpx.Client(
            base_url=hub.base_url, headers={"Authorization": f"Bearer {watcher}"}
        ) as t:
            assert t.post("/v2/webhooks", json={"url": tc.url}).status_code == 201
        with mason(hub, erp) as m, hubrise(hub, erp) as h:
            order_id = m.post("/api/v1/orders", json=[order_payload("R-1")]).json()["data"][0]["id"]
            _materialise(hub)
            assert h.patch(f"/v1/location/orders/{order_id}", json={"status": "received"})
            _materialise(hub)
        now = [int(time.time() * 1000)]

        async def main() -> None:
            store = await Store.open(hub.db_url, clock=lambda: now[0])
            try:
                dispatcher = Dispatcher(store, WebhookStore(store, schedule_s=FAST))
                for _ in range(3):
                    await dispatcher.run_once()
                # MasonHub: one 429, then nothing for the hour Retry-After asked for.
                assert [status for _, status in mh.requests] == [429]
                # Tradecloud: the 400 is not retried; the order's next event goes on.
                assert [status for _, status in tc.requests] == [400, 200]
                now[0] += 3_601_000
                for _ in range(3):
                    await dispatcher.run_once()
            finally:
                await store.close()

        asyncio.run(main())
        assert [status for _, status in mh.requests] == [429, 200, 200]
        versions = [r.json["data"]["version"] for r in mh.delivered()]
        assert versions == [1, 2]
        (webhook,) = w.get("/api/v1/callbacks").json()
        attempts = w.get(f"/api/v1/callbacks/{webhook['id']}/attempts").json()["data"]
        assert [(a["status_code"], a["outcome"]) for a in attempts][-1] == (429, "retry")


def test_a_worker_that_dies_after_claiming_leaves_the_event_to_another(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver() as endpoint, mason(hub, watcher) as w, mason(hub, erp) as m:
        w.post("/api/v1/callbacks", json=[{"url": endpoint.url, "message_type": "orderEvent"}])
        m.post("/api/v1/orders", json=[order_payload("C-1")])
        _materialise(hub)
        now = [int(time.time() * 1000)]

        async def main() -> tuple[int, int, int]:
            store = await Store.open(hub.db_url, clock=lambda: now[0])
            try:
                dead = WebhookStore(store, schedule_s=FAST)
                (claimed,) = await dead.claim(10)  # ... and the worker dies before sending
                survivor = Dispatcher(store, WebhookStore(store, schedule_s=FAST))
                during_lease = await survivor.run_once()
                now[0] += dead.lease_ms + 1
                after_lease = await survivor.run_once()
                # The dead worker's late answer cannot undo what the survivor recorded.
                late = await dead.settle(claimed, outcome="retry", status_code=None, latency_ms=0)
                return during_lease, after_lease, len(late)
            finally:
                await store.close()

        during_lease, after_lease, _ = asyncio.run(main())
        assert (during_lease, after_lease) == (0, 1)
        assert len(endpoint.delivered()) == 1
        (sub,) = w.get("/api/v1/callbacks").json()
        attempts = w.get(f"/api/v1/callbacks/{sub['id']}/attempts").json()["data"]
        assert [a["outcome"] for a in attempts] == ["stale", "delivered"]

        async def prune() -> int:
            # Past the retention, settled rows and attempts go (one pruning pass).
            store = await Store.open(hub.db_url, clock=lambda: now[0] + 31 * 86_400_000)
            try:
                return await WebhookStore(store).prune(30 * 86_400_000)
            finally:
                await store.close()

        assert asyncio.run(prune()) == 3  # the delivery row and its two attempts
        assert w.get(f"/api/v1/callbacks/{sub['id']}/attempts").json()["data"] == []


def test_masonhub_update_resolution_is_delivered_to_its_subscriber(hub: Hub) -> None:
    """An asynchronous update's resolution (a "request" row of the event log) reaches an
    orderUpdateResolution callback with the request's id and outcome, signed like the rest;
    an orderEvent callback does not get it."""
    (erp,) = tokens(hub, "erp")
    with receiver() as resolutions, receiver() as events, mason(hub, erp) as m:
        made = m.post(
            "/api/v1/callbacks",
            json=[
                {"url": resolutions.url, "message_type": "orderUpdateResolution"},
                {"url": events.url, "message_type": "orderEvent"},
            ],
        )
        assert made.status_code == 200, made.text
        secret = made.json()[0]["secret"]
        assert m.post("/api/v1/orders", json=[order_payload("R-1")]).status_code == 201
        submitted = m.post(
            "/api/v1/order_update_requests", json=[order_payload("R-1", priority=9)]
        ).json()
        request_id = submitted["results"][0]["id"]

        async def resolve() -> None:
            store = await Store.open(hub.db_url)
            try:
                await RequestStore(store).resolve_due(everything=True)
            finally:
                await store.close()

        asyncio.run(resolve())
        drive(hub, lambda: len(resolutions.delivered()) == 1)
    (delivered,) = resolutions.delivered()
    envelope = delivered.json
    assert envelope["message_type"] == "orderUpdateResolution"
    assert envelope["data"]["id"] == request_id and envelope["data"]["status"] == "success"
    assert verify(secret, delivered) == 1
    assert all(r.json["message_type"] == "orderEvent" for r in events.delivered())


def tradecloud(hub: Hub, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=hub.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _positions(received: Received) -> list[str]:
    return [line["buyerLine"]["position"] for line in received.json["orderEvent"]["lines"]]


def test_tradecloud_webhook_modes_post_put_and_get(hub: Hub) -> None:
    """POST (default) and the legacy PUT carry the order event with only the lines affected;
    the legacy GET calls `{url}?orderId=` with no body and the receiver fetches the order."""
    from tests.integration.test_tradecloud_orders import PATH, line, message

    erp, watcher = tokens(hub, "erp", "watcher")
    with (
        receiver() as posted,
        receiver() as put,
        receiver() as got,
        tradecloud(hub, watcher) as w,
        tradecloud(hub, erp) as e,
    ):
        secrets = {}
        for endpoint, mode in ((posted, None), (put, "put"), (got, "get")):
            body: dict[str, Any] = {"url": endpoint.url + "?tenant=7"}
            if mode is not None:
                body["mode"] = mode
            made = w.post("/v2/webhooks", json=body)
            assert made.status_code == 201, made.text
            assert made.json()["mode"] == (mode or "post")
            secrets[mode] = made.json()["secret"]
        assert sorted(h["mode"] for h in w.get("/v2/webhooks").json()) == ["get", "post", "put"]
        two = message("PO-W", line("0001", "SKU-1", "1"), line("0002", "SKU-2", "1"))
        order_id = e.post(PATH, json=two).json()["order"]["id"]
        _materialise(hub)
        assert e.post(PATH, json=message("PO-W", line("0002", "SKU-2", "5"))).status_code == 200
        drive(
            hub,
            lambda: (
                len(posted.delivered()) == 2
                and len(put.delivered()) == 2
                and len(got.delivered()) == 2
            ),
        )
        created, updated = posted.delivered()
        assert [r.method for r in posted.delivered()] == ["POST", "POST"]
        assert created.json["eventName"] == "OrderIssuedByBuyer"
        assert _positions(created) == ["0001", "0002"]
        # Only the line the update changed.
        assert _positions(updated) == ["0002"]
        assert updated.json["orderEvent"]["orderId"] == order_id
        assert updated.json["orderEvent"]["lines"][0]["buyerLine"]["quantity"] == "5"
        assert verify(secrets[None], updated) == 1
        assert [r.method for r in put.delivered()] == ["PUT", "PUT"]
        assert [_positions(r) for r in put.delivered()] == [["0001", "0002"], ["0002"]]
        assert verify(secrets["put"], put.delivered()[1]) == 1
        for fetched in got.delivered():
            assert fetched.method == "GET" and fetched.body == b""
            assert fetched.target == f"/hook?tenant=7&orderId={order_id}"
            assert verify(secrets["get"], fetched) == 1
        # The GET receiver fetches the order: every line, as it now stands.
        order = w.get(f"/v2/order/{order_id}").json()
        assert [ln["buyerLine"]["quantity"] for ln in order["lines"]] == ["1", "5"]
        assert w.post("/v2/webhooks", json={"url": posted.url, "mode": "patch"}).status_code == 422


def test_a_coalesced_tradecloud_event_carries_every_line_changed_since_the_last(hub: Hub) -> None:
    """Two updates queued as one (the first superseded before the worker read it): the
    delivery carries the lines both changed, not only the last one's."""
    from tests.integration.test_tradecloud_orders import PATH, line, message

    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver() as endpoint, tradecloud(hub, watcher) as w, tradecloud(hub, erp) as e:
        assert w.post("/v2/webhooks", json={"url": endpoint.url}).status_code == 201
        three = [line(f"000{i}", f"SKU-{i}", "1") for i in (1, 2, 3)]
        e.post(PATH, json=message("PO-C", *three))
        _materialise(hub)
        e.post(PATH, json=message("PO-C", line("0001", "SKU-1", "2")))
        e.post(PATH, json=message("PO-C", line("0002", "SKU-2", "2")))
        drive(hub, lambda: len(endpoint.delivered()) == 2)
    first, coalesced = endpoint.delivered()
    assert _positions(first) == ["0001", "0002", "0003"]
    assert coalesced.json["meta"]["version"] == 3
    assert _positions(coalesced) == ["0001", "0002"]


def test_held_callbacks_queue_and_go_out_in_order_when_released(hub: Hub) -> None:
    """While a connection holds orderEvent, its callbacks queue (nothing is sent, nothing
    dropped, retries do not run out) and other connections' callbacks go on; releasing the
    hold sends the queue, every event once, in event order."""
    erp, watcher, other = tokens(hub, "erp", "watcher", "other")
    with (
        receiver() as held,
        receiver() as free,
        mason(hub, watcher) as w,
        mason(hub, other) as o,
        mason(hub, erp) as m,
        hubrise(hub, erp) as h,
    ):
        made = w.post("/api/v1/callbacks", json=[{"url": held.url, "message_type": "orderEvent"}])
        sub_id = made.json()[0]["id"]
        assert o.post("/api/v1/callbacks", json=[{"url": free.url, "message_type": "orderEvent"}])
        holding = w.post("/api/v1/callback_holds", json=["orderEvent"])
        assert holding.status_code == 200, holding.text
        assert [x["message_type"] for x in holding.json()] == ["orderEvent"]
        assert [x["message_type"] for x in w.get("/api/v1/callback_holds").json()] == ["orderEvent"]
        assert o.get("/api/v1/callback_holds").json() == []  # holds are per connection
        ids = [
            d["id"]
            for d in m.post(
                "/api/v1/orders", json=[order_payload(f"Q-{i}") for i in range(3)]
            ).json()["data"]
        ]
        _materialise(hub)
        for order_id in ids:
            assert h.patch(f"/v1/location/orders/{order_id}", json={"status": "received"})
            _materialise(hub)
        drive(hub, lambda: len(free.delivered()) == 6)
        assert _rounds(hub, 5) == 0
        assert held.requests == []
        queued = asyncio.run(_deliveries(hub, sub_id))
        assert len(queued) == 6 and {status for _, status, _ in queued} == {"pending"}

        released = w.request("DELETE", "/api/v1/callback_holds", json=["orderEvent"])
        assert released.status_code == 200 and released.json() == []
        _drive_one_at_a_time(hub, lambda: len(held.delivered()) == 6)
    got = [int(r.headers["webhook-id"]) for r in held.delivered()]
    assert got == sorted(got) == [event_id for event_id, _, _ in queued]
    for order_id in ids:
        versions = [
            r.json["data"]["version"]
            for r in held.delivered()
            if r.json["data"]["order_id"] == order_id
        ]
        assert versions == [1, 2]


def test_callback_holds_refuse_unknown_types_and_replay_with_a_key(hub: Hub) -> None:
    (watcher,) = tokens(hub, "watcher")
    with mason(hub, watcher) as w:
        bad = w.post("/api/v1/callback_holds", json=["orderEvent", "nope"])
        assert bad.status_code == 422
        assert [e["field"] for e in bad.json()["errors"]] == ["1"]
        assert w.post("/api/v1/callback_holds", json=[]).status_code == 422
        key = {"Idempotency-Key": "hold-1"}
        first = w.post("/api/v1/callback_holds", json=["orderUpdateResolution"], headers=key)
        again = w.post("/api/v1/callback_holds", json=["orderUpdateResolution"], headers=key)
        assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
        w.post("/api/v1/callback_holds", json=["orderEvent"])
        # DELETE without a body releases every hold.
        assert w.delete("/api/v1/callback_holds").json() == []


async def _deliveries(hub: Hub, sub_id: str) -> list[tuple[int, str, int]]:
    store = await Store.open(hub.db_url)
    try:
        return await WebhookStore(store).deliveries(sub_id)
    finally:
        await store.close()


def _drive_one_at_a_time(hub: Hub, until: Callable[[], bool]) -> None:
    """Delivery rounds that claim one delivery each, so arrival order is claim order."""

    async def main() -> None:
        store = await Store.open(hub.db_url)
        try:
            dispatcher = Dispatcher(store, WebhookStore(store, schedule_s=FAST), batch=1)
            for _ in range(200):
                if until():
                    return
                if await dispatcher.run_once() == 0:
                    await asyncio.sleep(0.02)
            raise AssertionError("the receiver never got what was expected")
        finally:
            await store.close()

    asyncio.run(main())
