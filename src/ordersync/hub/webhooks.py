"""Webhook delivery: each hub worker's background task sends the queued events out.

A round (`Dispatcher.run_once`): materialise new events of the log into the queue (see
`ordersync.store.webhooks`), claim the due deliveries (the oldest pending one per entity),
POST them concurrently with httpx and settle each outcome. Every request carries the Standard
Webhooks headers

    webhook-id: <the event id, as in polling>
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"> [one per secret]

keyed with the subscription's `whsec_` secrets (two during a rotation), and the dialect's own:
HubRise `X-HubRise-Hmac-SHA256` (hex HMAC-SHA256 of the raw body with the newest secret's
key), the MasonHub callback's static `token` as `Authorization: Bearer <token>`, a Tradecloud
webhook's Basic or Bearer credentials as `Authorization`.

Acknowledged: any 2xx (HubRise: any 200-499, as HubRise documents). 410 disables the
subscription (its queue is kept). Retried with the jittered schedule, no sooner than a
`Retry-After`: every other answer and network error, except Tradecloud's 4xx and 500, which
Tradecloud does not retry (the event is marked failed; later events of the order go on).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import orjson
import structlog

from ordersync.domain import format_rfc3339, parse_rfc3339_ms
from ordersync.domain.inventory_item import InventoryItem
from ordersync.errors import NotFound
from ordersync.hub.faults import FaultSettings
from ordersync.store.events import LogEvent
from ordersync.store.hubrise import Event, HubRiseStore
from ordersync.store.requests import RequestStore
from ordersync.store.store import Principal, Store
from ordersync.store.webhooks import (
    Claim,
    Result,
    Subscription,
    WebhookStore,
    previous_delivery_time,
    secret_key,
)
from ordersync.wire.hubrise import render_event
from ordersync.wire.inventory import render_sku_snapshot
from ordersync.wire.tradecloud import render_order, render_shipment

log = structlog.get_logger("ordersync.hub")

CLAIM_BATCH = 50
MIN_IDLE_S = 0.02  # the first nap of an idle dispatcher; doubled up to the settings' interval
IN_FLIGHT = 2  # rounds whose POSTs may be out at once (4 measured slower on PostgreSQL)
TIMEOUT_S = 15.0
MESSAGE_NAMESPACE = uuid.UUID("6f1c2a52-8d1e-4c61-9a3c-0d6f3c1b7e10")

# Which MasonHub message type an event is, by its kind; resolutions come from the asynchronous
# update and cancel requests (their events' kinds).
MASONHUB_TYPES = {
    "order": "orderEvent",
    "shipment": "orderEvent",
    "inventory": "skuInventoryChange",
}
# A request resolution (a "request" row of the log, see `ordersync.store.requests`) is its
# event type: orderUpdateResolution or orderCancelResolution.
RESOLUTION_TYPES = ("orderUpdateResolution", "orderCancelResolution")
TRADECLOUD_NAMES = {
    "order.created": "OrderIssuedByBuyer",
    "shipment.created": "ShipmentIssuedBySupplier",
}


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64>` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def hubrise_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret_key(secret), body, hashlib.sha256).hexdigest()


def message_id(sub: Subscription, event_id: int) -> str:
    """MasonHub's `message_id` (a UUID): the same for every retry of the same event."""
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{sub.id}:{event_id}"))


def request_for(claim: Claim) -> tuple[str, str, bytes]:
    """The method, URL and body of a delivery: POST the body, except Tradecloud's legacy
    modes: PUT the body, or GET the URL with `?orderId=` and no body."""
    sub = claim.subscription
    if sub.dialect != "tradecloud":
        return "POST", sub.url, claim.body
    mode = tradecloud_mode(sub)
    if mode == "get":
        order_id = str(orjson.loads(claim.body)["orderId"])
        parts = urlsplit(sub.url)
        query = "&".join(q for q in (parts.query, urlencode({"orderId": order_id})) if q)
        return "GET", urlunsplit(parts._replace(query=query)), b""
    return ("PUT" if mode == "put" else "POST"), sub.url, claim.body


def headers_for(claim: Claim, timestamp: int, body: bytes | None = None) -> dict[str, str]:
    """The headers of a delivery of `body` (default: the claim's), signed over that body."""
    sub = claim.subscription
    body = claim.body if body is None else body
    msg_id = str(claim.event_id)
    headers = {
        "user-agent": "ordersync-hub-webhooks",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(claim.secrets, msg_id, timestamp, body),
    }
    if body:
        headers["content-type"] = "application/json"
    if sub.dialect == "hubrise" and claim.secrets:
        headers["X-HubRise-Hmac-SHA256"] = hubrise_hmac(claim.secrets[0], body)
    auth = sub.auth or {}
    if auth.get("scheme") in ("token", "bearer") and auth.get("token"):
        headers["authorization"] = f"Bearer {auth['token']}"
    elif auth.get("scheme") == "basic":
        raw = f"{auth.get('username', '')}:{auth.get('password', '')}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(raw).decode()
    return headers


class Renderer:
    """Each dialect's body for one event; None when the subscriber does not want it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.hubrise = HubRiseStore(store)
        self.requests = RequestStore(store)

    async def __call__(self, sub: Subscription, event: LogEvent) -> bytes | None:
        if event.kind == "request":
            return await self.resolution(sub, event)
        assert event.doc is not None
        if sub.dialect == "masonhub":
            return self.masonhub(sub, event)
        if sub.dialect == "hubrise":
            return await self.hubrise_event(sub, event)
        return await self.tradecloud(sub, event)

    async def resolution(self, sub: Subscription, event: LogEvent) -> bytes | None:
        """MasonHub's orderUpdateResolution / orderCancelResolution callback; the other
        dialects have no such message."""
        if sub.dialect != "masonhub" or event.event_type not in RESOLUTION_TYPES:
            return None
        if sub.message_type != event.event_type:
            return None
        data = await self.requests.resolution(event.event_type, event.entity_id)
        if data is None:
            return None
        return self._envelope(sub, event, event.event_type, data)

    def _envelope(
        self, sub: Subscription, event: LogEvent, message_type: str, data: dict[str, Any]
    ) -> bytes:
        data = data | {"event_id": event.event_id, "version": event.version}
        return orjson.dumps(
            {
                "callback_url": sub.url,
                "message_type": message_type,
                "message_id": message_id(sub, event.event_id),
                "data": data,
            }
        )

    def masonhub(self, sub: Subscription, event: LogEvent) -> bytes | None:
        message_type = MASONHUB_TYPES.get(event.kind)
        if message_type is None or message_type != sub.message_type:
            return None
        doc = orjson.loads(event.doc or "{}")
        data: dict[str, Any]
        if event.kind == "order":
            data = {
                "order_id": doc.get("id"),
                "customer_identifier": doc.get("customer_identifier"),
                "status": doc.get("status"),
                "shipments": doc.get("shipments", []),
                "shorts": doc.get("shorts", []),
                # ordersync extension: the order at this version, as `GET /orders/{id}` shows
                # it, so a receiver can apply it without fetching it (MasonHub sends no such
                # field; a receiver without it fetches). A shipment's own event carries its
                # document in `shipments` already.
                "order": doc,
            }
        elif event.kind == "inventory":
            # The SKU's sku_snapshot at this version: absolute counts, never deltas.
            data = render_sku_snapshot(InventoryItem.model_validate(doc))
        elif event.kind == "shipment":
            data = {
                "order_id": doc.get("order_id"),
                "customer_identifier": doc.get("customer_identifier"),
                "status": doc.get("status"),
                "shipments": [doc],
                "shorts": [],
            }
        else:
            return None
        return self._envelope(sub, event, message_type, data)

    async def hubrise_event(self, sub: Subscription, event: LogEvent) -> bytes | None:
        if event.kind not in ("order", "shipment"):
            return None
        kind_type = "create" if event.event_type == f"{event.kind}.created" else "update"
        wanted = (sub.events or {}).get(event.kind, [])
        if kind_type not in wanted:
            return None
        location = await self.hubrise.location(sub.account_id)
        shown = Event(
            event.event_id,
            event.kind,
            event.entity_id,
            event.version,
            kind_type,
            event.created_at,
            event.doc,
            None,
        )
        return orjson.dumps(render_event(shown, location))

    async def tradecloud(self, sub: Subscription, event: LogEvent) -> bytes | None:
        """Tradecloud's webhook body. POST and PUT (legacy) modes: `{eventName, orderEvent |
        singleDeliveryOrderEvent, meta}`, the order event carrying only the lines affected
        since the subscriber's previous delivery of that order. GET mode (legacy): what the
        sender needs to call `GET {url}?orderId=...` (orders only; the receiver fetches the
        whole order)."""
        if event.kind not in ("order", "shipment"):
            return None
        doc = orjson.loads(event.doc or "{}")
        if tradecloud_mode(sub) == "get":
            if event.kind != "order":
                return None
            return orjson.dumps({"orderId": event.entity_id})
        name = _tradecloud_name(event)
        key = "orderEvent" if event.kind == "order" else "singleDeliveryOrderEvent"
        if event.kind == "order":
            rendered = render_order(doc)
            rendered["orderId"] = event.entity_id  # Tradecloud's OrderEvent names it so
            since = await previous_delivery_time(
                self.store, sub.id, f"{event.kind}:{event.entity_id}"
            )
            rendered["lines"] = _affected(rendered, event, sub, since)
        else:
            rendered = render_shipment(doc)
        rendered["eventId"] = event.event_id
        meta = {
            "messageId": message_id(sub, event.event_id),
            "eventId": event.event_id,
            "version": event.version,
            "ordersyncEventType": event.event_type,
            "createdDateTime": format_rfc3339(event.created_at),
        }
        return orjson.dumps({"eventName": name, key: rendered, "meta": meta})


def tradecloud_mode(sub: Subscription) -> str:
    """A Tradecloud webhook's method: `post` (the default), or the legacy `put` or `get`."""
    return str((sub.options or {}).get("mode", "post"))


def _tradecloud_name(event: LogEvent) -> str:
    if event.event_type == "order.canceled":
        # By a client of the hub (the buyer), or by the hub's warehouse (the supplier side).
        return "OrderLinesCancelledByBuyer" if event.connection else "OrderLinesCancelledBySupplier"
    name = TRADECLOUD_NAMES.get(event.event_type)
    if name is None:
        name = "OrderUpdated" if event.kind == "order" else "ShipmentUpdatedBySupplier"
    return name


def _affected(
    rendered: dict[str, Any], event: LogEvent, sub: Subscription, since: int | None
) -> list[dict[str, Any]]:
    """The lines that changed since the subscriber's previous delivery of this order (or since
    it subscribed): each line's `lastUpdatedAt` is the version that last changed it, so a
    version coalesced into this one still has its lines sent. A status move touches every
    line; a created order sends them all."""
    if event.event_type == "order.created":
        return list(rendered["lines"])
    floor = since if since is not None else sub.created_at
    lines = []
    for line in rendered["lines"]:
        stamp = parse_rfc3339_ms(line["lastUpdatedAt"])
        if stamp > floor or stamp >= event.created_at:
            lines.append(line)
    return lines


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the schedule's wait applies


class Dispatcher:
    """Materialise, claim, send, settle: one round at a time, or forever in the background."""

    def __init__(
        self,
        store: Store,
        webhooks: WebhookStore,
        *,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = TIMEOUT_S,
        batch: int = CLAIM_BATCH,
        faults: FaultSettings | None = None,
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.render = Renderer(store)
        self.http = http
        self.timeout_s = timeout_s
        self.batch = batch
        self.drop_rate = faults.webhook_drop_rate if faults is not None else 0.0
        self._drops = random.Random(faults.seed if faults is not None else None)

    async def run_once(self) -> int:
        """One round; how many deliveries were attempted."""
        claims = await self.claim_due()
        if claims:
            await self.deliver(claims)
        return len(claims)

    async def claim_due(self) -> list[Claim]:
        """A round's first half: materialise new events, lease the due deliveries."""
        subs = await self.webhooks.active()
        if not subs:
            return []  # reads only: an idle hub takes no write lock (SQLite has one)
        queued = 0
        for sub in subs:
            queued += await self.webhooks.materialise_one(sub, self.render)
        if not queued and not await self.webhooks.any_due():
            return []  # (rows just queued are due: no need to look)
        return await self.webhooks.claim(self.batch)

    async def deliver(self, claims: Sequence[Claim]) -> None:
        """A round's second half: POST the claimed deliveries concurrently, settle them."""
        owned = self.http is None
        http = self.http or httpx.AsyncClient(timeout=self.timeout_s)
        try:
            results = await asyncio.gather(*(self.send(http, claim) for claim in claims))
        finally:
            if owned:
                await http.aclose()
        finals = await self.webhooks.settle_many(results)
        for result, final in zip(results, finals, strict=True):
            claim = result.claim
            if final == "delivered" and claim.subscription.dialect == "hubrise":
                await self._acknowledge(claim)
            if final != "delivered":
                log.info(
                    "webhook_not_delivered",
                    subscription=claim.subscription.id,
                    event_id=claim.event_id,
                    status=result.status_code,
                    outcome=final,
                    error=result.error,
                )

    async def send(self, http: httpx.AsyncClient, claim: Claim) -> Result:
        """POST one claimed delivery; what came of it (settled by the caller, in a batch)."""
        if self.drop_rate and self._drops.random() < self.drop_rate:
            # Injected fault (`FaultSettings.webhook_drop_rate`): lost on the way, and the hub
            # believes it arrived. Its attempt row says so.
            return Result(claim, "delivered", None, 0, "injected fault: dropped on the way")
        timestamp = self.store.clock() // 1000
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        method, url, body = request_for(claim)
        headers = headers_for(claim, timestamp, body)
        try:
            response = await http.request(
                method, url, content=body, headers=headers, timeout=self.timeout_s
            )
            status = response.status_code
            retry_after = _retry_after(response.headers.get("retry-after"))
        except httpx.HTTPError as exc:
            error = repr(exc)
        latency_ms = int((time.monotonic() - started) * 1000)
        outcome = _outcome(claim.subscription.dialect, status)
        return Result(claim, outcome, status, latency_ms, error, retry_after)

    async def _acknowledge(self, claim: Claim) -> None:
        """HubRise: an event the callback acknowledged leaves the passive list as well."""
        sub = claim.subscription
        caller = Principal(sub.connection_id, sub.connection_name, sub.account_id, "")
        with contextlib.suppress(NotFound):  # not (or no longer) pending there
            await self.render.hubrise.acknowledge(caller, claim.event_id)

    async def run_forever(
        self,
        interval_s: float,
        *,
        retention_ms: int | None = None,
        prune_every_s: float = 300,
        min_idle_s: float = MIN_IDLE_S,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        """The background task, until cancelled. Rounds overlap: once a round's deliveries
        are claimed (leased, committed) their POSTs go out in a task of their own and the next
        round starts, up to `in_flight` rounds sending at once, so that a slow receiver does
        not hold back the events committed meanwhile (order per entity still holds: an event
        is claimed only when no earlier one of its entity is pending, and a leased one is).
        With nothing to claim the loop naps: a commit of this process's store ends the nap
        at once (`Store.on_commit`: a change made through this hub, or a settled delivery
        that frees the next event of its entity, goes out without waiting), else after
        `min_idle_s`, doubled after each idle round up to `interval_s` (other processes'
        changes are found this way). After a wake the naps start again from 20 ms: what the
        wake announced may be held back by the log's frontier a little longer. Every
        `prune_every_s` the settled rows older than `retention_ms` go. Errors are logged and
        retried next round; committed state makes a crash lose nothing (a lease left by a
        cancelled send expires and the event is sent again)."""
        next_prune = time.monotonic() + prune_every_s
        wake = asyncio.Event()
        me = asyncio.current_task()

        def woken() -> None:
            # Not by this loop's own materialise and claim commits: they are its round's.
            if asyncio.current_task() is not me:
                wake.set()

        forget = self.store.on_commit(woken)
        shortest = min(min_idle_s, interval_s)
        idle_s = shortest
        sending: set[asyncio.Task[None]] = set()
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                self.http = http
                while True:
                    wake.clear()  # before the round: a commit during it means one more round
                    claims: list[Claim] = []
                    try:
                        if retention_ms is not None and time.monotonic() >= next_prune:
                            next_prune = time.monotonic() + prune_every_s
                            await self.webhooks.prune(retention_ms)
                        claims = await self.claim_due()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("webhook_round_failed", error=repr(exc))
                    if claims:
                        task = asyncio.ensure_future(self._deliver_logged(claims))
                        sending.add(task)
                        task.add_done_callback(sending.discard)
                        idle_s = shortest
                        if len(sending) >= in_flight:
                            await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
                        continue
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancel that arrives as the wake does, and the loop would then nap on
                    # (a hub shutting down, or a test's teardown, waited for an hour).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(idle_s):
                            await wake.wait()
                    # Woken: the next round comes at once, and if the change is not found yet
                    # (above the frontier) the one after that 20 ms later, doubling.
                    idle_s = (
                        min(MIN_IDLE_S, interval_s)
                        if wake.is_set()
                        else min(idle_s * 2, interval_s)
                    )
        finally:
            forget()
            for task in sending:
                task.cancel()
            await asyncio.gather(*sending, return_exceptions=True)

    async def _deliver_logged(self, claims: Sequence[Claim]) -> None:
        try:
            await self.deliver(claims)
        except Exception as exc:  # the leases expire and the events go out again
            log.warning("webhook_round_failed", error=repr(exc))


def _outcome(dialect: str, status: int | None) -> str:
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "delivered"
    if status == 410:
        return "gone"
    if dialect == "hubrise" and 200 <= status < 500:
        return "delivered"  # HubRise: any 200-499 acknowledges
    if dialect == "tradecloud" and (400 <= status < 500 or status == 500):
        return "failed"  # Tradecloud retries only answers above 500
    return "retry"


@contextlib.asynccontextmanager
async def background(dispatcher: Dispatcher, interval_s: float) -> Any:
    task = asyncio.ensure_future(dispatcher.run_forever(interval_s))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
