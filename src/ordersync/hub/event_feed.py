"""What the three dialects share of the event log extension (`ordersync.store.events`).

Each dialect serves the log on a path of its own shape and advertises it on its listings:

    X-Ordersync-Events: <path of the dialect's event log>
    X-Ordersync-Commit-Lag-Ms: <the longest a commit takes to become visible after its stamp>

and puts each record's event id on it as an extension field (`event_id`, Tradecloud
`eventId`): the id of the change that made the version listed, the same id the event log and
HubRise callback events carry for that change.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ordersync.store.events import EventLog, EventPage
from ordersync.store.store import Principal

EVENTS_HEADER = "X-Ordersync-Events"
COMMIT_LAG_HEADER = "X-Ordersync-Commit-Lag-Ms"
MAX_EVENT_ID = 2**63 - 1
MAX_EVENTS_PAGE = 100


def extension_headers(state: Any, events_path: str) -> dict[str, str]:
    """The headers a listing advertises the extension with (`state`: the app's state)."""
    return {EVENTS_HEADER: events_path, COMMIT_LAG_HEADER: str(state.commit_lag_ms)}


async def read_events(request: Request, caller: Principal, after: int, limit: int) -> EventPage:
    events: EventLog = request.app.state.event_log
    return await events.read(caller.account_id, after, limit)


def with_event_id(doc: str, event_id: int | None, key: str = "event_id") -> str:
    """A stored JSON object document with `key` added as its last member (no parsing: the
    documents are compact objects written by the store)."""
    value = "null" if event_id is None else str(event_id)
    return f'{doc[:-1]},"{key}":{value}}}'
