"""Request quotas, shared by the hub (which enforces them) and the agent (which paces itself).

Pure: no web framework, no database. Four things live here and nowhere else:

**Windows.** A quota window of `seconds` allows `limit` requests and is fixed and aligned on
the Unix epoch: it starts at `floor(now / seconds) * seconds`. The epoch is a midnight UTC and
POSIX time has no leap seconds, so 60, 3600 and 86400 give the round minute, hour and day
(UTC); any other number of seconds gives an N-second window. Windows are named as the hub's
`RateLimit-Policy` names them: the unit ("minute", or the seconds, "10"), prefixed with the
endpoint class unless it is `all` ("heavy-minute", "heavy-10").

**Endpoint classes.** Every request is `all`; the high-load listings are also `heavy`. Each
dialect declares its heavy routes relative to its API root (`HEAVY_ROUTES`): the hub matches
them under the dialect's prefix, the agent at the end of a request URL's path (its base URL may
have any prefix).

**The spec grammar** (one grammar; the hub's and the agent's older spellings are both in it):

    spec     := [target] windows
    target   := PREFIX ["@" CLASS] "="       the hub's form:   /v1/@heavy=10/minute
              | CLASS ":"                     the agent's form: heavy:10/minute
    windows  := window ("," window)* | "off"  ("off" removes a quota; hub only)
    window   := LIMIT "/" PERIOD
    PERIOD   := "second" | "minute" | "hour" | "day"   (a trailing "s" is allowed)
              | SECONDS ["s"]                           (e.g. 10, 10s, 3600s)
    CLASS    := "all" | "heavy"                         (default: all)

PREFIX is a path prefix starting with "/"; without a target the spec has no prefix (the hub
reads that as "/", every path). LIMIT is a positive integer.

**Header fields** (draft-ietf-httpapi-ratelimit-headers, structured-field syntax):

    RateLimit-Policy: "minute";q=500;w=60, "hour";q=2500;w=3600
    RateLimit: "hour";r=1200;t=1500
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ordersync.errors import ConfigurationError

ALL, HEAVY = "all", "heavy"
ENDPOINT_CLASSES = (ALL, HEAVY)
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}
_UNIT_NAMES = {seconds: name for name, seconds in UNITS.items()}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_EXAMPLE = "e.g. '500/minute', 'heavy:10/minute', '40/10s' or '/v1/@heavy=10/minute'"

# Each dialect's high-load listings, relative to its API root: (method, path pattern).
HEAVY_ROUTES: dict[str, tuple[tuple[str, str], ...]] = {
    # Seed 003's "high load queries".
    "hubrise": (
        ("GET", r"/location/orders"),
        ("GET", r"/locations/[^/]+/orders"),
        ("GET", r"/orders"),
        ("GET", r"/catalogs/[^/]+"),
        ("GET", r"/customer_lists/[^/]+/customers"),
    ),
    # The other dialects' listings and searches, so that the same kind of quota can be put on
    # them (none is configured there by default).
    "masonhub": (("GET", r"/orders"), ("GET", r"/shipments")),
    "tradecloud": (("POST", r"/order-search/(search|poll)"), ("POST", r"/shipment/poll")),
}
# Where the hub serves each dialect.
HUB_ROOTS = {"masonhub": "/api/v1", "tradecloud": "/v2", "hubrise": "/v1"}


class QuotaSpecError(ConfigurationError, ValueError):
    """A quota spec that does not parse. A ValueError too, so that pydantic validators (the
    agent's config) report it as a field error."""


# -- windows ----------------------------------------------------------------------------------


def window_start(seconds: int, now: float) -> int:
    """The start (epoch seconds) of the clock-aligned window of `seconds` holding `now`."""
    return math.floor(now / seconds) * seconds


def unit_name(seconds: int) -> str:
    """ "minute" for 60, "10" for 10: how a window's length reads in names and messages."""
    return _UNIT_NAMES.get(seconds, str(seconds))


def window_name(endpoint_class: str, seconds: int) -> str:
    """The window's name in `RateLimit-Policy`: "minute", "heavy-minute", "heavy-10"."""
    unit = unit_name(seconds)
    return unit if endpoint_class == ALL else f"{endpoint_class}-{unit}"


@dataclass(frozen=True)
class Window:
    """A fixed window of `seconds`, aligned on the Unix epoch, allowing `limit` requests."""

    name: str
    seconds: int
    limit: int

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.seconds < 1 or self.limit < 1:
            raise QuotaSpecError(f"not a usable quota window: {self}")

    def start(self, now: float) -> int:
        return window_start(self.seconds, now)

    def end(self, now: float) -> int:
        return self.start(now) + self.seconds

    def seconds_left(self, now: float) -> int:
        """Whole seconds until the window ends, rounded up: never an invitation to come back
        while it is still closed (so at least 1)."""
        return max(1, math.ceil(self.end(now) - now))


# -- endpoint classes -------------------------------------------------------------------------


def _compiled(anchor: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple(
        (method, re.compile(anchor.format(root=re.escape(HUB_ROOTS[dialect]), route=route)))
        for dialect, routes in HEAVY_ROUTES.items()
        for method, route in routes
    )


_HUB_HEAVY = _compiled(r"{root}{route}/?")  # the whole path, under the dialect's root
_URL_HEAVY = _compiled(r"{route}/?$")  # the end of a path under any prefix


def hub_endpoint_class(method: str, path: str) -> str:
    """'heavy' for a request path of the hub that is a high-load listing, else 'all'."""
    heavy = any(m == method and p.fullmatch(path) for m, p in _HUB_HEAVY)
    return HEAVY if heavy else ALL


def suffix_endpoint_class(method: str, path: str) -> str:
    """'heavy' when a path (any prefix) ends with a dialect's high-load listing, else 'all'."""
    method = method.upper()
    heavy = any(m == method and p.search(path) for m, p in _URL_HEAVY)
    return HEAVY if heavy else ALL


# -- the spec grammar -------------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaSpec:
    """One parsed spec: `windows` is None for "off"."""

    prefix: str | None
    endpoint_class: str
    windows: tuple[Window, ...] | None


_TARGET = re.compile(
    r"^(?:(?P<prefix>/[^@=]*)(?:@(?P<at>[a-z]+))?=|(?P<cls>[a-z]+):)?(?P<rest>.*)$", re.IGNORECASE
)
_WINDOW = re.compile(r"^(?P<limit>\d+)/(?P<period>[a-z0-9]+)$")


def parse_spec(text: str) -> QuotaSpec:
    """One spec of the module docstring's grammar; `QuotaSpecError` names what is wrong."""
    match = _TARGET.match(re.sub(r"\s+", "", text))
    assert match is not None  # every group is optional
    endpoint_class = (match["at"] or match["cls"] or ALL).lower()
    if endpoint_class not in ENDPOINT_CLASSES:
        raise QuotaSpecError(
            f"quota {text!r}: class {endpoint_class!r} is not one of "
            f"{', '.join(ENDPOINT_CLASSES)} ({_EXAMPLE})"
        )
    rest = match["rest"].lower()
    if rest == "off" and match["prefix"] is not None:
        return QuotaSpec(match["prefix"], endpoint_class, None)
    windows = tuple(_parse_window(part, endpoint_class, text) for part in rest.split(","))
    return QuotaSpec(match["prefix"], endpoint_class, windows)


def _parse_window(text: str, endpoint_class: str, spec: str) -> Window:
    match = _WINDOW.match(text)
    period = match["period"].removesuffix("s") if match else ""
    seconds = int(period) if period.isascii() and period.isdigit() else UNITS.get(period, 0)
    if not match or seconds < 1 or int(match["limit"]) < 1:
        raise QuotaSpecError(
            f"quota {spec!r}: {text!r} is not LIMIT/PERIOD with PERIOD second, minute, hour, "
            f"day or a number of seconds ({_EXAMPLE})"
        )
    return Window(window_name(endpoint_class, seconds), seconds, int(match["limit"]))


def format_spec(prefix: str, endpoint_class: str, windows: Iterable[Window]) -> str:
    """The hub form of a spec, as `parse_spec` reads it back."""
    listed = ",".join(f"{w.limit}/{unit_name(w.seconds)}" for w in windows)
    return f"{prefix}@{endpoint_class}={listed}"


# -- the hub's policy --------------------------------------------------------------------------


@dataclass(frozen=True)
class Quota:
    """The windows limiting one endpoint class under one path prefix (a dialect's paths)."""

    prefix: str
    endpoint_class: str
    windows: tuple[Window, ...]

    @property
    def key(self) -> str:
        return f"{self.prefix}@{self.endpoint_class}"

    def applies_to(self, method: str, path: str) -> bool:
        if not path.startswith(self.prefix):
            return False
        return self.endpoint_class == ALL or hub_endpoint_class(method, path) == HEAVY

    def spec(self) -> str:
        return format_spec(self.prefix, self.endpoint_class, self.windows)


@dataclass(frozen=True)
class QuotaPolicy:
    """Every quota the hub enforces; all those that match a request apply at once."""

    quotas: tuple[Quota, ...] = ()

    @classmethod
    def hubrise_default(cls) -> QuotaPolicy:
        """Seed 003: 500/minute, 2,500/hour, 10,000/day per connection, 10/minute on the
        high-load listings; nothing on the MasonHub (/api/v1) or Tradecloud (/v2) dialects."""
        return cls.from_specs("/v1/@all=500/minute,2500/hour,10000/day; /v1/@heavy=10/minute")

    @classmethod
    def from_specs(cls, specs: str, base: QuotaPolicy | None = None) -> QuotaPolicy:
        """`base` (default: none) changed by specs separated by ';': each replaces the quota
        of its prefix and class, or removes it (`=off`). No prefix means "/" (every path)."""
        policy = base or cls()
        for text in filter(None, (s.strip() for s in specs.split(";"))):
            policy = policy.with_spec(parse_spec(text))
        return policy

    def with_spec(self, spec: QuotaSpec) -> QuotaPolicy:
        prefix = spec.prefix or "/"
        kept = tuple(
            q for q in self.quotas if (q.prefix, q.endpoint_class) != (prefix, spec.endpoint_class)
        )
        if spec.windows is None:
            return replace(self, quotas=kept)
        return replace(self, quotas=(*kept, Quota(prefix, spec.endpoint_class, spec.windows)))

    def windows_for(self, method: str, path: str) -> tuple[tuple[str, Window], ...]:
        """(bucket, window) for every window limiting this request; the bucket names the
        quota and the window, e.g. "/v1/@all:hour"."""
        return tuple(
            (f"{quota.key}:{window.name}", window)
            for quota in self.quotas
            if quota.applies_to(method, path)
            for window in quota.windows
        )

    @property
    def longest_window(self) -> int:
        return max((w.seconds for q in self.quotas for w in q.windows), default=1)

    def describe(self) -> str:
        return "; ".join(q.spec() for q in self.quotas) or "none"


# -- header fields ----------------------------------------------------------------------------


def format_policy(windows: Iterable[Window]) -> str:
    """`RateLimit-Policy`: every window that applies to the request."""
    return ", ".join(f'"{w.name}";q={w.limit};w={w.seconds}' for w in windows)


def format_standing(name: str, remaining: int, reset: int) -> str:
    """`RateLimit`: after this request, `remaining` are left in window `name`, for `reset` s."""
    return f'"{name}";r={remaining};t={reset}'


_ITEM = re.compile(r'^\s*"?(?P<name>[^";,\s]+)"?\s*(?P<params>(?:;[^,]*)?)$')


def parse_structured_list(value: str | None) -> list[tuple[str, dict[str, int]]]:
    """`"minute";q=500;w=60, "hour";r=12` -> [("minute", {"q": 500, "w": 60}), ("hour", ...)].
    Integer parameters only; anything unreadable is skipped, never an error."""
    items: list[tuple[str, dict[str, int]]] = []
    for part in (value or "").split(","):
        match = _ITEM.match(part)
        if not match:
            continue
        params: dict[str, int] = {}
        for param in match["params"].split(";"):
            key, _, number = (p.strip() for p in param.partition("="))
            if key and number.isascii() and number.isdigit():  # not "²": int() refuses it
                params[key] = int(number)
        items.append((match["name"], params))
    return items
