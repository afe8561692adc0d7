"""Sources: one per platform dialect; each turns a page request into neutral `Record`s."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from ordersync.agent.errors import ProtocolError
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


def sane_decimal(number: Decimal) -> Decimal:
    """The number, if finite and of a sane magnitude: written out in full, 1e999999999 would be
    a billion digits (memory the agent does not have)."""
    if not number.is_finite() or abs(number.adjusted()) > 100:
        raise ProtocolError(f"{number} is not a quantity or price")
    return number
