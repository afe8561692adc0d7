"""The MasonHub dialect (seed 000): `GET /orders`, `GET /shipments` and `GET /sku_snapshots`
(the `inventory` stream; `updated_since` is ordersync's extension there) with `updated_since`."""

from __future__ import annotations

from typing import Any

from ordersync import kinds
from ordersync.agent.client import ApiClient
from ordersync.agent.errors import ProtocolError, malformed_answer
from ordersync.agent.records import FetchedPage, Kind, Record, decode_record
from ordersync.domain.timestamps import format_rfc3339
from ordersync.wire import WireError

STREAMS = kinds.streams("masonhub")
# The listing path of each stream: its own name, but for inventory.
PATHS = {"inventory": "/sku_snapshots"}


class MasonHubSource:
    """Orders and shipments of one MasonHub account; each stream keeps a cursor of its own."""

    max_page_size = 100

    def __init__(
        self,
        client: ApiClient,
        *,
        name: str = "masonhub",
        streams: tuple[str, ...] = ("orders", "shipments"),
        statuses: tuple[str, ...] = (),
    ) -> None:
        unknown = set(streams) - set(STREAMS)
        if unknown:
            raise ValueError(
                f"unknown MasonHub streams {sorted(unknown)}; use {', '.join(STREAMS)}"
            )
        self.client = client
        self.name = name
        self.streams = streams
        self.statuses = statuses

    @property
    def api_calls(self) -> int:
        return self.client.calls

    def page_params(
        self, since_ms: int, offset: int, limit: int, summary: bool, after_id: str | None = None
    ) -> list[tuple[str, str | int]]:
        params: list[tuple[str, str | int]] = [
            ("updated_since", format_rfc3339(max(since_ms, 0))),
            ("limit", limit),
            ("offset", offset),
            ("list_type", "summary" if summary else "detail"),
        ]
        if after_id is not None:
            params.append(("after_id", after_id))
        params += [("status", status) for status in self.statuses]
        return params

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
        kind = kinds.by_stream(stream).name
        path = PATHS.get(stream, f"/{stream}")
        response = await self.client.get_json(
            path, self.page_params(since_ms, offset, limit, summary, after_id)
        )
        with malformed_answer(f"{self.name}: {path}"):
            data = response.body.get("data") if isinstance(response.body, dict) else None
            if not isinstance(data, list):
                raise ProtocolError(f"{self.name}: {path} answered without a data array")
            records = [parse_record(kind, item, summary=summary) for item in data]
        keyset = (
            response.headers is not None
            and response.headers.get("x-ordersync-keyset", "") == "after_id"
        )
        return FetchedPage(records, response.server_time_ms, keyset)


def parse_record(kind: Kind, item: Any, *, summary: bool = False) -> Record:
    """A record of a MasonHub document (see `decode_record`); ProtocolError when its id,
    version or updated_at is unreadable."""
    try:
        return decode_record(kind, "masonhub", item, summary=summary)
    except WireError as exc:
        raise ProtocolError(f"a {kind} without a valid id, version or updated_at: {exc}") from exc
