"""Sources: one per platform dialect; each turns a page request into `Record`s, read with the
dialect's codec (`ordersync.wire`): the document as received plus its typed snapshot."""

from __future__ import annotations

from typing import Protocol

from ordersync.agent.records import FetchedPage


class Source(Protocol):
    """A platform's change feed, one listing per stream, ascending by (updated_at, id),
    inclusive `updated_at >= since`, offset within that order."""

    name: str
    streams: tuple[str, ...]
    max_page_size: int

    @property
    def api_calls(self) -> int:
        """HTTP calls made so far, retries included."""
        ...

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
        """`after_id` is sent only to sources whose pages said `keyset=True`."""
        ...
