"""The warehouse simulator: realistic lifecycles, deterministic for a given seed."""

from __future__ import annotations

from pathlib import Path

from ordersync.hub.simulator import Warehouse
from ordersync.store.store import ListQuery, Store


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def simulate(db_url: str, seed: int, orders: int = 30, seconds: int = 45) -> list[tuple]:
    store = await Store.open(db_url)
    clock = FakeMonotonic()
    token = await store.create_token("demo", "warehouse")
    warehouse = Warehouse(
        store, await store.authenticate(token), rate=1, seed=seed, monotonic=clock
    )
    await warehouse._create(orders)
    for _ in range(seconds):
        clock.now += 1
        await warehouse._advance_due()
    account = warehouse.principal.account_id
    page = await store.list_orders(account, ListQuery(limit=100))
    shipments = await store.list_shipments(account, ListQuery(limit=100))
    await store.close()
    import orjson

    docs = [orjson.loads(d) for d in page.items]
    # An order may ship from several locations: its shipments, in a stable order.
    ships: dict[str, list[tuple[str, str]]] = {}
    for s in map(orjson.loads, shipments.items):
        ships.setdefault(s["order_id"], []).append((s["tracking_number"], s["status"]))
    return sorted(
        (
            d["customer_identifier"],
            d["status"],
            d["version"],
            tuple(
                (li["sku_customer_identifier"], li["quantity"], li["unit_price"])
                for li in d["line_items"]
            ),
            tuple(sorted(ships.get(d["id"], []))),
        )
        for d in docs
    )


async def test_same_seed_gives_the_same_orders_and_story(tmp_path: Path) -> None:
    """Two runs with one seed create identical orders and move them identically."""
    first = await simulate(f"sqlite:///{tmp_path}/a.db", seed=7)
    second = await simulate(f"sqlite:///{tmp_path}/b.db", seed=7)
    other = await simulate(f"sqlite:///{tmp_path}/c.db", seed=8)
    assert first == second
    assert first != other


async def test_orders_move_through_the_lifecycle_with_shipments(tmp_path: Path) -> None:
    """After a simulated minute: every status is reached, some orders are canceled, every
    packed-or-later order has shipments with tracking numbers, some orders ship from several
    locations, and a delivered order's shipments are all delivered."""
    rows = await simulate(f"sqlite:///{tmp_path}/a.db", seed=1, orders=50, seconds=40)
    statuses = {row[1] for row in rows}
    assert {"delivered", "canceled"} <= statuses
    shipped = [row for row in rows if row[1] in ("packed", "fulfilled", "delivered")]
    assert shipped and all(row[4] and all(t.startswith("1Z") for t, _ in row[4]) for row in shipped)
    assert any(len(row[4]) > 1 for row in shipped)
    assert all(
        all(status == "delivered" for _, status in row[4]) for row in rows if row[1] == "delivered"
    )
    # versions count the moves: created (1) + one per status step
    steps = {
        "open": 1,
        "atWarehouse": 2,
        "inProcess": 3,
        "packed": 4,
        "fulfilled": 5,
        "delivered": 6,
    }
    assert all(row[2] == steps[row[1]] for row in rows if row[1] in steps)


async def test_restarting_the_simulator_leaves_one_live_token(tmp_path: Path) -> None:
    """Each start revokes the previous start's simulator token: restarts leave no live token
    behind."""
    from sqlalchemy import func, select

    from ordersync.hub.settings import HubSettings
    from ordersync.store.tables import connections

    store = await Store.open(f"sqlite:///{tmp_path}/hub.db")
    settings = HubSettings(simulate_rate=0.001, simulate_seed=1)
    try:
        for _ in range(3):
            warehouse = await Warehouse.start(store, settings)
            await warehouse.stop()
        async with store.reader.connect() as conn:
            live = await conn.scalar(
                select(func.count())
                .select_from(connections)
                .where(connections.c.name == "warehouse-simulator")
                .where(connections.c.revoked_at.is_(None))
            )
        assert live == 1
    finally:
        await store.close()
