"""Tradecloud's buyer order message, pure: what a message comes to for the order it names."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ordersync.domain.lifecycle import OrderStatus
from ordersync.domain.orders import NewOrder, Order
from ordersync.errors import InvalidTransition, ValidationFailed
from ordersync.wire.tradecloud_buyer import parse_message, plan, render_message
from tests.support import order_payload


def _stored(**overrides: Any) -> Order:
    new = NewOrder.model_validate(order_payload("PO-1", **overrides))
    return Order(
        **new.model_dump(),
        id="o-1",
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-01T00:00:00.000Z",
    )


def _line(position: str, sku: str, quantity: str) -> dict[str, Any]:
    return {
        "position": position,
        "item": {"number": sku},
        "deliverySchedule": [{"quantity": quantity}],
        "prices": {"netPrice": {"priceInTransactionCurrency": {"value": "1.50"}}},
    }


def _message(*lines: dict[str, Any], **indicators: bool) -> Any:
    return parse_message(
        {"order": {"purchaseOrderNumber": "PO-1", "indicators": indicators}, "lines": list(lines)}
    )


def test_the_message_restates_an_order() -> None:
    """`render_message` of a stored order, planned as a create, gives the same order back."""
    stored = NewOrder.model_validate(
        order_payload("PO-R", priority=3, shipping_provider="DHL")
    ).model_dump(mode="json")
    made = plan(None, parse_message(copy.deepcopy(render_message(stored))), 0)
    assert made.action == "create" and made.order is not None
    assert made.order.model_dump(mode="json") == stored


def test_restating_an_order_changes_nothing() -> None:
    before = _stored()
    again = parse_message(render_message(before.model_dump(mode="json")))
    assert plan(before, again, 0).action == "unchanged"


def test_lines_merge_by_position_unless_cancel_line_when_missing() -> None:
    before = _stored()  # lines 1 (SKU-1) and 2 (SKU-2)
    merged = plan(before, _message(_line("2", "SKU-2", "5")), 0)
    assert merged.action == "update" and merged.order is not None
    assert [(li.line_number, str(li.quantity)) for li in merged.order.line_items] == [
        (1, "2"),
        (2, "5"),
    ]
    whole = plan(before, _message(_line("3", "SKU-3", "1"), cancelLineWhenMissing=True), 0)
    assert whole.order is not None
    assert [li.line_number for li in whole.order.line_items] == [3]


def test_a_price_per_hundred_becomes_an_exact_unit_price() -> None:
    line = _line("1", "SKU-1", "1") | {
        "prices": {
            "netPrice": {"priceInTransactionCurrency": {"value": "150"}},
            "priceUnitQuantity": "100",
        }
    }
    made = plan(_stored(), _message(line), 0)
    assert made.order is not None and str(made.order.line_items[0].unit_price) == "1.500000000000"
    third = line | {
        "prices": {
            "netPrice": {"priceInTransactionCurrency": {"value": "1"}},
            "priceUnitQuantity": "3",
        }
    }
    with pytest.raises(ValidationFailed) as refused:
        plan(_stored(), _message(third), 0)
    assert refused.value.errors == [
        ("lines.0.prices.priceUnitQuantity", "the unit price must come out exact")
    ]


def test_a_packed_order_refuses_updates_with_the_reason() -> None:
    packed = _stored().model_copy(update={"status": OrderStatus.PACKED})
    with pytest.raises(InvalidTransition, match="packed and can no longer be updated"):
        plan(packed, _message(_line("1", "SKU-1", "9")), 0)
    assert plan(packed, _message(cancelled=True), 0).action == "cancel"  # the store refuses it
