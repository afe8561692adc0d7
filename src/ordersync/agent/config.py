"""The agent's configuration: a TOML file, then `ORDERSYNC_*` environment overrides.

    standby = true                   # another agent holds the replica: wait (false: exit 4)

    [[sources]]
    name = "masonhub"
    dialect = "masonhub"
    base_url = "http://127.0.0.1:8080/api/v1"
    token_env = "MASONHUB_TOKEN"
    interval = 300
    lookback = 120                   # unset: ordersync's hub's advertised commit lag, else 120
    page_size = 100

    [[sources]]                      # Tradecloud (/v2): Basic auth as the connection
    name = "tradecloud"
    dialect = "tradecloud"
    base_url = "https://api.accp.tradecloud1.com/v2"
    token_env = "TRADECLOUD_TOKEN"
    connection_name = "erp-agent"    # Basic user; also recognises our own changes (echo)
    echo = "skip"                    # default: mark our own changes as echoes ("apply": don't)

    [[sources]]                      # HubRise (/v1): X-Access-Token, backfill then callback
    name = "hubrise"
    dialect = "hubrise"
    base_url = "https://api.hubrise.com/v1"
    token_env = "HUBRISE_TOKEN"
    quota = ["500/minute", "2500/hour", "10000/day", "heavy:10/minute"]  # paced, never a 429
    webhook_secrets = ["whsec_..."]  # POST /webhooks/hubrise on `port`; two while rotating

    [sink]
    url = "sqlite:///erp-replica.db"

`state_dir` (default: the config file's directory; relative to it) holds an HTTP sink's
cursors (`ordersync-http-sink-state.json`) and its lease file.

Webhooks (README, "Webhooks into the agent"): a source with `webhook_secrets` takes signed
deliveries at `POST /webhooks/<name>` on the agent's `port`, into an inbox in a SQL replica;
`webhook_tolerance` (seconds, default 300) bounds a delivery's timestamp skew and
`webhook_max_body` (bytes) its size.

Overrides: ORDERSYNC_SINK_URL, ORDERSYNC_AGENT_PORT, ORDERSYNC_AGENT_BIND,
ORDERSYNC_AGENT_WEBHOOK_TOLERANCE, and per source ORDERSYNC_SOURCE_<NAME>_<KEY> for BASE_URL,
INTERVAL, LOOKBACK, PAGE_SIZE, TOKEN_ENV, CONNECTION_NAME, ECHO and WEBHOOK_SECRETS (secrets
separated by spaces or commas).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ordersync.agent.budget import Quota, parse_quotas
from ordersync.errors import ConfigurationError

Dialect = Literal["masonhub", "tradecloud", "hubrise"]
Auth = Literal["bearer", "basic", "access-token"]
DEFAULT_AUTH: dict[str, Auth] = {
    "masonhub": "bearer",
    "tradecloud": "basic",
    "hubrise": "access-token",
}
Stream = Literal["orders", "shipments", "inventory"]
STREAMS: tuple[Stream, ...] = ("orders", "shipments")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,50}$")
    dialect: Dialect = "masonhub"
    base_url: str
    token_env: str
    interval: float = Field(default=300, gt=0, description="seconds between polls")
    # Unset, against ordersync's hub: the commit lag the hub advertises (preflight, see
    # `platforms.advertised_lookback_ms`); elsewhere 120 s.
    lookback: float = Field(
        default=120,
        ge=0,
        description="seconds re-read before the cursor (default: the hub's advertised "
        "commit lag, else 120)",
    )
    page_size: int = Field(
        default=100, ge=2, le=100, description="one slot of each page re-checks the last"
    )
    statuses: list[str] = Field(default_factory=list, description="status-based polling")
    streams: list[Stream] = Field(default_factory=lambda: list(STREAMS))
    auth: Auth | None = Field(default=None, description="default: the dialect's own scheme")
    connection_name: str | None = Field(default=None, description="Basic user; echo detection")
    echo: Literal["skip", "apply"] = Field(
        default="skip", description="tradecloud: mark our own connection's changes as echoes"
    )
    quota: list[str] = Field(
        default_factory=list,
        description='known quotas, [heavy:]LIMIT/PERIOD, e.g. ["500/minute", "heavy:10/minute"]',
    )

    webhook_secrets: list[str] = Field(
        default_factory=list,
        description="whsec_<base64> secrets of POST /webhooks/<name>; several while rotating",
    )

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _secret_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the environment: "whsec_a whsec_b" or comma-separated
            return [part for part in re.split(r"[\s,]+", value) if part]
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _secrets_decode(cls, value: list[str]) -> list[str]:
        from ordersync.agent.webhooks import decode_secret

        for secret in value:
            decode_secret(secret)  # a ValueError says what a secret looks like
        return value

    @property
    def auth_scheme(self) -> Auth:
        return self.auth or DEFAULT_AUTH[self.dialect]

    @model_validator(mode="after")
    def _dialect_options(self) -> SourceConfig:
        if self.auth_scheme == "basic" and not self.connection_name:
            raise ValueError("Basic auth needs connection_name (the connection's user name)")
        if self.dialect == "tradecloud" and self.echo == "skip" and not self.connection_name:
            raise ValueError("echo = 'skip' needs connection_name to recognise our own changes")
        if self.statuses and self.dialect != "masonhub":
            raise ValueError("statuses (status-based polling) is for the masonhub dialect only")
        if "inventory" in self.streams and self.dialect == "tradecloud":
            raise ValueError(
                "the inventory stream is for the masonhub and hubrise dialects: Tradecloud "
                "has no inventory"
            )
        return self

    @field_validator("quota")
    @classmethod
    def _quota_entries(cls, value: list[str]) -> list[str]:
        parse_quotas(value)  # a ValueError names the entry and shows an example
        return value

    @property
    def quotas(self) -> tuple[Quota, ...]:
        return parse_quotas(self.quota)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/]+", value):
            raise ValueError("must be an http(s):// URL, e.g. http://127.0.0.1:8080/api/v1")
        return value.rstrip("/")

    def token(self, environ: Mapping[str, str]) -> str:
        token = environ.get(self.token_env, "").strip()
        if not token:
            raise ConfigurationError(
                f"source {self.name!r}: environment variable {self.token_env} is not set; "
                f"export {self.token_env}=<token> (ordersync hub token create prints one)"
            )
        return token


class SinkConfig(_Strict):
    url: str = "sqlite:///erp-replica.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not re.match(r"^(sqlite|postgresql|postgres|jsonl|https?)(\+\w+)?://", value):
            raise ValueError(
                "use sqlite:///FILE, postgresql://..., jsonl:///PATH or an http(s):// ERP URL"
            )
        return value


class AgentConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    sink: SinkConfig = Field(default_factory=SinkConfig)
    port: int | None = Field(default=None, ge=0, le=65535, description="metrics HTTP port")
    bind: str = Field(
        default="127.0.0.1", min_length=1, description="address the status/metrics port binds"
    )
    state_dir: Path | None = Field(
        default=None,
        description="the HTTP sink's state file goes here; default: the config file's directory",
    )
    standby: bool = Field(
        default=True,
        description="another agent holds the replica: wait as hot standby (true) or exit 4",
    )

    webhook_tolerance: float = Field(
        default=300, gt=0, description="seconds a webhook's timestamp may be off the clock"
    )
    webhook_max_body: int = Field(
        default=1_048_576, ge=1024, description="largest webhook body accepted, in bytes"
    )

    @model_validator(mode="after")
    def _webhooks_need_an_inbox(self) -> AgentConfig:
        takers = [s.name for s in self.sources if s.webhook_secrets]
        if not takers:
            return self
        if not re.match(r"^(sqlite|postgresql|postgres)(\+\w+)?://", self.sink.url):
            raise ValueError(
                f"webhooks ({', '.join(takers)}) need a SQL replica (sqlite:// or "
                "postgresql://): their inbox commits with the apply; a JSONL or HTTP sink "
                "syncs by polling only, remove webhook_secrets"
            )
        if self.port is None:
            raise ValueError(
                f"webhooks ({', '.join(takers)}) are received on the agent's HTTP port: "
                "set port (or ORDERSYNC_AGENT_PORT)"
            )
        return self

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        if len(names) != len(set(names)):
            raise ValueError("source names must be unique")
        return sources


def load_config(path: Path, environ: Mapping[str, str] = os.environ) -> AgentConfig:
    """Read, override and validate; any problem is a `ConfigurationError` naming the key."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    if "sink" not in raw and "ORDERSYNC_SINK_URL" not in environ:
        # Required: a default replica file in whatever directory the agent was started from
        # (under systemd, /) would be written silently, and looked for there next time.
        raise ConfigurationError(
            f"{path}: [sink] is missing: say where the replica goes, e.g. [sink] url = "
            '"sqlite:///erp-replica.db" (or postgresql://..., jsonl:///PATH, https://ERP/...), '
            "or set ORDERSYNC_SINK_URL"
        )
    config = parse_config(raw, environ, origin=str(path))
    # Relative to the config file, not to wherever the agent was started (under systemd, /).
    here = path.resolve().parent
    state_dir = here if config.state_dir is None else here / config.state_dir
    return config.model_copy(update={"state_dir": state_dir})


def parse_config(
    raw: dict[str, Any], environ: Mapping[str, str] = os.environ, origin: str = "config"
) -> AgentConfig:
    merged, from_env = _apply_env(raw, environ)
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = _key(err["loc"], merged)
            # An override's mistake is the variable's, not the file's.
            variable = from_env.get(key)
            # A mistyped secret is still nearly the secret: never echo it.
            shown = (
                "<hidden>" if key.endswith("webhook_secrets") else repr(environ.get(variable or ""))
            )
            problems.append(
                f"{variable}={shown} (environment, overriding {key} of {origin}): {err['msg']}"
                if variable
                else f"{origin}: {key}: {err['msg']}"
            )
        raise ConfigurationError("; ".join(problems)) from None


def _key(loc: tuple[Any, ...], merged: dict[str, Any]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i > 0 and loc[i - 1] == "sources":
            name = (merged.get("sources") or [{}])[part].get("name", part)
            parts[-1] = f"sources[{name}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _apply_env(
    raw: dict[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's settings with the environment's overrides, and which key came from which
    variable (as `_key` names it)."""
    merged = {**raw, "sink": dict(raw.get("sink") or {})}
    merged["sources"] = [dict(s) for s in raw.get("sources") or []]
    from_env: dict[str, str] = {}
    if "ORDERSYNC_SINK_URL" in environ:
        merged["sink"]["url"] = environ["ORDERSYNC_SINK_URL"]
        from_env["sink.url"] = "ORDERSYNC_SINK_URL"
    for key in ("port", "bind", "state_dir", "webhook_tolerance"):  # validated with the rest
        variable = f"ORDERSYNC_AGENT_{key.upper()}"
        if variable in environ:
            merged[key] = environ[variable]
            from_env[key] = variable
    for source in merged["sources"]:
        prefix = f"ORDERSYNC_SOURCE_{str(source.get('name', '')).upper().replace('-', '_')}_"
        for key in (
            "base_url",
            "interval",
            "lookback",
            "page_size",
            "token_env",
            "connection_name",
            "echo",
            "webhook_secrets",
        ):
            if prefix + key.upper() in environ:
                source[key] = environ[prefix + key.upper()]
                from_env[f"sources[{source.get('name')}].{key}"] = prefix + key.upper()
    return merged, from_env
