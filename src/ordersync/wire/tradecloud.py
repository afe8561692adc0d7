"""Tradecloud (seeds 002 and 004), both directions.

Render: the hub's stored (MasonHub-shaped) order and shipment documents -> Tradecloud's order
and shipment documents. Parse: a Tradecloud document as received -> its typed snapshot. Quantities
and prices are exact: decimal text, or JSON numbers decoded as Decimal (`parse_float=Decimal`);
a float is refused. The order's status is `processStatus/logisticsStatus`, a shipment's its
`logisticsStatus`. Timestamps are exactly `YYYY-MM-DDThh:mm:ss.SSSZ`.
"""

from __future__ import annotations

from typing import Any

from ordersync.domain.snapshots import LineSnapshot, OrderSnapshot, ShipmentSnapshot
from ordersync.wire.fields import (
    Head,
    array,
    exact_decimal,
    exact_json,
    integer,
    mapping,
    member,
    optional_text,
    read_head,
    rfc3339_ms,
    text,
)

# Our lifecycle seen through Tradecloud's line status fields.
LINE_STATUS: dict[str, dict[str, str | None]] = {
    "open": {
        "processStatus": "Issued",
        "inProgressStatus": "Issued",
        "logisticsStatus": "Open",
        "deliveryLineStatus": "NotDelivered",
    },
    "atWarehouse": {
        "processStatus": "InProgress",
        "inProgressStatus": "Confirmed",
        "logisticsStatus": "Open",
        "deliveryLineStatus": "NotDelivered",
    },
    "inProcess": {
        "processStatus": "Confirmed",
        "inProgressStatus": None,
        "logisticsStatus": "Produced",
        "deliveryLineStatus": "NotDelivered",
    },
    "packed": {
        "processStatus": "Confirmed",
        "inProgressStatus": None,
        "logisticsStatus": "ReadyToShip",
        "deliveryLineStatus": "NotDelivered",
    },
    "fulfilled": {
        "processStatus": "Confirmed",
        "inProgressStatus": None,
        "logisticsStatus": "Shipped",
        "deliveryLineStatus": "NotDelivered",
    },
    "delivered": {
        "processStatus": "Completed",
        "inProgressStatus": None,
        "logisticsStatus": "Delivered",
        "deliveryLineStatus": "Delivered",
    },
    "canceled": {
        "processStatus": "Cancelled",
        "inProgressStatus": None,
        "logisticsStatus": "Cancelled",
        "deliveryLineStatus": "NotDelivered",
    },
}
SHIPMENT_STATUS = {
    "manifested": "ReadyToShip",
    "shipped": "Shipped",
    "in_transit": "InTransit",
    "delivered": "Delivered",
}


def render_order(doc: dict[str, Any]) -> dict[str, Any]:
    line_status = LINE_STATUS[doc["status"]]
    return {
        "id": doc["id"],
        "version": doc["version"],
        "buyerOrder": {
            "purchaseOrderNumber": doc["customer_identifier"],
            "orderType": doc["order_type"],
            "priority": doc["priority"],
            "issuedAt": doc["submitted_at"],
            "shippingProvider": doc["shipping_provider"],
            "shippingServiceLevel": doc["shipper_service_level"],
            "deliveryAddress": doc["shipping_address"],
            "invoiceAddress": doc["billing_address"],
            "orderPolicy": doc["order_policy"],
        },
        "lines": [
            {
                "id": f"{doc['id']}:{line['line_number']}",
                "buyerLine": {
                    "position": f"{line['line_number']:04d}",
                    "item": {"number": line["sku_customer_identifier"]},
                    "quantity": line["quantity"],
                    "netPrice": line["unit_price"],
                },
                "status": line_status,
                "lastUpdatedAt": line.get("updated_at") or doc["updated_at"],
            }
            for line in doc["line_items"]
        ],
        "status": {
            "processStatus": line_status["processStatus"],
            "logisticsStatus": line_status["logisticsStatus"],
        },
        # Ours, where Tradecloud has no field: what the warehouse could not ship, and why it
        # gave the order up.
        "shorts": [
            {
                "position": f"{short['line_number']:04d}",
                "item": {"number": short["sku_customer_id"]},
                "quantity": short["quantity"],
                "reason": short["reason"],
            }
            for short in doc.get("shorts", ())
        ],
        "failure": doc.get("failure"),
        "createdAt": doc["created_at"],
        "lastUpdatedAt": doc["updated_at"],
        "lastUpdatedBy": doc.get("updated_by"),
    }


def render_shipment(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["id"],
        "version": doc["version"],
        "orderId": doc["order_id"],
        "purchaseOrderNumber": doc["customer_identifier"],
        "carrier": doc["carrier"],
        "serviceLevel": doc["service_level"],
        "trackingNumber": doc["tracking_number"],
        "shippedAt": doc["shipped_at"],
        "lines": [
            {
                "position": f"{line['line_number']:04d}",
                "item": {"number": line["sku_customer_identifier"]},
                "quantity": line["quantity"],
                "lotNumber": line.get("lot_number"),
                "meta": {"lastUpdatedAt": doc["updated_at"]},
            }
            for line in doc["lines"]
        ],
        "status": {"logisticsStatus": SHIPMENT_STATUS.get(doc["status"], doc["status"])},
        "location": doc.get("location"),
        "valueAddedServices": doc.get("value_added_services", []),
        "lastUpdatedAt": doc["updated_at"],
        "lastUpdatedBy": doc.get("updated_by"),
    }


def head(document: Any) -> Head:
    return read_head(document, "lastUpdatedAt", rfc3339_ms)


def parse_order(document: Any) -> OrderSnapshot:
    top = head(document)
    doc: dict[str, Any] = document
    status = mapping(member(doc, "status"), "status")
    buyer = doc.get("buyerOrder")
    number = None
    if buyer is not None:
        number = mapping(buyer, "buyerOrder").get("purchaseOrderNumber")
    lines = array(doc.get("lines"), "lines")
    return OrderSnapshot(
        *top,
        f"{text(member(status, 'processStatus', 'status'), 'status.processStatus')}/"
        f"{text(member(status, 'logisticsStatus', 'status'), 'status.logisticsStatus')}",
        optional_text(number, "buyerOrder.purchaseOrderNumber"),
        tuple(_line(line, f"lines[{i}]") for i, line in enumerate(lines)),
    )


def _line(value: Any, path: str) -> LineSnapshot:
    buyer = mapping(member(mapping(value, path), "buyerLine", path), path, ".buyerLine")
    path += ".buyerLine"
    item = buyer.get("item")
    sku = None if item is None else mapping(item, path, ".item").get("number")
    return LineSnapshot(
        position(member(buyer, "position", path), path, ".position"),
        optional_text(sku, path, ".item.number"),
        exact_decimal(buyer.get("quantity"), path, ".quantity"),
        exact_decimal(buyer.get("netPrice"), path, ".netPrice"),
    )


def position(value: Any, path: str, key: str = "") -> int:
    """A line position: digits such as "0001" (as rendered), or an integer."""
    if type(value) is str and value.isascii() and value.isdigit():
        return int(value)
    return integer(value, path, key)


def parse_shipment(document: Any) -> ShipmentSnapshot:
    top = head(document)
    doc: dict[str, Any] = document
    status = mapping(member(doc, "status"), "status")
    return ShipmentSnapshot(
        *top,
        optional_text(doc.get("orderId"), "orderId"),
        text(member(status, "logisticsStatus", "status"), "status.logisticsStatus"),
        optional_text(doc.get("trackingNumber"), "trackingNumber"),
    )


def as_received(document: Any) -> Any:
    """The document to keep: numbers decoded as Decimal stay the exact JSON numbers they were."""
    return exact_json(document)
