"""`ordersync hub stock ...`: receive stock and list it. Wiring only (exit codes as in
`ordersync.hub.commands`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from typing import Annotated, Any

import typer

from ordersync.hub import DEFAULT_DB_URL
from ordersync.hub.commands import EXIT_INVALID, DbOption, _with_store, err, fail, run_db

stock_app = typer.Typer(
    help="Stock: receive units into a location, list the catalogue's counts.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

STATUSES = ("available", "allocated", "backordered", "damaged", "quality-control")


def _date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not a date (YYYY-MM-DD)", EXIT_INVALID)


@stock_app.command("receive")
def stock_receive(
    account: Annotated[str, typer.Argument(help="Account name; created if it does not exist.")],
    sku: Annotated[str, typer.Option(help="SKU code; registered if not in the catalogue.")],
    location: Annotated[str, typer.Option(help="Warehouse location.")],
    quantity: Annotated[int, typer.Option(min=1, help="Units received.")],
    lot: Annotated[str | None, typer.Option(help="Lot number (omit: not lot-tracked).")] = None,
    expires: Annotated[str | None, typer.Option(help="Lot expiry, YYYY-MM-DD.")] = None,
    purchase_order: Annotated[str | None, typer.Option(help="Purchase order.")] = None,
    status: Annotated[str, typer.Option(help=f"One of {', '.join(STATUSES)}.")] = "available",
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Add units to a SKU's stock at a location (one new inventory version, a
    skuInventoryChange callback); prints the SKU's available units per location."""
    from ordersync.domain.inventory import StockUnit
    from ordersync.errors import ValidationFailed

    if status not in STATUSES:
        fail(f"--status {status!r}: one of {', '.join(STATUSES)}", EXIT_INVALID)
    expires_on = _date(expires, "--expires")
    counts: dict[str, Any] = {status.replace("-", "_"): quantity}
    try:
        unit = replace(
            StockUnit(sku, location, lot, expires_on=expires_on, purchase_order=purchase_order),
            **counts,
        )
    except ValueError as exc:
        fail(str(exc), EXIT_INVALID)

    async def receive(store: Any) -> Any:
        from ordersync.store.inventory import InventoryStore

        account_id = await store.ensure_account(account)
        (item,) = await InventoryStore(store).receive_stock(None, account_id, [unit])
        return item

    try:
        item = run_db(db, _with_store(db, receive))
    except ValidationFailed as exc:  # pragma: no cover - run_db maps it (exit 2)
        fail(str(exc), EXIT_INVALID)
    where = ", ".join(f"{loc} {item.available_to_sell(loc)}" for loc in item.locations())
    err.print(f"{account}: {item.sku} version {item.version}, available: {where}")


@stock_app.command("list")
def stock_list(
    account: Annotated[str, typer.Argument(help="Account name.")],
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Every stock row of the account: SKU, location, lot, expiry and the count per status."""

    async def rows(store: Any) -> Any:
        from ordersync.store.inventory import InventoryStore

        inventory = InventoryStore(store)
        account_id = await inventory.account_id(account)
        async with store.reader.connect() as conn:
            return await inventory.read_stock(conn, account_id)

    stock = run_db(db, _with_store(db, rows))
    print(f"{'SKU':<20} {'LOCATION':<12} {'LOT':<12} {'EXPIRES':<10} " + " ".join(STATUSES))
    for unit in stock:
        counts = " ".join(f"{unit.count(s):>{len(s.value)}}" for s in unit.status_counts())
        expiry = unit.expires_on.isoformat() if unit.expires_on else "-"
        print(
            f"{unit.sku:<20} {unit.location:<12} {unit.lot_number or '-':<12} {expiry:<10} {counts}"
        )
