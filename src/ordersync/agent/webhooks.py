"""`POST /webhooks/{source}`: the agent's webhook receiver (README, "Webhooks into the agent").

A delivery is only a hint that an entity changed: the receiver checks who sent it, stores it in
the replica's inbox (`inbox.py`) and answers 204 at once; the inbox's feed then fetches the
entity from the platform and applies it through the engine's version-checked apply, as polling
does. Nothing here writes the replica's data.

Checks, in order, each answered with a 4xx naming `error_type` and `field`, never a 500:

- the source exists and has `webhook_secrets` (404 `unknown_source`);
- the body is at most `webhook_max_body` bytes (413 `body_too_large`);
- the Standard Webhooks signature: `webhook-signature` holds space-separated `v1,<base64>`
  entries, each HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` keyed with the
  bytes of a `whsec_<base64>` secret; one match with any configured secret passes, so a secret
  is rotated by listing the new one beside the old (401 `invalid_signature`). On a HubRise
  source an `X-HubRise-Hmac-SHA256` header (hex HMAC-SHA256 of the body, keyed with the same
  key bytes or with the `whsec_...` text) must match too; a HubRise delivery carrying only
  that header is accepted with the event's own `id`;
- `webhook-timestamp` within `webhook_tolerance` seconds of now, either way (400
  `stale_timestamp`): a captured request cannot be replayed later;
- the body names an entity as the dialect does (400 `malformed_body`);
- an id already in the inbox is not stored again and answered 200 `replayed`: the sender's
  retry of a delivery whose 204 was lost must end its retries, and the event is already held.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ordersync.agent.errors import SinkError
from ordersync.agent.inbox import Entity, Inbox
from ordersync.agent.metrics import AgentMetrics

log = structlog.get_logger("ordersync.agent.webhooks")

SECRET_PREFIX = "whsec_"
MAX_ID_LENGTH = 200
HUBRISE_HEADER = "x-hubrise-hmac-sha256"


class Rejected(Exception):
    """A delivery refused: the answer's status, the metric's reason and the error body."""

    def __init__(self, status: int, error_type: str, field: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error_type = error_type
        self.field = field
        self.detail = detail


def decode_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret; ValueError naming the problem."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_ (Standard Webhooks)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes of key")
    return key


def sign(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature entry (what a sender puts in `webhook-signature`)."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def hubrise_hmac(key: bytes, body: bytes) -> str:
    """HubRise's `X-HubRise-Hmac-SHA256`: hex HMAC-SHA256 of the raw body."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """A delivery whose signature and timestamp passed."""

    event_id: str
    timestamp: int | None  # None: a HubRise delivery signed with its own header only


def verify(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: float,
    tolerance_s: float,
    hubrise: bool = False,
) -> Delivery:
    """Check a delivery's signatures and timestamp against every configured key."""
    signature = headers.get("webhook-signature")
    hubrise_sig = headers.get(HUBRISE_HEADER) if hubrise else None
    if hubrise_sig is not None and not any(
        hmac.compare_digest(hubrise_hmac(k, body), hubrise_sig.strip().lower())
        for k in _hubrise_keys(keys)
    ):
        raise Rejected(401, "invalid_signature", "X-HubRise-Hmac-SHA256", "signature mismatch")
    if signature is None and hubrise_sig is not None:
        return Delivery(_hubrise_event_id(body), None)
    event_id = _header(headers, "webhook-id")
    raw_ts = _header(headers, "webhook-timestamp")
    signature = _header(headers, "webhook-signature")
    if len(event_id) > MAX_ID_LENGTH:
        raise Rejected(400, "invalid_header", "webhook-id", f"longer than {MAX_ID_LENGTH}")
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 12):
        raise Rejected(400, "invalid_header", "webhook-timestamp", "not unix seconds")
    timestamp = int(raw_ts)
    offered = [s.partition(",")[2] for s in signature.split() if s.startswith("v1,")]
    expected = [sign(k, event_id, timestamp, body)[3:] for k in keys]
    if not any(hmac.compare_digest(e, o) for e in expected for o in offered):
        raise Rejected(401, "invalid_signature", "webhook-signature", "no signature matches")
    if abs(now_s - timestamp) > tolerance_s:
        raise Rejected(
            400,
            "stale_timestamp",
            "webhook-timestamp",
            f"more than {tolerance_s:g} s away from the agent's clock",
        )
    return Delivery(event_id, timestamp)


def _hubrise_keys(keys: Sequence[bytes]) -> list[bytes]:
    """HubRise keys its HMAC with the client secret as a string: a sender may use the key
    bytes or the `whsec_...` text itself, and both are the secret, so either is accepted."""
    return [*keys, *((SECRET_PREFIX + base64.b64encode(k).decode()).encode() for k in keys)]


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise Rejected(400, "missing_header", name, f"the {name} header is required")
    return value.strip()


def _hubrise_event_id(body: bytes) -> str:
    document = _json(body)
    event_id = document.get("id")
    if not isinstance(event_id, str | int) or not str(event_id):
        raise Rejected(400, "malformed_body", "id", "a HubRise event has an id")
    return str(event_id)[:MAX_ID_LENGTH]


def _json(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Rejected(400, "malformed_body", "body", "not JSON") from None
    if not isinstance(document, dict):
        raise Rejected(400, "malformed_body", "body", "not a JSON object")
    return document


def _text(value: Any) -> str | None:
    """An entity id as the body gives it; an absurd one is refused rather than fetched."""
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value):
        return None
    if len(str(value)) > MAX_ID_LENGTH:
        raise Rejected(400, "malformed_body", "id", f"an id longer than {MAX_ID_LENGTH}")
    return str(value)


def entities_named(dialect: str, body: bytes) -> list[Entity]:
    """The (kind, id) pairs a delivery names, read as each dialect writes its bodies. An empty
    list is a delivery that names nothing fetchable (e.g. a resolution): it wakes polling."""
    document = _json(body)
    found: list[Entity] = []
    if dialect == "masonhub":  # {callback_url, message_type, message_id, data}
        data = document.get("data")
        if not isinstance(data, dict):
            raise Rejected(400, "malformed_body", "data", "a MasonHub callback carries data")
        if document.get("message_type") == "skuInventoryChange":
            if sku_id := _text(data.get("sku_id")):
                found.append(("inventory", sku_id))
        elif order_id := _text(data.get("order_id")):
            found.append(("order", order_id))
        if shipment_id := _text(data.get("shipment_id")):
            found.append(("shipment", shipment_id))
        shipments = data.get("shipments")
        for shipment in shipments if isinstance(shipments, list) else ():
            # MasonHub's orderEvent lists `shipment_id`s; a shipment's own document has `id`.
            if isinstance(shipment, dict) and (
                sid := _text(shipment.get("shipment_id")) or _text(shipment.get("id"))
            ):
                found.append(("shipment", sid))
    elif dialect == "tradecloud":  # {eventName, orderEvent | singleDeliveryOrderEvent, meta}
        # A shipment's event may come under either key: its name says which it is.
        named = str(document.get("eventName") or "")
        for key in ("orderEvent", "singleDeliveryOrderEvent", "shipmentEvent"):
            event = document.get(key)
            if not isinstance(event, dict):
                continue
            shipment = key == "shipmentEvent" or named.startswith("Shipment")
            kind = "shipment" if shipment else "order"
            inner = event.get(kind)
            ident = _text(inner.get("id")) if isinstance(inner, dict) else None
            if ident := ident or _text(event.get("id")):
                found.append((kind, ident))
    else:  # HubRise: {id, resource_type, resource_id, order_id, new_state, ...}
        kind = "order" if document.get("resource_type") == "order" else "shipment"
        if ident := _text(document.get("resource_id")) or (
            _text(document.get("order_id")) if kind == "order" else None
        ):
            found.append((kind, ident))
    return list(dict.fromkeys(found))


@dataclass
class SourceWebhooks:
    """One source's receiving end: its keys and dialect, and the events that wake its loops."""

    name: str
    dialect: str
    keys: list[bytes]
    inbox_wake: asyncio.Event = field(default_factory=asyncio.Event)
    poll_wake: asyncio.Event = field(default_factory=asyncio.Event)


class Receiver:
    """The receiving end of every source with webhook secrets, over one inbox."""

    def __init__(
        self,
        sources: Mapping[str, SourceWebhooks],
        inbox: Inbox,
        metrics: AgentMetrics,
        *,
        tolerance_s: float = 300.0,
        max_body: int = 1_048_576,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = dict(sources)
        self.inbox = inbox
        self.metrics = metrics
        self.tolerance_s = tolerance_s
        self.max_body = max_body
        self.clock = clock

    async def endpoint(self, request: Request) -> Response:
        """The route's handler: never raises, answers 204, 200 (replayed) or a 4xx/503."""
        name = request.path_params.get("source", "")
        target = self.sources.get(name)
        try:
            if target is None:
                raise Rejected(
                    404, "unknown_source", "source", "no source of that name takes webhooks"
                )
            body = await self._body(request)
            return await self._receive(target, request.headers, body)
        except Rejected as exc:
            return self._refused(name, target, exc)
        except Exception:  # a bug must not become a 500 with a traceback; the sender retries
            log.exception("webhook_failed", source=name[:50])
            return self._refused(
                name, target, Rejected(503, "receiver_error", "", "not stored; try again later")
            )

    def _refused(self, name: str, target: SourceWebhooks | None, exc: Rejected) -> Response:
        # An unknown name is not a label: a scanner could make up any number of them.
        label = name if target is not None else ""
        self.metrics.webhooks_rejected.labels(label, exc.error_type).inc()
        log.warning("webhook_rejected", source=name[:50], reason=exc.error_type)
        return JSONResponse(
            {"error_type": exc.error_type, "field": exc.field, "detail": exc.detail},
            status_code=exc.status,
        )

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise Rejected(413, "body_too_large", "body", f"more than {self.max_body} bytes")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body:
                    raise Rejected(
                        413, "body_too_large", "body", f"more than {self.max_body} bytes"
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            raise Rejected(400, "malformed_body", "body", "the body was cut short") from None
        return b"".join(chunks)

    async def _receive(
        self, target: SourceWebhooks, headers: Mapping[str, str], body: bytes
    ) -> Response:
        delivery = verify(
            target.keys,
            headers,
            body,
            now_s=self.clock(),
            tolerance_s=self.tolerance_s,
            hubrise=target.dialect == "hubrise",
        )
        entities = entities_named(target.dialect, body)
        try:
            stored = await self.inbox.store(target.name, delivery.event_id, entities, body)
        except SinkError as exc:
            log.error("webhook_not_stored", source=target.name, error=str(exc))
            raise Rejected(503, "inbox_unavailable", "", "not stored; try again later") from exc
        if not stored:  # a 2xx: the sender's retry of a delivery whose answer it lost ends here
            raise Rejected(200, "replayed", "webhook-id", "already received; not stored again")
        self.metrics.webhooks_received.labels(target.name).inc()
        self.metrics.inbox_depth.labels(target.name).inc()
        target.inbox_wake.set()
        return Response(status_code=204)
