"""What the agent knows of each platform, in one place: its API root, default credentials, a
cheap preflight request, whether its numbers must be read exactly, how to poll it by hand, and
how its sources and feeds are built. A new platform is one `Platform` here plus its source."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ordersync.agent.client import ApiClient
from ordersync.agent.feeds import ChangeFeed
from ordersync.agent.feeds.hubrise import hubrise_feeds
from ordersync.agent.feeds.listing import ListingFeed, ListingSettings
from ordersync.agent.sources.hubrise import HubRiseSource
from ordersync.agent.sources.masonhub import MasonHubSource
from ordersync.agent.sources.tradecloud import TradecloudSource

if TYPE_CHECKING:
    from ordersync.agent.config import SourceConfig
    from ordersync.agent.engine import SourceInfo

Auth = Literal["bearer", "basic", "access-token"]
# A source's feeds from its client and configuration, with the engine's clock.
FeedBuilder = Callable[
    [ApiClient, "SourceConfig", Callable[[], int]], tuple["SourceInfo", list[ChangeFeed]]
]


@dataclass(frozen=True)
class Preflight:
    """One cheap read that proves the URL and the token: (method, path under the API root,
    query, JSON body)."""

    method: str
    path: str
    params: dict[str, Any]
    body: Any = None


@dataclass(frozen=True)
class Platform:
    dialect: str
    api_root: str  # the path the base URL ends with, e.g. /api/v1
    auth: Auth  # the platform's own credential scheme
    preflight: Preflight
    build: FeedBuilder
    exact_numbers: bool = False  # JSON numbers are read as Decimal, never float
    verifiable: bool = True  # a listing of ids and versions exists for `agent verify`
    curl: str = ""  # how to poll it by hand: {token}, {base_url}, {connection}


# ordersync's hub advertises on its listings how late a commit can become visible after its
# `updated_at` (README, "Event log"). Any other platform does not send it.
COMMIT_LAG_HEADER = "X-Ordersync-Commit-Lag-Ms"
_MAX_ADVERTISED_LAG_MS = 3_600_000  # an hour: anything larger is not believed


def advertised_lookback_ms(source: SourceConfig, headers: Mapping[str, str]) -> int | None:
    """The lookback to use instead of the default when the platform is ordersync's hub (its
    preflight answer advertises the commit lag) and the configuration did not set `lookback`
    (in the file or the environment): re-reading exactly that far back catches every late
    commit the hub allows, instead of the generic 120 s. None: keep the configured value."""
    if "lookback" in source.model_fields_set:
        return None
    raw = headers.get(COMMIT_LAG_HEADER)
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 10:
        return None
    lag = int(raw)
    return lag if 0 < lag <= _MAX_ADVERTISED_LAG_MS else None


def _listing(settings_of: SourceConfig) -> ListingSettings:
    return ListingSettings(
        lookback_ms=int(settings_of.lookback * 1000), page_size=settings_of.page_size
    )


def _masonhub(
    client: ApiClient, c: SourceConfig, clock: Callable[[], int]
) -> tuple[SourceInfo, list[ChangeFeed]]:
    source = MasonHubSource(
        client, name=c.name, streams=tuple(c.streams), statuses=tuple(c.statuses)
    )
    return source, [ListingFeed(source, s, _listing(c), clock=clock) for s in source.streams]


def _tradecloud(
    client: ApiClient, c: SourceConfig, clock: Callable[[], int]
) -> tuple[SourceInfo, list[ChangeFeed]]:
    source = TradecloudSource(
        client,
        name=c.name,
        streams=tuple(c.streams),
        connection_name=c.connection_name,
        echo=c.echo,
    )
    return source, [ListingFeed(source, s, _listing(c), clock=clock) for s in source.streams]


def _hubrise(
    client: ApiClient, c: SourceConfig, clock: Callable[[], int]
) -> tuple[SourceInfo, list[ChangeFeed]]:
    source = HubRiseSource(client, name=c.name, streams=tuple(c.streams))
    return source, hubrise_feeds(source, c.page_size, listing=_listing(c), clock=clock)


PLATFORMS: dict[str, Platform] = {
    "masonhub": Platform(
        "masonhub",
        "/api/v1",
        "bearer",
        # A listing: it answers with the hub's X-Ordersync-Commit-Lag-Ms, if any.
        Preflight("GET", "/orders", {"limit": 1, "list_type": "summary"}),
        _masonhub,
        curl="curl -H 'Authorization: Bearer {token}' "
        "'{base_url}/orders?updated_since=2020-01-01T00:00:00Z&limit=100'",
    ),
    "tradecloud": Platform(
        "tradecloud",
        "/v2",
        "basic",
        Preflight("POST", "/order-search/poll", {}, {"filters": {}, "limit": 1}),
        _tradecloud,
        exact_numbers=True,
        curl="curl -u '{connection}:{token}' -H 'Content-Type: application/json' "
        '-d \'{{"filters": {{"lastUpdatedAfter": "2020-01-01T00:00:00.000Z"}}}}\' '
        "'{base_url}/order-search/poll'",
    ),
    "hubrise": Platform(
        "hubrise",
        "/v1",
        "access-token",
        Preflight("GET", "/callback", {}),
        _hubrise,
        verifiable=False,
        curl="curl -H 'X-Access-Token: {token}' '{base_url}/location/orders?count=100'",
    ),
}
