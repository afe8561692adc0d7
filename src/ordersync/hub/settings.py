"""The hub's settings: one frozen object, from the CLI or `HubSettings.from_env()`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ordersync.errors import ConfigurationError
from ordersync.hub import DEFAULT_DB_URL
from ordersync.hub.faults import FaultSettings
from ordersync.hub.offsets import MAX_OFFSET
from ordersync.quotas import QuotaPolicy
from ordersync.store.engine import DB_MAX_OVERFLOW, DB_POOL_SIZE


@dataclass(frozen=True)
class HubSettings:
    db_url: str = DEFAULT_DB_URL
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    # The deepest listing offset served (see hub/offsets.py); raised only for baselines that
    # page a whole backlog by offset, as a generic offset paginator does.
    max_offset: int = MAX_OFFSET
    simulate_rate: float = 0.0
    simulate_seed: int | None = None
    simulate_account: str = "demo"
    # The warehouse worker without the order generator, in every worker process (`hub serve
    # --warehouse`): it moves the account's orders; several run side by side.
    warehouse: bool = False
    # The warehouse: how long a single_shipment order waits for one location that can fill it
    # before it fails (README, "Warehouse simulator").
    single_shipment_wait_ms: int = 10 * 60 * 1000
    faults: FaultSettings = field(default_factory=FaultSettings)
    quotas: QuotaPolicy = field(default_factory=QuotaPolicy.hubrise_default)
    quota_store: str = "auto"  # auto (memory on SQLite, SQL on PostgreSQL) | memory | sql
    quota_clock: Callable[[], float] = time.time  # tests cross quota windows without waiting
    # Event log retention: events older than this are pruned (a follower positioned before
    # them gets 410 position_pruned); each worker prunes every `event_prune_interval_s`.
    event_retention_days: float = 30.0
    event_prune_interval_s: float = 300.0
    # Idempotency keys are kept at least this long (then pruned, every event_prune_interval_s).
    idempotency_hours: float = 24.0
    # Webhook delivery (README, "Webhooks"): each worker sends queued events every
    # `webhook_interval_s` when idle (False: this worker sends none); the retry waits in seconds
    # (Standard Webhooks' default; tests compress them).
    webhook_delivery: bool = True
    webhook_interval_s: float = 0.5
    webhook_retry_schedule_s: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    webhook_timeout_s: float = 15.0
    # A write must commit within this of its start, else it is rolled back (503); also the
    # PostgreSQL statement_timeout and idle_in_transaction_session_timeout. The advertised
    # commit lag (X-Ordersync-Commit-Lag-Ms) is derived from it (store.commit_lag_ms).
    write_timeout_ms: int = 5_000
    # TEST ONLY: shift this hub's clock by so many ms (positive: ahead), to run hubs whose
    # clocks disagree. Never set it in production.
    clock_skew_ms: int = 0
    # Logging of `hub serve` (each worker configures its own): the access log is at info.
    access_log: bool = False  # `hub serve` turns it on; in-process hubs (demo, bench) stay quiet
    log_level: str = "info"
    log_format: str = "json"  # json | console
    # PostgreSQL connections per worker process: `db_pool_size` kept open, up to
    # `db_max_overflow` more under load. Keep workers x (pool + overflow) below the server's
    # max_connections (README, "Connections and PgBouncer"). SQLite ignores both.
    db_pool_size: int = DB_POOL_SIZE
    db_max_overflow: int = DB_MAX_OVERFLOW
    # MasonHub asynchronous writes: a request is resolved once this old (each worker looks
    # every `request_resolve_interval_s`). The sandbox triggers (/api/v1/sandbox/...) are
    # served when `sandbox` is true; None: on with the simulator (`hub serve --simulate`).
    request_resolve_delay_ms: int = 3_000
    request_resolve_interval_s: float = 1.0
    sandbox: bool | None = None

    @property
    def sandbox_enabled(self) -> bool:
        return self.simulate_rate > 0 if self.sandbox is None else self.sandbox

    def __post_init__(self) -> None:
        if self.db_pool_size < 1:
            raise ConfigurationError(
                f"the database pool size (ORDERSYNC_HUB_DB_POOL_SIZE) must be at least 1,"
                f" got {self.db_pool_size}"
            )
        if self.db_max_overflow < 0:
            raise ConfigurationError(
                f"the database pool overflow (ORDERSYNC_HUB_DB_MAX_OVERFLOW) must be at least 0,"
                f" got {self.db_max_overflow}"
            )

    @classmethod
    def from_env(cls, **overrides: object) -> HubSettings:
        """Defaults, then `ORDERSYNC_HUB_*` variables, then explicit overrides (the CLI's)."""
        env = os.environ
        values: dict[str, object] = {}
        if "ORDERSYNC_HUB_DB" in env:
            values["db_url"] = env["ORDERSYNC_HUB_DB"]
        if "ORDERSYNC_HUB_MAX_BODY_BYTES" in env:
            values["max_body_bytes"] = int(env["ORDERSYNC_HUB_MAX_BODY_BYTES"])
        if "ORDERSYNC_HUB_MAX_OFFSET" in env:
            values["max_offset"] = int(env["ORDERSYNC_HUB_MAX_OFFSET"])
        if "ORDERSYNC_HUB_QUOTAS" in env:  # changes to the defaults, as `serve --quota` takes
            values["quotas"] = QuotaPolicy.from_specs(
                env["ORDERSYNC_HUB_QUOTAS"], QuotaPolicy.hubrise_default()
            )
        if "ORDERSYNC_HUB_FAULTS" in env:
            values["faults"] = FaultSettings.parse(env["ORDERSYNC_HUB_FAULTS"])
        if "ORDERSYNC_HUB_LOG_LEVEL" in env:
            values["log_level"] = env["ORDERSYNC_HUB_LOG_LEVEL"].lower()
        for key, name in (
            ("ORDERSYNC_HUB_DB_POOL_SIZE", "db_pool_size"),
            ("ORDERSYNC_HUB_DB_MAX_OVERFLOW", "db_max_overflow"),
        ):
            if key in env:
                try:
                    values[name] = int(env[key])
                except ValueError:
                    raise ConfigurationError(
                        f"{key} must be a whole number, got {env[key]!r}"
                    ) from None
        if "ORDERSYNC_HUB_SANDBOX" in env:
            values["sandbox"] = env["ORDERSYNC_HUB_SANDBOX"].lower() in ("1", "true", "yes", "on")
        if "ORDERSYNC_HUB_QUOTA_STORE" in env:
            values["quota_store"] = env["ORDERSYNC_HUB_QUOTA_STORE"]
        for key, name, kind in _NUMBERS:
            if name in env:
                values[key] = _number(name, env[name], kind)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


_NUMBERS: tuple[tuple[str, str, type[int] | type[float]], ...] = (
    ("event_retention_days", "ORDERSYNC_HUB_EVENT_RETENTION_DAYS", float),
    ("event_prune_interval_s", "ORDERSYNC_HUB_EVENT_PRUNE_INTERVAL_S", float),
    ("idempotency_hours", "ORDERSYNC_HUB_IDEMPOTENCY_HOURS", float),
    ("webhook_interval_s", "ORDERSYNC_HUB_WEBHOOK_INTERVAL_S", float),
    ("webhook_timeout_s", "ORDERSYNC_HUB_WEBHOOK_TIMEOUT_S", float),
    ("write_timeout_ms", "ORDERSYNC_HUB_WRITE_TIMEOUT_MS", int),
    ("clock_skew_ms", "ORDERSYNC_HUB_CLOCK_SKEW_MS", int),
    ("request_resolve_delay_ms", "ORDERSYNC_HUB_REQUEST_RESOLVE_DELAY_MS", int),
    ("request_resolve_interval_s", "ORDERSYNC_HUB_REQUEST_RESOLVE_INTERVAL_S", float),
)


def _number(name: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a number") from None
    if name != "ORDERSYNC_HUB_CLOCK_SKEW_MS" and not value > 0:
        raise ConfigurationError(f"{name}={raw!r} must be positive")
    return value
