"""Credentials and quotas agree on who is calling (issue 12: the quota bypasses).

Each dialect has one credential parser, used by authentication and by the rate limiter alike:
a credential header sent twice is refused with 400, Basic's scheme is case-insensitive but the
quota is counted per authenticated connection, and a revoked token is refused on the very next
request, by every process serving the database.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from typer.testing import CliRunner

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.quotas import QuotaPolicy
from ordersync.store.store import Store

LISTINGS = {  # (method, path, body) of each dialect's heavy listing
    "masonhub": ("GET", "/api/v1/orders", None),
    "tradecloud": ("POST", "/v2/order-search/poll", b"{}"),
    "hubrise": ("GET", "/v1/location/orders", None),
}


@dataclass
class Hub:
    client: httpx.AsyncClient
    store: Store
    token: str

    async def listing(self, dialect: str, headers: list[tuple[str, str]]) -> httpx.Response:
        method, path, body = LISTINGS[dialect]
        return await self.client.request(method, path, headers=headers, content=body)


async def open_hub(store: Store, quotas: str) -> Hub:
    app = create_app(HubSettings(quotas=QuotaPolicy.from_specs(quotas)), store)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub")
    return Hub(client, store, await store.create_token("acme", "erp"))


@pytest.fixture
async def hub(store: Store) -> AsyncIterator[Hub]:
    opened = await open_hub(store, "/api/v1/=10/minute; /v2/=10/minute; /v1/@heavy=10/minute")
    async with opened.client:
        yield opened


def statuses(answers: list[httpx.Response]) -> dict[int, int]:
    counted: dict[int, int] = {}
    for answer in answers:
        counted[answer.status_code] = counted.get(answer.status_code, 0) + 1
    return counted


async def test_two_x_access_token_headers_are_refused_and_spend_no_foreign_quota(hub: Hub) -> None:
    """HubRise: after 10 heavy listings, 40 more with a valid then a random X-Access-Token
    are all refused (400 naming the header), none served past the 10/minute limit."""
    valid = [("X-Access-Token", hub.token)]
    assert statuses([await hub.listing("hubrise", valid) for _ in range(10)]) == {200: 10}
    doubled = [
        await hub.listing("hubrise", [*valid, ("X-Access-Token", f"random-{n}")]) for n in range(40)
    ]
    assert statuses(doubled) == {400: 40}
    body = doubled[0].json()
    assert body["error_type"] == "bad_request" and "X-Access-Token" in body["message"]
    assert (await hub.listing("hubrise", valid)).status_code == 429


@pytest.mark.parametrize("dialect", ["masonhub", "tradecloud"])
async def test_two_authorization_headers_are_refused_with_400(hub: Hub, dialect: str) -> None:
    """MasonHub and Tradecloud: 30 requests with a valid and a random Authorization header
    serve nothing; the error names the header."""
    doubled = [
        ("Authorization", f"Bearer {hub.token}"),
        ("Authorization", "Bearer random"),
    ]
    answers = [await hub.listing(dialect, doubled) for _ in range(30)]
    assert statuses(answers) == {400: 30}
    body = answers[0].json()
    assert body["error_type"] == "bad_request" and "Authorization" in body["message"]


async def test_basic_in_any_spelling_authenticates_and_shares_one_quota(hub: Hub) -> None:
    """Tradecloud: `Basic` in its 32 spellings is one scheme, and all of them together get the
    connection's 10 requests a minute, not 10 per spelling."""
    secret = base64.b64encode(f"erp:{hub.token}".encode()).decode()
    spellings = [
        "".join(c.upper() if up else c for c, up in zip("basic", flags, strict=True))
        for flags in itertools.product([False, True], repeat=5)
    ]
    assert len(set(spellings)) == 32
    answers = [
        await hub.listing("tradecloud", [("Authorization", f"{scheme} {secret}")])
        for scheme in spellings
        for _ in range(3)
    ]
    assert statuses(answers) == {200: 10, 429: 86}


async def test_bearer_and_basic_for_one_connection_share_one_quota(hub: Hub) -> None:
    """The quota key is the connection, whichever scheme names it."""
    basic = base64.b64encode(f"erp:{hub.token}".encode()).decode()
    answers = [
        await hub.listing("tradecloud", [("Authorization", value)])
        for _ in range(8)
        for value in (f"Bearer {hub.token}", f"basic {basic}")
    ]
    assert statuses(answers) == {200: 10, 429: 6}


async def test_a_revoked_token_is_refused_on_the_very_next_request(hub: Hub) -> None:
    """No cache outlives a revocation: served, revoked, refused, on all three dialects."""
    headers = {
        "masonhub": [("Authorization", f"Bearer {hub.token}")],
        "tradecloud": [("Authorization", f"Bearer {hub.token}")],
        "hubrise": [("X-Access-Token", hub.token)],
    }
    for dialect, sent in headers.items():
        assert (await hub.listing(dialect, sent)).status_code == 200
    assert await hub.store.revoke_connection("acme", "erp") == 1
    for dialect, sent in headers.items():
        assert (await hub.listing(dialect, sent)).status_code == 401, dialect


async def test_a_revocation_through_another_process_is_seen_at_once(
    hub: Hub, hub_db_url: str
) -> None:
    """Another store on the same database (as another worker or `hub token revoke` is)
    revokes: this app refuses the token on its next request."""
    sent = [("Authorization", f"Bearer {hub.token}")]
    assert (await hub.listing("masonhub", sent)).status_code == 200
    other = await Store.open(hub_db_url)
    try:
        assert await other.revoke_connection("acme", "erp") == 1
    finally:
        await other.close()
    assert (await hub.listing("masonhub", sent)).status_code == 401


def test_hub_token_revoke_revokes_a_connection(tmp_path: object) -> None:
    """`ordersync hub token revoke --account A --name N` revokes; a second run says there is
    nothing left to revoke (exit 1)."""
    from ordersync.cli import app

    db = f"sqlite:///{tmp_path}/hub.db"
    runner = CliRunner()
    created = runner.invoke(
        app, ["hub", "token", "create", "--account", "a", "--name", "n", "--db", db]
    )
    assert created.exit_code == 0
    revoke = ["hub", "token", "revoke", "--account", "a", "--name", "n", "--db", db]
    first = runner.invoke(app, revoke)
    assert first.exit_code == 0 and "revoked 1 token" in first.output
    again = runner.invoke(app, revoke)
    assert again.exit_code == 1 and "no live token" in again.output
