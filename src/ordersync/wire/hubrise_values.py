"""HubRise's common data types (seed 003, section 5), as text <-> values, for hub and agent alike.

- Money: 2 decimals, a space, the ISO 4217 currency: `"8.90 EUR"`, `"-0.05 GBP"`.
- Decimals: strings, never floats: `"1"`, `"-2.5"`.
- Times: ISO 8601 in the location's time zone: `"2020-08-20T06:42:46+02:00"`.
- DOW: 7 characters, Monday to Sunday, a day's digit or `-`: `"12345--"` (see `domain.weekdays`).

One function per type and direction, one strictness: what the hub refuses in a request body
the agent refuses in a document it receives.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ordersync.domain.timestamps import from_ms, to_ms

_MONEY = re.compile(r"-?\d+\.\d{2} [A-Z]{3}")
_DECIMAL = re.compile(r"-?\d+(\.\d+)?")
_CENT = Decimal("0.01")


# Wide enough for a line's subtotal to be exact: the domain keeps quantities and prices to 30
# digits each (their product, 60, plus the cents). The default context (28 digits) rounded
# such products and could not quantize them to the cent at all: InvalidOperation, a 500 on
# every HubRise listing of an account holding one such order.
EXACT = Context(prec=100, rounding=ROUND_HALF_UP)


def format_money(amount: Decimal, currency: str) -> str:
    """Rounded half up to the cent: HubRise has no sub-cent amounts."""
    cents = amount.quantize(_CENT, rounding=ROUND_HALF_UP, context=EXACT)
    if cents == 0:
        cents = abs(cents)  # never "-0.00"
    return f"{cents:f} {currency}"


def parse_money(text: object) -> tuple[Decimal, str]:
    if not isinstance(text, str) or not _MONEY.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid monetary amount (expected e.g. '8.90 EUR')")
    amount, _, currency = text.partition(" ")
    return Decimal(amount), currency


def subtotal(price: Decimal, quantity: Decimal, currency: str) -> str:
    """A line's price x quantity as money, computed exactly (then rounded to the cent)."""
    return format_money(EXACT.multiply(price, quantity), currency)


def format_decimal(value: Decimal) -> str:
    """The shortest exact text: Decimal('2.000') -> "2", Decimal('1E+2') -> "100"."""
    return "0" if value == 0 else f"{value.normalize():f}"


def parse_decimal(value: object) -> Decimal:
    """A decimal string such as "-2.5"; a JSON integer is taken too (HubRise's own examples
    send quantities as 2). Floats are refused: they are exactly what decimal strings avoid."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a decimal value (expected a string such as '2.5')")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        try:
            return Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern already excludes these
            pass
    raise ValueError(f"{value!r} is not a decimal value (expected a string such as '2.5')")


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_time(ms: int, tz: ZoneInfo) -> str:
    """ISO 8601 in `tz`, to the second as HubRise writes times, with milliseconds when the
    instant has them (the hub stamps to the millisecond; dropping them would blur order)."""
    local = from_ms(ms).astimezone(tz)
    return local.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")


def parse_time(text: object, tz: ZoneInfo | None) -> int:
    """Epoch milliseconds of an ISO 8601 date-time; without an offset (or a plain date, taken
    as its midnight) it is read in the location's time zone, as HubRise renders times there.
    A client that does not know the location's zone (`tz` None) needs the offset."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"{text!r} is not an ISO 8601 time (expected e.g. 2020-08-20T06:42:46+02:00)"
        )
    cleaned = text.strip()
    bad = ValueError(f"{text!r} is not an ISO 8601 time (expected e.g. 2020-08-20T06:42:46+02:00)")
    try:
        if len(cleaned) == 10:
            moment = datetime.combine(date.fromisoformat(cleaned), time(0))
        else:
            moment = datetime.fromisoformat(cleaned.replace("z", "Z"))
    except ValueError:
        raise bad from None
    if moment.tzinfo is None:
        if tz is None:
            raise ValueError(
                f"{text!r} has no UTC offset (expected e.g. 2020-08-20T06:42:46+02:00)"
            )
        moment = moment.replace(tzinfo=tz)
    try:
        return to_ms(moment.astimezone(UTC))
    except (ValueError, OverflowError):
        raise bad from None
