"""One version of the `inventory` entity: a SKU of the catalogue with all its stock rows.

The hub stores it as the JSON `doc` of the SKU's row (as it stores order documents) and every
dialect renders it: MasonHub as a `sku_snapshot` (counts per location and status, summed over
lots), HubRise as one `{sku_ref, stock}` per location, the agent's replica as per-location,
per-status quantities. Counts are absolute whole units (see `inventory.py`).
"""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from ordersync.domain.inventory import InventoryStatus, StockUnit


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StockLine(_Model):
    """The stock of one (location, lot) of the SKU."""

    location: str
    lot_number: str | None = None
    expires_on: date | None = None
    received_on: date | None = None
    purchase_order: str | None = None
    available: int = Field(0, ge=0)
    allocated: int = Field(0, ge=0)
    backordered: int = Field(0, ge=0)
    damaged: int = Field(0, ge=0)
    quality_control: int = Field(0, ge=0)

    @classmethod
    def of(cls, unit: StockUnit) -> StockLine:
        return cls(
            location=unit.location,
            lot_number=unit.lot_number,
            expires_on=unit.expires_on,
            received_on=unit.received_on,
            purchase_order=unit.purchase_order,
            available=unit.available,
            allocated=unit.allocated,
            backordered=unit.backordered,
            damaged=unit.damaged,
            quality_control=unit.quality_control,
        )

    def unit(self, sku: str) -> StockUnit:
        return StockUnit(sku=sku, **self.model_dump())


class InventoryItem(_Model):
    """A SKU at one version: `id` is the SKU's id (MasonHub's `sku_id`), `sku` its code
    (MasonHub's `customer_identifier`, HubRise's `sku_ref`)."""

    id: str
    sku: str
    name: str | None = None
    version: int = Field(ge=1)
    created_at: str  # RFC 3339, as orders
    updated_at: str
    stock: tuple[StockLine, ...] = ()

    def units(self) -> tuple[StockUnit, ...]:
        return tuple(line.unit(self.sku) for line in self.stock)

    def counts(self) -> dict[tuple[str, InventoryStatus], int]:
        """Absolute counts per (location, status), summed over lots, every status listed for
        every location that has a stock row (zeros included: an absolute snapshot)."""
        totals: dict[tuple[str, InventoryStatus], int] = {}
        for unit in self.units():
            for status, count in unit.status_counts().items():
                totals[(unit.location, status)] = totals.get((unit.location, status), 0) + count
        return dict(sorted(totals.items(), key=lambda kv: (kv[0][0], _RANK[kv[0][1]])))

    def locations(self) -> tuple[str, ...]:
        return tuple(sorted({line.location for line in self.stock}))

    def available_to_sell(self, location: str | None = None) -> int:
        return sum(
            line.available for line in self.stock if location is None or line.location == location
        )

    def total_units(self) -> int:
        return sum(
            line.available + line.allocated + line.backordered + line.damaged + line.quality_control
            for line in self.stock
        )


_RANK = {status: rank for rank, status in enumerate(InventoryStatus)}
