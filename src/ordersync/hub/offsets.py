"""The deepest `offset` any listing serves.

The database still reads and throws away every skipped row, so a deep offset costs time in
proportion to its depth (offset 200,000 took 150-240 ms on PostgreSQL) and overflows the
database's 64-bit integer beyond 2^63 - 1 (a 500). No client needs a deep offset: a poller
re-anchors on the last timestamp it saw, or continues a tie group with the `after_id` keyset,
and the agent's offset counts only records sharing one timestamp. 10,000 is ten thousand
records into one tie group, a hundred full pages, the cap search APIs commonly use.
"""

from __future__ import annotations

from ordersync.hub.errors import ApiError

MAX_OFFSET = 10_000
# Beyond a signed 64-bit integer SQLite and PostgreSQL fail with an overflow, whatever the setting.
DATABASE_MAX_OFFSET = 2**63 - 1


def offset_cap(setting: int) -> int:
    """The cap a hub configured with `setting` (HubSettings.max_offset) applies."""
    return max(0, min(setting, DATABASE_MAX_OFFSET))


def check_offset(offset: int, cap: int, *, re_anchor: str) -> int:
    """`offset` if within `cap`; else a 400 telling the client how to page instead."""
    if offset > cap:
        raise ApiError(
            400,
            f"offset is at most {cap}",
            [
                (
                    "offset",
                    f"at most {cap}: to page deeper, re-anchor with {re_anchor} on the "
                    "last record's timestamp (and after_id on its id, where the listing "
                    "advertises the X-Ordersync-Keyset: after_id extension)",
                )
            ],
        )
    return offset
