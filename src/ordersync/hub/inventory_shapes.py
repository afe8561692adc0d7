"""Request and answer models of the inventory routes (MasonHub `sku_snapshots` and stock
receipts, HubRise location inventory): bodies are validated with them and the OpenAPI
description declares them (`ordersync.hub.openapi`)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, field_validator

from ordersync.domain.inventory import InventoryStatus, whole_units

Code = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"\S")]


class StatusCount(BaseModel):
    inventory_location_id: str
    inventory_status: InventoryStatus
    quantity: int


class SkuSnapshot(BaseModel):
    customer_identifier: str = Field(description="the SKU code")
    sku_id: str
    total_available_to_sell: int
    total_units: int
    status_counts: list[StatusCount]
    version: int = Field(description="ordersync extension: the inventory version")
    updated_at: str = Field(description="ordersync extension: RFC 3339")
    event_id: int | None = Field(None, description="ordersync extension: the change's event id")
    lots: list[dict[str, Any]] = Field(description="ordersync extension: per-lot stock rows")


class SkuSnapshotPage(BaseModel):
    data: list[SkuSnapshot]
    total: int
    offset: int
    limit: int


class StockReceipt(BaseModel):
    """ordersync extension: units that arrived (added to the stored counts)."""

    model_config = ConfigDict(extra="forbid")

    sku: Code
    location: Code
    quantity: StrictInt = Field(ge=1, le=1_000_000_000)
    inventory_status: InventoryStatus = InventoryStatus.AVAILABLE
    lot_number: Code | None = None
    expiration_date: date | None = None
    received_date: date | None = None
    purchase_order: Code | None = None


class StockReceiptsAnswer(BaseModel):
    data: list[SkuSnapshot]


RECEIPT_EXAMPLE = {
    "sku": "SKU-1",
    "location": "WH-EAST",
    "quantity": 25,
    "lot_number": "LOT-7",
    "expiration_date": "2030-06-30",
}


class HubRiseInventoryEntry(BaseModel):
    sku_ref: str
    stock: str = Field(description="available units, a decimal string")
    expires_at: str | None
    sku_id: str = Field(description="ordersync extension")
    version: int = Field(description="ordersync extension")
    updated_at: str = Field(description="ordersync extension")


class HubRiseLocationStock(BaseModel):
    location_id: str
    stock: str


class HubRiseCatalogEntry(HubRiseInventoryEntry):
    """ordersync extension: a SKU of the catalogue, every location's stock."""

    locations: list[HubRiseLocationStock]


class HubRiseInventoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku_ref: Code
    stock: Decimal = Field(description='whole units >= 0, as a decimal string such as "12"')
    expires_at: None = Field(None, description="must be null: ordersync stock does not lapse")

    @field_validator("stock", mode="before")
    @classmethod
    def _decimal_text(cls, value: Any) -> Any:
        if isinstance(value, bool | float):
            raise ValueError('must be a decimal string such as "12"')
        return value

    @field_validator("stock")
    @classmethod
    def _whole(cls, value: Decimal) -> Decimal:
        whole_units(value)  # ValueError names the value
        if value > 1_000_000_000:
            raise ValueError("must be at most 1000000000")
        return value


HUBRISE_INVENTORY_EXAMPLE = [{"sku_ref": "SKU-1", "stock": "12", "expires_at": None}]
