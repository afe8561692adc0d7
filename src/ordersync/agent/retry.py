"""The retry policy: a frozen value with production defaults, and the waits it prescribes."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff for transient failures; 429s wait what the server says.

    `attempts` bounds calls per request for 5xx, timeouts and resets; rate-limit waits have their
    own budget (`rate_limit_waits`) because a 429 is the server pacing us, not failing.
    """

    attempts: int = 6
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    rate_limit_waits: int = 20
    max_retry_after: float = 600.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed attempt number `attempt` (1-based): uniform in [0, cap]."""
        cap = min(self.maximum, self.initial * self.multiplier ** (attempt - 1))
        return rng.uniform(0.0, cap)


def parse_retry_after(value: str | None, now_ms: int) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unreadable. A date in the past means 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now_ms / 1000)


def parse_http_date_ms(value: str | None) -> int | None:
    """The server's clock from its `Date` header, in epoch milliseconds (second resolution)."""
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError):
        return None
