"""What the dialects answer, as pydantic models, for the OpenAPI description only.

The routes render their answers with the wire codecs (`ordersync.wire.*`) and the stored
documents, never through these models; the fuzzing test (tests/integration/test_fuzz.py)
checks every answer against them, so the two cannot drift apart unnoticed. Decimals are
strings, as rendered. Fields a codec may add later are allowed (answers are open).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel

from ordersync.domain import Order, OrderStatus, ShipmentStatus
from ordersync.domain.orders import Address
from ordersync.domain.shipments import Shipment


class FieldError(BaseModel):
    field: str
    message: str


# -- MasonHub ----------------------------------------------------------------------------------


class OrderSummary(BaseModel):
    """An order in a `list_type=summary` listing."""

    id: str
    customer_identifier: str
    status: OrderStatus
    version: int
    updated_at: str


class ShipmentSummary(BaseModel):
    """A shipment in a `list_type=summary` listing."""

    id: str
    order_id: str
    status: ShipmentStatus
    version: int
    tracking_number: str
    updated_at: str


class OrderPage(BaseModel):
    """One listing page: detail orders, or summaries with `list_type=summary`."""

    data: list[Order | OrderSummary]
    total: int
    offset: int
    limit: int


class ShipmentPage(BaseModel):
    data: list[Shipment | ShipmentSummary]
    total: int
    offset: int
    limit: int


class CreateResult(BaseModel):
    """One item of a batch: created (with its id and order) or refused (with its errors)."""

    customer_identifier: str | None
    status: Literal["created", "refused"]
    id: str | None = None
    order: Order | None = None
    errors: list[FieldError] | None = None


class BatchResult(BaseModel):
    data: list[CreateResult]
    created: int
    refused: int


class BatchRefused(BatchResult):
    """No item was created: the batch result, with the error envelope's fields."""

    error_type: str
    message: str
    errors: list[FieldError]


# -- Tradecloud --------------------------------------------------------------------------------


class TcItem(BaseModel):
    number: str


class TcBuyerLine(BaseModel):
    position: str
    item: TcItem
    quantity: Decimal
    netPrice: Decimal


class TcLineStatus(BaseModel):
    processStatus: str
    inProgressStatus: str | None
    logisticsStatus: str
    deliveryLineStatus: str


class TcLine(BaseModel):
    id: str
    buyerLine: TcBuyerLine
    status: TcLineStatus
    lastUpdatedAt: str


class TcBuyerOrder(BaseModel):
    purchaseOrderNumber: str
    orderType: str
    priority: int
    issuedAt: str
    shippingProvider: str
    shippingServiceLevel: str
    deliveryAddress: Address
    invoiceAddress: Address
    orderPolicy: str


class TcOrderStatus(BaseModel):
    processStatus: str
    logisticsStatus: str


class TcShort(BaseModel):
    position: str
    item: TcItem
    quantity: Decimal
    reason: str


class TradecloudOrder(BaseModel):
    id: str
    version: int
    buyerOrder: TcBuyerOrder
    lines: list[TcLine]
    status: TcOrderStatus
    shorts: list[TcShort]
    failure: dict[str, str] | None
    createdAt: str
    lastUpdatedAt: str
    lastUpdatedBy: str | None


class TcShipmentLineMeta(BaseModel):
    lastUpdatedAt: str


class TcShipmentLine(BaseModel):
    position: str
    item: TcItem
    quantity: Decimal
    lotNumber: str | None
    meta: TcShipmentLineMeta


class TcShipmentStatus(BaseModel):
    logisticsStatus: str


class TradecloudShipment(BaseModel):
    id: str
    version: int
    orderId: str
    purchaseOrderNumber: str
    carrier: str
    serviceLevel: str
    trackingNumber: str
    shippedAt: str | None
    lines: list[TcShipmentLine]
    status: TcShipmentStatus
    location: str | None
    valueAddedServices: list[dict[str, Any]]
    lastUpdatedAt: str
    lastUpdatedBy: str | None


class TradecloudOrderPage(BaseModel):
    data: list[TradecloudOrder]
    total: int
    lastUpdatedAt: str | None


class TradecloudShipmentPage(BaseModel):
    data: list[TradecloudShipment]
    total: int
    lastUpdatedAt: str | None


# -- HubRise -----------------------------------------------------------------------------------


class HrCustomer(BaseModel):
    first_name: str
    last_name: str | None
    address_1: str
    address_2: str | None
    city: str
    state: str | None
    postal_code: str
    country: str


class HrItem(BaseModel):
    line_number: int
    product_name: str
    sku_ref: str
    price: str  # money: "8.90 EUR"
    quantity: Decimal
    subtotal: str


class HrShort(BaseModel):
    line_number: int
    sku_ref: str
    quantity: Decimal
    reason: str


class HubRiseOrder(BaseModel):
    """An order in the location's time zone and currency (money as `"8.90 EUR"`)."""

    id: str
    location_id: str
    private_ref: str | None
    ref: str
    status: str
    service_type: str
    service_type_ref: str
    created_at: str
    customer_notes: None
    items: list[HrItem]
    total: str
    customer: HrCustomer
    billing_address: HrCustomer
    delivery_days: str | None
    shipping_provider: str
    order_type: str
    priority: int
    order_policy: str
    pick_from: list[dict[str, Any]]
    value_added_services: list[dict[str, Any]]
    shorts: list[HrShort]
    failure: dict[str, str] | None
    submitted_at: str
    version: int
    updated_at: str


class HrShipmentItem(BaseModel):
    line_number: int
    sku_ref: str
    quantity: Decimal
    lot_number: str | None


class HubRiseShipment(BaseModel):
    id: str
    location_id: str
    order_id: str
    ref: str
    status: str
    carrier: str
    service_level: str
    tracking_number: str
    shipped_at: str | None
    items: list[HrShipmentItem]
    warehouse_location: str | None
    value_added_services: list[dict[str, Any]]
    version: int
    created_at: str
    updated_at: str


class HubRiseEvent(BaseModel):
    """A change made by another connection; `new_state` is null when the entity is gone."""

    id: str
    created_at: str
    resource_type: Literal["order", "shipment"]
    event_type: str
    resource_id: str
    order_id: str
    location_id: str
    version: int
    new_state: HubRiseOrder | HubRiseShipment | None


class MasonHubEvent(BaseModel):
    """One event of the event log (ordersync extension)."""

    event_id: int
    kind: Literal["order", "shipment"]
    entity_id: str
    version: int
    event_type: str
    connection: str | None
    created_at: str
    entity: dict[str, Any] | None  # the order or shipment at this version; null: superseded
    entity_url: str
    current_version: int | None


class MasonHubEventPage(BaseModel):
    data: list[MasonHubEvent]
    next_after: int
    head: int
    limit: int


class TradecloudEvent(BaseModel):
    eventId: int
    kind: Literal["order", "shipment"]
    entityId: str
    version: int
    eventType: str
    lastUpdatedBy: str | None
    createdAt: str
    entity: dict[str, Any] | None
    entityUrl: str | None
    currentVersion: int | None


class TradecloudEventPage(BaseModel):
    data: list[TradecloudEvent]
    nextAfterEventId: int
    headEventId: int


class HubRiseLogEvent(HubRiseEvent):
    connection: str | None
    ordersync_event_type: str


class HubRiseEventLogPage(BaseModel):
    events: list[HubRiseLogEvent]
    next_after: str
    head: str


class HubRiseCallback(BaseModel):
    """This connection's callback: passive (no url) or active, with the event types it
    follows; an active one also has the extension fields `id`, `status` (and `secret` once)."""

    url: str | None
    events: dict[str, list[str]]
    id: str | None = None
    status: str | None = None
    secret: str | None = None


# -- request examples (shown in /docs, and sent first by the fuzzing run) -----------------------

_ADDRESS = {
    "name": "Ada Lovelace",
    "address1": "12 Analytical Row",
    "city": "London",
    "state": "LND",
    "postal_code": "EC1A 1BB",
    "country": "GB",
}
NEW_ORDER_EXAMPLE: dict[str, Any] = {
    "customer_identifier": "PO-1001",
    "order_type": "customer",
    "priority": 1,
    "shipping_provider": "UPS",
    "shipper_service_level": "ground",
    "shipping_address": _ADDRESS,
    "billing_address": _ADDRESS,
    "submitted_at": "2024-01-01T10:30:00Z",
    "line_items": [{"sku_customer_identifier": "SKU-1", "quantity": "2", "unit_price": "9.99"}],
}
EVENT_POLL_EXAMPLE: dict[str, Any] = {"afterEventId": 0, "limit": 100}
POLL_EXAMPLE: dict[str, Any] = {
    "filters": {"lastUpdatedAfter": "2024-01-01T00:00:00.000Z"},
    "offset": 0,
    "limit": 100,
}
HUBRISE_ORDER_EXAMPLE: dict[str, Any] = {
    "ref": "R-1001",
    "service_type_ref": "ground",
    "shipping_provider": "UPS",
    "customer": {
        "first_name": "Ada",
        "last_name": "Lovelace",
        "address_1": "12 Analytical Row",
        "city": "London",
        "postal_code": "EC1A 1BB",
        "country": "GB",
    },
    "items": [{"sku_ref": "SKU-1", "price": "9.99 EUR", "quantity": "2"}],
}
HUBRISE_PATCH_EXAMPLE: dict[str, Any] = {"status": "received", "private_ref": "erp-1001"}
CALLBACK_EXAMPLE: dict[str, Any] = {"events": {"order": ["create", "update"]}}
