"""The HubRise dialect (seed 003): the order listing, the passive callback and its events.

HubRise lists orders by creation time, newest first, with opaque `X-Cursor-Next` cursors: there
is no "changed since" listing, so it does not fit the `Source.fetch_page` contract. Changes come
from the connection's callback instead (`GET /callback/events`, acknowledged one by one with
`DELETE /callback/events/:id`). Its feeds (agent/feeds/hubrise.py) drive both.

Inventory is polled instead: ordersync's hub lists the catalogue's SKUs by last change
(`GET /location/inventory`, an extension), walked by a `ListingFeed` through `fetch_page`.

Records carry the document as received and its snapshot, read by `ordersync.wire.hubrise` with
the money, decimal and time functions the hub reads request bodies with (one strictness on both
ends): `"9.99 EUR"` is the amount 9.99 in EUR, times with their offsets are UTC milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ordersync import kinds
from ordersync.agent.client import ApiClient
from ordersync.agent.errors import ProtocolError, RequestRejected, malformed_answer
from ordersync.agent.records import FetchedPage, Kind, Record, decode_record
from ordersync.domain.timestamps import format_rfc3339
from ordersync.wire import WireError
from ordersync.wire.fields import mapping
from ordersync.wire.hubrise import instant

STREAMS = kinds.streams("hubrise")
INVENTORY = "inventory"


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
        unknown = set(streams) - set(STREAMS)
        if unknown:
            raise ValueError(f"unknown HubRise streams {sorted(unknown)}; use {', '.join(STREAMS)}")
        self.client = client
        self.name = name
        self.subscribed = streams
        # What status() reports on: the backfill walk, the event feed, the inventory listing.
        polled = (INVENTORY,) if INVENTORY in streams else ()
        self.streams: tuple[str, ...] = ("orders-backfill", "events", *polled)

    @property
    def api_calls(self) -> int:
        return self.client.calls

    async def ensure_callback(self) -> None:
        """Create (or keep) the connection's passive callback: events are kept from the moment
        it first exists; re-posting it changes the subscription only, never drops events."""
        events = {
            kinds.by_stream(s).name: ["create", "update"]
            for s in self.subscribed
            if s != INVENTORY  # polled, not evented
        }
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

    async def fetch_page(
        self,
        stream: str,
        since_ms: int,
        offset: int,
        limit: int,
        *,
        summary: bool = False,
        after_id: str | None = None,
    ) -> FetchedPage:
        """A page of the inventory listing (the one stream HubRise serves by change time)."""
        if stream != INVENTORY:
            raise ValueError(f"HubRise lists {INVENTORY} only by change time, not {stream}")
        params: list[tuple[str, str | int]] = [
            ("updated_since", format_rfc3339(max(since_ms, 0))),
            ("count", limit),
            ("offset", offset),
        ]
        if after_id is not None:
            params.append(("after_id", after_id))
        response = await self.client.get_json("/location/inventory", params)
        with malformed_answer(f"{self.name}: /location/inventory"):
            if not isinstance(response.body, list):
                raise ProtocolError(f"{self.name}: /location/inventory answered without an array")
            records = [self.record("inventory", item) for item in response.body]
        keyset = (
            response.headers is not None
            and response.headers.get("x-ordersync-keyset", "") == "after_id"
        )
        return FetchedPage(records, response.server_time_ms, keyset)

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
            kind, state = kinds.by_name(item["resource_type"]).name, item.get("new_state")
            record = None if state is None else self.record(kind, state)
            return Event(str(item["id"]), _time(item, "created_at"), record)
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"{self.name}: a callback event without {exc}") from exc

    def record(self, kind: Kind, item: Any) -> Record:
        try:
            return decode_record(kind, "hubrise", item)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(
                f"a HubRise {kind} without a valid id, version or updated_at: {exc!r}"
            ) from exc


def _time(item: Any, key: str) -> int:
    """UTC milliseconds of an ISO 8601 time; HubRise always writes the location's offset."""
    try:
        return instant(mapping(item, "document").get(key), key)
    except WireError as exc:
        raise ProtocolError(f"a HubRise document without a valid time: {exc}") from exc
