"""The HubRise dialect (seed 003): the order listing, the passive callback and its events.

HubRise lists orders by creation time, newest first, with opaque `X-Cursor-Next` cursors: there
is no "changed since" listing, so it does not fit the `Source.fetch_page` contract. Changes come
from the connection's callback instead (`GET /callback/events`, acknowledged one by one with
`DELETE /callback/events/:id`). Its feeds (agent/feeds/hubrise.py) drive both.

Records reach the sink in the neutral shape (the fields the sinks index) with the document as
received under `wire`: money such as `"9.99 EUR"` becomes the exact amount text `"9.99"`, decimal
strings stay the strings they are, times with their offsets become UTC milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ordersync.agent.client import ApiClient
from ordersync.agent.errors import ProtocolError, RequestRejected, malformed_answer
from ordersync.agent.records import Kind, Record
from ordersync.agent.sources import sane_decimal
from ordersync.domain.timestamps import format_rfc3339, to_ms

_MONEY = re.compile(r"(-?\d+(?:\.\d+)?) ([A-Z]{3})")
_KINDS: dict[str, Kind] = {"order": "order", "shipment": "shipment"}
EVENT_KINDS = {"orders": "order", "shipments": "shipment"}


@dataclass(frozen=True, slots=True)
class OrdersPage:
    """One page of the creation-time listing: its orders, with each one's creation instant."""

    records: list[Record]
    created_at_ms: list[int]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    created_at_ms: int
    record: Record | None  # the entity's state now; None if it no longer exists


class HubRiseSource:
    """One HubRise location through one connection (its `X-Access-Token`)."""

    max_page_size = 100

    def __init__(
        self,
        client: ApiClient,
        *,
        name: str = "hubrise",
        streams: tuple[str, ...] = ("orders", "shipments"),
    ) -> None:
        unknown = set(streams) - EVENT_KINDS.keys()
        if unknown:
            raise ValueError(f"unknown HubRise streams {sorted(unknown)}; use orders, shipments")
        self.client = client
        self.name = name
        self.subscribed = streams
        # What status() reports on: the backfill walk and the event feed.
        self.streams: tuple[str, ...] = ("orders-backfill", "events")

    @property
    def api_calls(self) -> int:
        return self.client.calls

    async def ensure_callback(self) -> None:
        """Create (or keep) the connection's passive callback: events are kept from the moment
        it first exists; re-posting it changes the subscription only, never drops events."""
        events = {EVENT_KINDS[s]: ["create", "update"] for s in self.subscribed}
        await self.client.post_json("/callback", {"events": events})

    async def list_orders(
        self, *, cursor: str | None = None, before_ms: int | None = None, count: int = 100
    ) -> OrdersPage:
        params: list[tuple[str, str | int]] = [("count", count)]
        if cursor is not None:
            params.append(("cursor", cursor))
        elif before_ms is not None:
            params.append(("before", format_rfc3339(before_ms)))
        response = await self.client.get_json("/location/orders", params)
        with malformed_answer(f"{self.name}: /location/orders"):
            if not isinstance(response.body, list):
                raise ProtocolError(f"{self.name}: /location/orders answered without an array")
            records = [self.record("order", item) for item in response.body]
            created = [_time(item, "created_at") for item in response.body]
        headers = response.headers
        next_cursor = headers.get("x-cursor-next") if headers is not None else None
        return OrdersPage(records, created, next_cursor or None)

    async def pending_events(self) -> list[Event]:
        """Unacknowledged events, oldest first (at most 100 per call)."""
        response = await self.client.get_json("/callback/events", ())
        with malformed_answer(f"{self.name}: /callback/events"):
            if not isinstance(response.body, list):
                raise ProtocolError(f"{self.name}: /callback/events answered without an array")
            return [self._event(item) for item in response.body]

    async def acknowledge(self, event_id: str) -> None:
        """Delete one event. 404 means it is gone already (acknowledged before a crash)."""
        try:
            await self.client.request_json("DELETE", f"/callback/events/{event_id}")
        except RequestRejected as exc:
            if exc.status != 404:
                raise

    def _event(self, item: Any) -> Event:
        try:
            kind, state = _KINDS[item["resource_type"]], item.get("new_state")
            record = None if state is None else self.record(kind, state)
            return Event(str(item["id"]), _time(item, "created_at"), record)
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"{self.name}: a callback event without {exc}") from exc

    def record(self, kind: Kind, item: Any) -> Record:
        try:
            neutral = neutral_order(item) if kind == "order" else neutral_shipment(item)
            return Record(
                kind, str(item["id"]), int(item["version"]), _time(item, "updated_at"), neutral
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(
                f"a HubRise {kind} without a valid id, version or updated_at: {exc!r}"
            ) from exc


def _time(item: dict[str, Any], key: str) -> int:
    """UTC milliseconds of an ISO 8601 time; HubRise always writes the location's offset."""
    moment = datetime.fromisoformat(str(item[key]))
    if moment.tzinfo is None:
        raise ProtocolError(f"{key} {item[key]!r} has no UTC offset")
    return to_ms(moment)


def decimal_text(value: Any) -> str | None:
    """A HubRise decimal (a string, or an integer in HubRise's own examples) as exact text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ProtocolError(f"{value!r} is not a HubRise decimal (a string such as '2.5')")
    try:
        return format(sane_decimal(Decimal(value)), "f")
    except InvalidOperation:
        raise ProtocolError(f"{value!r} is not a HubRise decimal") from None


def money(value: Any) -> tuple[str, str] | None:
    """`"8.90 EUR"` -> ("8.90", "EUR"): the amount as exact text and its currency."""
    if value is None:
        return None
    match = _MONEY.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ProtocolError(f"{value!r} is not a HubRise monetary amount (e.g. '8.90 EUR')")
    return match.group(1), match.group(2)


def neutral_order(item: dict[str, Any]) -> dict[str, Any]:
    lines = []
    for number, line in enumerate(item.get("items") or (), start=1):
        price = money(line.get("price"))
        lines.append(
            {
                "line_number": int(line.get("line_number") or number),
                "sku_customer_identifier": line.get("sku_ref"),
                "quantity": decimal_text(line.get("quantity")),
                "unit_price": None if price is None else price[0],
                "currency": None if price is None else price[1],
            }
        )
    return {
        "id": item["id"],
        "version": item["version"],
        "updated_at": item["updated_at"],
        "status": item.get("status"),
        "customer_identifier": item.get("ref"),
        "line_items": lines,
        "wire": item,
    }


def neutral_shipment(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item["id"],
        "version": item["version"],
        "updated_at": item["updated_at"],
        "order_id": item.get("order_id"),
        "status": item.get("status"),
        "tracking_number": item.get("tracking_number"),
        "wire": item,
    }
