"""Shipments: what left the warehouse for an order, with its tracking number."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from ordersync.domain.lifecycle import ShipmentStatus
from ordersync.domain.orders import ValueAddedService


class ShipmentLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    line_number: int = Field(ge=1)
    sku_customer_identifier: str
    quantity: Decimal = Field(gt=0)
    lot_number: str | None = None


class NewShipment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    order_id: str
    carrier: str
    service_level: str
    tracking_number: str
    lines: list[ShipmentLine] = Field(min_length=1)
    location: str | None = Field(default=None, description="the warehouse location it left")
    value_added_services: list[ValueAddedService] = Field(default_factory=list)


class Shipment(NewShipment):
    id: str
    customer_identifier: str
    status: ShipmentStatus = ShipmentStatus.SHIPPED
    shipped_at: str | None = Field(
        default=None, description="when it left the warehouse; none while manifested"
    )
    version: int = 1
    created_at: str
    updated_at: str
