"""Fault injection: the imperfections a real platform has, on demand (off by default).

Integrations must survive server errors, 429 bursts, slow responses, connections dropped
mid-response and commits that become visible late. Tests, benchmarks and `ordersync demo
--faults` turn these on; `FaultSettings()` with its defaults injects nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordersync.hub.errors import ApiError, error_response


@dataclass(frozen=True)
class FaultSettings:
    error_rate: float = 0.0  # share of API requests answered 503
    throttle_rate: float = 0.0  # share answered 429 with Retry-After
    throttle_retry_after: int = 1
    latency_ms: int = 0  # each API request is delayed by up to this much
    reset_rate: float = 0.0  # share whose connection drops mid-response
    late_commit_rate: float = 0.0  # share of writes stamped up to late_commit_ms in the past
    late_commit_ms: int = 0
    seed: int | None = None

    @classmethod
    def demo(cls, seed: int | None = None) -> FaultSettings:
        """The profile of `--faults`: frequent enough to see, rare enough to make progress."""
        return cls(
            error_rate=0.03,
            throttle_rate=0.03,
            latency_ms=150,
            reset_rate=0.02,
            late_commit_rate=0.05,
            late_commit_ms=1500,
            seed=seed,
        )

    @property
    def any_http(self) -> bool:
        return bool(self.error_rate or self.throttle_rate or self.latency_ms or self.reset_rate)


class FaultInjector:
    """ASGI middleware injecting HTTP-level faults on API paths (never on /healthz)."""

    def __init__(self, app: ASGIApp, settings: FaultSettings, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.settings = settings
        self.prefixes = prefixes
        self.rng = random.Random(settings.seed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        s, roll = self.settings, self.rng.random()
        if s.latency_ms:
            await asyncio.sleep(self.rng.uniform(0, s.latency_ms) / 1000)
        if roll < s.error_rate:
            await error_response(
                ApiError(
                    503,
                    "injected fault: service unavailable",
                    error_type="service_unavailable",
                    headers={"Retry-After": "1"},
                )
            )(scope, receive, send)
            return
        roll -= s.error_rate
        if roll < s.throttle_rate:
            retry = str(s.throttle_retry_after)
            await error_response(
                ApiError(429, f"injected fault: retry in {retry} s", headers={"Retry-After": retry})
            )(scope, receive, send)
            return
        roll -= s.throttle_rate
        if roll < s.reset_rate:
            await self.app(scope, receive, _cut_after_headers(send))
            return
        await self.app(scope, receive, send)


class _ConnectionCut(Exception):
    pass


def _cut_after_headers(send: Send) -> Send:
    """Send the headers, then drop the connection before the body: the client sees a reset."""

    async def cut(message: Message) -> None:
        if message["type"] == "http.response.start":
            await send(message)
            return
        raise _ConnectionCut("injected fault: connection dropped mid-response")

    return cut


def late_commit_clock(clock: Callable[[], int], settings: FaultSettings) -> Callable[[], int]:
    """A hub clock that sometimes answers from the past: a transaction that began earlier and
    became visible late, so its `updated_at` is older than records already served."""
    if not settings.late_commit_rate or not settings.late_commit_ms:
        return clock
    rng = random.Random(settings.seed)

    def stamped() -> int:
        now = clock()
        if rng.random() < settings.late_commit_rate:
            return now - rng.randint(1, settings.late_commit_ms)
        return now

    return stamped
