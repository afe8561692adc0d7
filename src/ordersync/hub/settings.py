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
    faults: FaultSettings = field(default_factory=FaultSettings)
    quotas: QuotaPolicy = field(default_factory=QuotaPolicy.hubrise_default)
    quota_store: str = "auto"  # auto (memory on SQLite, SQL on PostgreSQL) | memory | sql
    quota_clock: Callable[[], float] = time.time  # tests cross quota windows without waiting
    # PostgreSQL connections per worker process: `db_pool_size` kept open, up to
    # `db_max_overflow` more under load. Keep workers x (pool + overflow) below the server's
    # max_connections (README, "Connections and PgBouncer"). SQLite ignores both.
    db_pool_size: int = DB_POOL_SIZE
    db_max_overflow: int = DB_MAX_OVERFLOW

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
        if "ORDERSYNC_HUB_QUOTA_STORE" in env:
            values["quota_store"] = env["ORDERSYNC_HUB_QUOTA_STORE"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
