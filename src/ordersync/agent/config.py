"""The agent's configuration: a TOML file, then `ORDERSYNC_*` environment overrides.

    [[sources]]
    name = "masonhub"
    dialect = "masonhub"
    base_url = "http://127.0.0.1:8080/api/v1"
    token_env = "MASONHUB_TOKEN"
    interval = 300
    lookback = 120
    page_size = 100

    [sink]
    url = "sqlite:///erp-replica.db"

Overrides: ORDERSYNC_SINK_URL, ORDERSYNC_AGENT_PORT, and per source
ORDERSYNC_SOURCE_<NAME>_<KEY> for BASE_URL, INTERVAL, LOOKBACK, PAGE_SIZE, TOKEN_ENV.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ordersync.errors import ConfigurationError

Dialect = Literal["masonhub"]
Stream = Literal["orders", "shipments"]
STREAMS: tuple[Stream, ...] = ("orders", "shipments")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,50}$")
    dialect: Dialect = "masonhub"
    base_url: str
    token_env: str
    interval: float = Field(default=300, gt=0, description="seconds between polls")
    lookback: float = Field(default=120, ge=0, description="seconds re-read before the cursor")
    page_size: int = Field(default=100, ge=1, le=100)
    statuses: list[str] = Field(default_factory=list, description="status-based polling")
    streams: list[Stream] = Field(default_factory=lambda: list(STREAMS))

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
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(raw, environ, origin=str(path))


def parse_config(
    raw: dict[str, Any], environ: Mapping[str, str] = os.environ, origin: str = "config"
) -> AgentConfig:
    merged = _apply_env(raw, environ)
    try:
        return AgentConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{_key(err['loc'], merged)}: {err['msg']}" for err in exc.errors())
        raise ConfigurationError(f"{origin}: {problems}") from None


def _key(loc: tuple[Any, ...], merged: dict[str, Any]) -> str:
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i > 0 and loc[i - 1] == "sources":
            name = (merged.get("sources") or [{}])[part].get("name", part)
            parts[-1] = f"sources[{name}]"
        else:
            parts.append(str(part))
    return ".".join(parts)


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    merged = {**raw, "sink": dict(raw.get("sink") or {})}
    merged["sources"] = [dict(s) for s in raw.get("sources") or []]
    if "ORDERSYNC_SINK_URL" in environ:
        merged["sink"]["url"] = environ["ORDERSYNC_SINK_URL"]
    if "ORDERSYNC_AGENT_PORT" in environ:
        merged["port"] = int(environ["ORDERSYNC_AGENT_PORT"])
    for source in merged["sources"]:
        prefix = f"ORDERSYNC_SOURCE_{str(source.get('name', '')).upper().replace('-', '_')}_"
        for key in ("base_url", "interval", "lookback", "page_size", "token_env"):
            if prefix + key.upper() in environ:
                source[key] = environ[prefix + key.upper()]
    return merged
