"""The Tradecloud dialect (seeds 002 and 004): `POST /order-search/poll` and `/shipment/poll`.

The poll filter `lastUpdatedAfter` is exclusive and results ascend by `lastUpdatedAt`, so the
engine's inclusive `updated_at >= since` is asked as `lastUpdatedAfter = since - 1 ms` (the
timestamps have millisecond precision), with `offset` counted from there: exactly the listing
`TiePager` walks. Records carry the document as received and its snapshot, read by
`ordersync.wire.tradecloud`; quantities and prices stay exact, never float.

Echo: each order names the connection that made its last change (`lastUpdatedBy`). With
`echo="skip"` and our own connection's name, a change we made ourselves is still applied (the
replica must hold every version) but marked as an echo (`Record.echo`; the replica's document
gets `"echo": true`) and counted, not taken for a change
made by someone else; `echo="apply"` treats it like any other change.
"""

from __future__ import annotations

from typing import Any, Literal

from ordersync import kinds
from ordersync.agent.client import ApiClient
from ordersync.agent.errors import ProtocolError, malformed_answer
from ordersync.agent.records import FetchedPage, Kind, Record, decode_record
from ordersync.domain.timestamps import format_rfc3339
from ordersync.wire.tradecloud import as_received

EchoMode = Literal["skip", "apply"]
_ENDPOINTS = {"orders": "/order-search/poll", "shipments": "/shipment/poll"}


class TradecloudSource:
    """Orders and shipments of one Tradecloud company; each stream keeps a cursor of its own."""

    max_page_size = 100

    def __init__(
        self,
        client: ApiClient,
        *,
        name: str = "tradecloud",
        streams: tuple[str, ...] = ("orders", "shipments"),
        connection_name: str | None = None,
        echo: EchoMode = "skip",
    ) -> None:
        unknown = set(streams) - _ENDPOINTS.keys()
        if unknown:
            raise ValueError(f"unknown Tradecloud streams {sorted(unknown)}; use orders, shipments")
        if echo == "skip" and not connection_name:
            raise ValueError("echo = 'skip' needs the agent's own connection_name")
        self.client = client
        self.name = name
        self.streams = streams
        self.connection_name = connection_name
        self.echo = echo
        self._echoes: set[str] = set()

    @property
    def api_calls(self) -> int:
        return self.client.calls

    @property
    def echoes_recognised(self) -> int:
        """Distinct (id, version) changes recognised as our own connection's."""
        return len(self._echoes)

    def poll_body(self, since_ms: int, offset: int, limit: int) -> dict[str, Any]:
        # Exclusive on the wire, inclusive for the engine: one millisecond earlier.
        after = format_rfc3339(max(since_ms - 1, 0))
        return {"filters": {"lastUpdatedAfter": after}, "offset": offset, "limit": limit}

    async def fetch_page(
        self,
        stream: str,
        since_ms: int,
        offset: int,
        limit: int,
        *,
        summary: bool = False,
        after_id: str | None = None,  # never sent: Tradecloud has no keyset continuation
    ) -> FetchedPage:
        kind = kinds.by_stream(stream).name
        response = await self.client.post_json(
            _ENDPOINTS[stream], self.poll_body(since_ms, offset, limit)
        )
        with malformed_answer(f"{self.name}: {_ENDPOINTS[stream]}"):
            data = response.body.get("data") if isinstance(response.body, dict) else None
            if not isinstance(data, list):
                raise ProtocolError(
                    f"{self.name}: {_ENDPOINTS[stream]} answered without a data array"
                )
            records = [self._record(kind, item) for item in data]
        return FetchedPage(records, response.server_time_ms)

    def _record(self, kind: Kind, item: Any) -> Record:
        try:
            echo = self.is_echo(item)
            record = decode_record(kind, "tradecloud", item, data=as_received(item), echo=echo)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(
                f"a Tradecloud {kind} without a valid id, version or lastUpdatedAt: {exc!r}"
            ) from exc
        if record.echo:
            self._echoes.add(record.key)
        return record

    def is_echo(self, item: dict[str, Any]) -> bool:
        return (
            self.echo == "skip"
            and self.connection_name is not None
            and item.get("lastUpdatedBy") == self.connection_name
        )
