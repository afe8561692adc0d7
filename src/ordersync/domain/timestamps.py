"""Timestamps are integer milliseconds since the Unix epoch, UTC, everywhere inside ordersync.

Integers compare exactly, index cheaply on SQLite and PostgreSQL alike, and cannot drift through
time-zone or float conversions. They become text only at the wire.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a naive datetime is refused rather than guessed."""
    if moment.tzinfo is None:
        raise ValueError("timestamp must carry a time zone offset (RFC 3339)")
    # round: the float product of a whole millisecond can fall just below it (e.g. 852.9999).
    return round(moment.timestamp() * 1000) if moment.microsecond % 1000 == 0 else _exact_ms(moment)


def _exact_ms(moment: datetime) -> int:
    # Truncate sub-millisecond digits instead of rounding: a filter "since T" must never
    # exclude the record stamped T.
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).replace(microsecond=(ms % 1000) * 1000)


def format_rfc3339(ms: int) -> str:
    """`2024-01-01T10:30:00.123Z`: UTC, always three fractional digits, always a 4-digit year
    (strftime's %Y writes year 999 as "999", which no RFC 3339 parser reads back)."""
    seconds, millis = divmod(ms, 1000)
    t = time.gmtime(seconds)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{millis:03d}Z"
    )


# The instants a stored record may carry: every one of them can be written in any time zone
# (offsets reach +-14 h) without leaving years 1..9999. A record stamped 9999-12-31T23:30Z was
# stored, then every HubRise rendering of it in Europe/Paris overflowed: a 500 on each listing.
RENDERABLE_MIN_MS = -62135510400000  # 0001-01-02T00:00:00.000Z
RENDERABLE_MAX_MS = 253402214399999  # 9999-12-30T23:59:59.999Z


def check_renderable(ms: int, text: str) -> int:
    """`ms` if a record may carry it; else ValueError naming `text` and the range."""
    if not RENDERABLE_MIN_MS <= ms <= RENDERABLE_MAX_MS:
        raise ValueError(f"{text!r} is outside the supported range 0001-01-02 to 9999-12-30")
    return ms


def parse_rfc3339_ms(text: str) -> int:
    """Parse an RFC 3339 timestamp with an offset (`Z` or `+02:00`) into epoch milliseconds."""
    # The form ordersync's hub sends, `2024-01-01T10:30:00.123Z`: the records of a listing page
    # share a handful of seconds, so each second is parsed once (by the general path) and kept.
    if (
        len(text) == 24
        and text[19] == "."
        and text[23] == "Z"
        and text[20:23].isascii()
        and text[20:23].isdigit()
    ):
        try:
            return _utc_second_ms(text[:19]) + int(text[20:23])
        except ValueError:
            pass  # the general path names the whole text in its message
    return _parse_general(text)


@functools.lru_cache(maxsize=1024)
def _utc_second_ms(second: str) -> int:
    return _parse_general(second + "Z")


def _parse_general(text: str) -> int:
    cleaned = text.strip()
    if cleaned[-1:] in ("z", "Z"):
        cleaned = cleaned[:-1] + "+00:00"
    if "T" not in cleaned.upper() and " " not in cleaned:
        raise ValueError(
            f"{text!r} is not an RFC 3339 date-time (expected e.g. 2024-01-01T10:30:00Z)"
        )
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an RFC 3339 date-time (expected e.g. 2024-01-01T10:30:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone offset; add Z or +hh:mm")
    try:
        return _exact_ms(moment)
    except OverflowError:
        raise ValueError(f"{text!r} is outside the supported range of dates") from None
