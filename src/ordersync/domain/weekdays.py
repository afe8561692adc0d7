"""Days of the week as ISO weekday numbers (1 = Monday .. 7 = Sunday), and HubRise's DOW text.

A DOW value is 7 characters, one per day from Monday to Sunday: the day's digit when the day is
included, `-` when it is not (`12345--` = Monday to Friday). The domain keeps a sorted tuple of
weekday numbers; DOW is only one way of writing it down.
"""

from __future__ import annotations

from collections.abc import Iterable

ISO_WEEKDAYS = range(1, 8)


def normalize_weekdays(days: Iterable[int]) -> tuple[int, ...]:
    """Sorted, without repeats; a number outside 1..7 is refused rather than wrapped."""
    chosen = set()
    for day in days:
        if isinstance(day, bool) or day not in ISO_WEEKDAYS:
            raise ValueError(f"{day!r} is not an ISO weekday (1 = Monday .. 7 = Sunday)")
        chosen.add(day)
    return tuple(sorted(chosen))


def parse_dow(text: str) -> tuple[int, ...]:
    """`"12----7"` -> (1, 2, 7). Strict: exactly 7 characters, position i is digit i or '-'."""
    if not isinstance(text, str) or len(text) != 7:
        raise ValueError(f"{text!r} is not a DOW value: expected 7 characters, e.g. 12345--")
    days = []
    for day, char in zip(ISO_WEEKDAYS, text, strict=True):
        if char == str(day):
            days.append(day)
        elif char != "-":
            raise ValueError(
                f"{text!r} is not a DOW value: character {day} must be {day} or '-', not {char!r}"
            )
    return tuple(days)


def format_dow(days: Iterable[int]) -> str:
    """(1, 2, 3, 4, 5) -> `"12345--"`."""
    chosen = set(normalize_weekdays(days))
    return "".join(str(day) if day in chosen else "-" for day in ISO_WEEKDAYS)
