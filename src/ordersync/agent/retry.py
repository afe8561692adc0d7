"""Retries of the agent's HTTP calls, in one place: the platform client and the HTTP sink.

`RetryPolicy` is the frozen value (production defaults); `Retrier` runs one call under it with
`stamina.retry_context`: stamina drives the attempts (and its global switches, e.g.
`stamina.set_active(False)`, apply), the policy prescribes each wait, and the injected `sleep`
waits it. Stamina's own sleep cannot be injected, so it is handed a zero wait: tests then record
the policy's waits (and advance a fake clock by them) instead of waiting.

An attempt signals a failure worth retrying by raising `Transient`; anything else ends the call
at once. When the policy gives up, `RetriesSpent` carries the last `Transient` and says why; the
caller translates it into its own error (`RetriesExhausted`, `RateLimited`, `SinkError`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

import stamina

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff for transient failures; 429s wait what the server says.

    `attempts` bounds calls per request for 5xx, timeouts, resets and deadline hits; rate-limit
    waits have their own budget (`rate_limit_waits`) because a 429 is the server pacing us, not
    failing.
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


class Transient(Exception):
    """One failed attempt worth retrying: its reason (a metric label), whether the server was
    pacing us (429), and the wait it asked for (Retry-After), if any."""

    def __init__(
        self, reason: str, retry_after: float | None = None, *, rate_limited: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class RetriesSpent(Exception):
    """The policy gave up; `why` reads after the request's name ("failed 6 times, ...")."""

    def __init__(self, why: str, last: Transient) -> None:
        super().__init__(why)
        self.why = why
        self.last = last
        self.rate_limited = last.rate_limited


class Retrier:
    """Runs calls under one `RetryPolicy`; `on_retry(transient)` is told of each retry."""

    def __init__(
        self,
        policy: RetryPolicy = RetryPolicy(),
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[Transient], None] | None = None,
        retry_after_kept_elsewhere: bool = False,
    ) -> None:
        self.policy = policy
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.on_retry = on_retry
        # A quota budget that already holds the next request back until Retry-After has passed
        # (agent/budget.py): waiting here too would wait twice.
        self.retry_after_kept_elsewhere = retry_after_kept_elsewhere

    async def call(self, attempt: Callable[[int], Awaitable[T]]) -> T:
        """`attempt(n)` (n from 1) until it returns, raises something other than `Transient`,
        or the policy gives up (`RetriesSpent`, from the last `Transient`)."""
        run = _Run(self)
        try:
            async for trial in stamina.retry_context(
                on=run.decide,
                attempts=None,
                timeout=None,
                wait_initial=0.0,
                wait_max=0.0,
                wait_jitter=0.0,
            ):
                with trial:
                    if trial.num > 1:
                        await self.sleep(run.wait)
                    return await attempt(trial.num)
        except Transient as last:
            raise RetriesSpent(run.verdict or f"failed: {last.reason}", last) from last
        raise AssertionError("unreachable: stamina ends with a result or an exception")


class _Run:
    """The retry decisions of one call: counts so far and the wait before the next attempt."""

    def __init__(self, retrier: Retrier) -> None:
        self.retrier = retrier
        self.failures = 0
        self.rate_limited = 0
        self.wait = 0.0
        self.verdict: str | None = None

    def decide(self, exc: Exception) -> bool | float:
        """Stamina's backoff hook: False ends the call, a number retries it. The number is
        stamina's own wait (none); ours is `self.wait`, slept through the injected sleep."""
        if not isinstance(exc, Transient):
            return False
        wait = self._rate_limit_wait(exc) if exc.rate_limited else self._failure_wait(exc)
        if wait is None:
            return False
        self.wait = wait
        if self.retrier.on_retry is not None:
            self.retrier.on_retry(exc)
        return 0.0

    def _rate_limit_wait(self, transient: Transient) -> float | None:
        policy, retrier = self.retrier.policy, self.retrier
        self.rate_limited += 1
        if self.rate_limited > policy.rate_limit_waits:
            self.verdict = f"still rate limited after {self.rate_limited - 1} waits"
            return None
        if transient.retry_after is None:
            return policy.backoff(self.rate_limited, retrier.rng)
        if retrier.retry_after_kept_elsewhere:
            return 0.0
        if transient.retry_after > policy.max_retry_after:
            self.verdict = (
                f"asks to wait {transient.retry_after:.0f} s (Retry-After), more than the "
                f"policy's {policy.max_retry_after:.0f} s"
            )
            return None
        return transient.retry_after  # never less than the server asked

    def _failure_wait(self, transient: Transient) -> float | None:
        policy = self.retrier.policy
        self.failures += 1
        if self.failures >= policy.attempts:
            self.verdict = f"failed {self.failures} times, last: {transient.reason}"
            return None
        # A 503 with Retry-After names the earliest useful retry; jitter may only add to it.
        backoff = policy.backoff(self.failures, self.retrier.rng)
        return max(backoff, transient.retry_after or 0.0)


def parse_retry_after(value: str | None, now_ms: int) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unreadable. A date in the past means 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not "²": str.isdigit takes it, float() does not
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return max(0.0, moment.timestamp() - now_ms / 1000)


def parse_http_date_ms(value: str | None) -> int | None:
    """The server's clock from its `Date` header, in epoch milliseconds (second resolution)."""
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp() * 1000)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
