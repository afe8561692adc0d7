"""Walking `updated_at >= since` without ever paging an offset across the moving set.

After each page the next request is re-anchored at the last record's `updated_at`, with an
offset counted only among records sharing that exact timestamp (MasonHub has no keyset
parameter). That offset alone is not safe: if a record already counted at the anchor is
updated, it leaves the anchor's tie group and the offset then skips an unseen record. So each
anchored request starts one record early and checks that the record in that slot is the last
one seen; when it is not, the tie group changed under us and it is walked again from offset 0
(repeats are harmless: the apply is version-checked).

Records inserted at the anchor with a smaller id after we passed them are late commits; the
engine's lookback re-reads them (see engine.py).

Cost: the re-checked slot makes every anchored page bring limit - 1 new records, i.e. a backfill
of N records takes about N / 99 calls at limit 100 (+1 %). Cheaper schemes (trusting the offset
and detecting moved records when they reappear) break when a crash lands between the skip and
its detection, so the slot stays.

Where the server offers a keyset continuation (the hub advertises `after_id` on its listings),
the pager uses it instead: the next page is "after (anchor, last id)", which no update can
shift, so there is no offset, no re-checked slot and no restart, and every call brings `limit`
new records. A server that does not advertise it (MasonHub itself) keeps the scheme above.
"""

from __future__ import annotations

from dataclasses import dataclass

from ordersync.agent.errors import ProtocolError
from ordersync.agent.records import Record


@dataclass(frozen=True, slots=True)
class PageRequest:
    since_ms: int
    offset: int
    limit: int
    after_id: str | None = None


class TiePager:
    """Plans page requests over one stream and filters what each page brings that is new."""

    def __init__(self, since_ms: int, limit: int) -> None:
        if limit < 2:
            raise ValueError("page size must be at least 2: one slot re-checks the anchor")
        self.anchor_ms = max(since_ms, 0)
        self.limit = limit
        self.seen_at_anchor = 0  # records at anchor_ms already delivered, in id order
        self.last_id = ""
        self.done = False
        self.tie_restarts = 0
        self.keyset = False  # set once the server advertises the after_id continuation

    def next_request(self) -> PageRequest:
        if self.keyset and self.seen_at_anchor:
            return PageRequest(self.anchor_ms, 0, self.limit, after_id=self.last_id)
        overlap = 1 if self.seen_at_anchor else 0
        return PageRequest(self.anchor_ms, self.seen_at_anchor - overlap, self.limit)

    def accept(self, request: PageRequest, records: list[Record]) -> list[Record]:
        """The records of this page not delivered before in this walk; advances the anchor."""
        _check_order(records, request.since_ms)
        fresh = records
        if request.after_id is not None:  # keyset: everything after the anchor is new
            self.done = len(records) < request.limit
            if records:
                last = records[-1]
                self.anchor_ms, self.last_id, self.seen_at_anchor = last.updated_at_ms, last.id, 1
            return records
        if self.seen_at_anchor:
            head = records[0] if records else None
            if head is None or (head.updated_at_ms, head.id) != (self.anchor_ms, self.last_id):
                # The tie group shifted: a counted record moved away (or one was inserted).
                self.seen_at_anchor = 0
                self.tie_restarts += 1
                return []
            fresh = records[1:]
        self.done = len(records) < request.limit
        if fresh:
            self._reanchor(request, records)
        return fresh

    def _reanchor(self, request: PageRequest, records: list[Record]) -> None:
        last = records[-1]
        if last.updated_at_ms == self.anchor_ms and records[0].updated_at_ms == self.anchor_ms:
            self.seen_at_anchor = request.offset + len(records)
        else:
            self.anchor_ms = last.updated_at_ms
            self.seen_at_anchor = sum(1 for r in records if r.updated_at_ms == last.updated_at_ms)
        self.last_id = last.id


def _check_order(records: list[Record], since_ms: int) -> None:
    # Only timestamps are checked: ids are ordered by the server's collation, not Python's.
    previous = since_ms
    for record in records:
        if record.updated_at_ms < previous:
            raise ProtocolError(
                f"listing out of order or outside updated_since: {record.kind} {record.id} "
                f"at {record.updated_at_ms} after {previous}"
            )
        previous = record.updated_at_ms
