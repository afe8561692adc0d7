"""The pure domain: orders, shipments, their lifecycle and validation, stock and allocation.
No I/O imports here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ordersync.domain.allocation import (
        Allocated,
        AllocationRun,
        Failed,
        OrderDemand,
        PickRule,
        PlannedShipment,
        Short,
        Waiting,
        allocate,
        demand_from_order,
    )
    from ordersync.domain.inventory import InventoryStatus, Stock, StockKey, StockUnit, whole_units
    from ordersync.domain.lifecycle import (
        CANCELABLE,
        OrderStatus,
        ShipmentStatus,
        check_transition,
    )
    from ordersync.domain.orders import (
        Address,
        LineItem,
        NewOrder,
        Order,
        OrderFailure,
        OrderLine,
        OrderPolicy,
        OrderShort,
        PickFrom,
        ValueAddedService,
        stamp_change,
    )
    from ordersync.domain.shipments import NewShipment, Shipment, ShipmentLine
    from ordersync.domain.timestamps import format_rfc3339, now_ms, parse_rfc3339_ms
    from ordersync.domain.weekdays import format_dow, normalize_weekdays, parse_dow

__all__ = [
    "CANCELABLE",
    "Address",
    "Allocated",
    "AllocationRun",
    "Failed",
    "InventoryStatus",
    "LineItem",
    "NewOrder",
    "NewShipment",
    "Order",
    "OrderDemand",
    "OrderFailure",
    "OrderLine",
    "OrderPolicy",
    "OrderShort",
    "OrderStatus",
    "PickFrom",
    "PickRule",
    "PlannedShipment",
    "Shipment",
    "ShipmentLine",
    "ShipmentStatus",
    "Short",
    "Stock",
    "StockKey",
    "StockUnit",
    "ValueAddedService",
    "Waiting",
    "allocate",
    "check_transition",
    "demand_from_order",
    "format_dow",
    "format_rfc3339",
    "normalize_weekdays",
    "now_ms",
    "parse_dow",
    "parse_rfc3339_ms",
    "stamp_change",
    "whole_units",
]

# Names are imported on first use, so that a light module (snapshots, timestamps) does not pull
# in pydantic and the models: the agent's SQLite writer process imports only what it needs.
_HOMES = {
    "Allocated": "allocation",
    "AllocationRun": "allocation",
    "Failed": "allocation",
    "OrderDemand": "allocation",
    "PickRule": "allocation",
    "PlannedShipment": "allocation",
    "Short": "allocation",
    "Waiting": "allocation",
    "allocate": "allocation",
    "demand_from_order": "allocation",
    "InventoryStatus": "inventory",
    "Stock": "inventory",
    "StockKey": "inventory",
    "StockUnit": "inventory",
    "whole_units": "inventory",
    "CANCELABLE": "lifecycle",
    "OrderStatus": "lifecycle",
    "ShipmentStatus": "lifecycle",
    "check_transition": "lifecycle",
    "Address": "orders",
    "LineItem": "orders",
    "NewOrder": "orders",
    "Order": "orders",
    "OrderLine": "orders",
    "OrderFailure": "orders",
    "OrderPolicy": "orders",
    "OrderShort": "orders",
    "PickFrom": "orders",
    "ValueAddedService": "orders",
    "stamp_change": "orders",
    "NewShipment": "shipments",
    "Shipment": "shipments",
    "ShipmentLine": "shipments",
    "format_rfc3339": "timestamps",
    "now_ms": "timestamps",
    "parse_rfc3339_ms": "timestamps",
    "format_dow": "weekdays",
    "normalize_weekdays": "weekdays",
    "parse_dow": "weekdays",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ordersync.domain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ordersync.domain.{home}"), name)
    globals()[name] = value
    return value
