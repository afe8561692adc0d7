"""Fault injection: the imperfections a real platform has, on demand (off by default).

Integrations must survive server errors, 429 bursts, slow responses, connections dropped
mid-response, commits that become visible late and webhooks that never arrive. Tests,
benchmarks, `ordersync demo --faults` and `ordersync hub serve --faults PROFILE|SPEC` turn
these on; `FaultSettings()` with its defaults injects nothing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordersync.errors import ConfigurationError
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
    # Share of webhook deliveries lost on the way: the hub's dispatcher records them delivered
    # without sending them (as a platform whose request vanished behind a proxy that answered
    # 2xx, or that gave up on it). Only polling brings those changes (`hub/webhooks.py`).
    webhook_drop_rate: float = 0.0
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
            webhook_drop_rate=0.05,
            seed=seed,
        )

    @classmethod
    def parse(cls, text: str) -> FaultSettings:
        """`hub serve --faults`: profiles and KEY=VALUE items, comma-separated, applied left to
        right (`demo,latency=0` is the demo profile without latency). See `PROFILES`, `_KEYS`."""
        settings = cls()
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq:
                if key not in PROFILES:
                    raise ConfigurationError(
                        f"--faults: unknown profile {item!r}; use one of {', '.join(PROFILES)}"
                        f" or KEY=VALUE with KEY in {', '.join(_KEYS)}"
                    )
                settings = replace(PROFILES[key], seed=settings.seed)
                continue
            if key not in _KEYS:
                raise ConfigurationError(
                    f"--faults: unknown key {key!r} in {item!r}; use {', '.join(_KEYS)}"
                )
            field_name, kind = _KEYS[key]
            changes: dict[str, Any] = {field_name: _fault_value(item, value.strip(), kind)}
            settings = replace(settings, **changes)
        return settings

    @property
    def any(self) -> bool:
        return (
            self.any_http
            or bool(self.late_commit_rate and self.late_commit_ms)
            or bool(self.webhook_drop_rate)
        )

    @property
    def any_http(self) -> bool:
        return bool(self.error_rate or self.throttle_rate or self.latency_ms or self.reset_rate)


PROFILES: dict[str, FaultSettings] = {
    "off": FaultSettings(),
    "demo": FaultSettings.demo(),
    "errors": FaultSettings(error_rate=0.1),
    "throttle": FaultSettings(throttle_rate=0.2, throttle_retry_after=2),
    "slow": FaultSettings(latency_ms=1000),
    "resets": FaultSettings(reset_rate=0.05),
    "late": FaultSettings(late_commit_rate=0.2, late_commit_ms=3000),
}

# --faults KEY -> (FaultSettings field, "rate" 0..1 | "int" >= 0)
_KEYS: dict[str, tuple[str, str]] = {
    "error": ("error_rate", "rate"),
    "throttle": ("throttle_rate", "rate"),
    "retry-after": ("throttle_retry_after", "int"),
    "latency": ("latency_ms", "int"),
    "reset": ("reset_rate", "rate"),
    "late": ("late_commit_rate", "rate"),
    "late-ms": ("late_commit_ms", "int"),
    "webhook-drop": ("webhook_drop_rate", "rate"),
    "seed": ("seed", "int"),
}


def _fault_value(item: str, text: str, kind: str) -> float | int:
    try:
        if kind == "int":
            number = int(text.removesuffix("ms").removesuffix("s"))
            if number < 0:
                raise ValueError
            return number
        rate = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        if not 0 <= rate <= 1:
            raise ValueError
        return rate
    except ValueError:
        wanted = "a whole number >= 0" if kind == "int" else "a rate from 0 to 1, or 0% to 100%"
        raise ConfigurationError(f"--faults: {item!r} needs {wanted}") from None


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
