"""Allocation under pick_from rules, split policies, priority and FEFO.

The property tests compare `allocate` with an exhaustive oracle written independently here: the
most units an order can get from a set of locations is the minimum cut of the line -> unit
network, found by trying every subset of lines (small cases only), and the fewest shipments by
trying every subset of locations."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.domain.allocation import (
    Allocated,
    DemandLine,
    Failed,
    FailureReason,
    MatchStyle,
    MatchType,
    OrderDemand,
    PickRule,
    ShortReason,
    Waiting,
    WaitReason,
    allocate,
    demand_from_order,
    order_policy_from_split_policy,
    rule_from_pick_from,
    split_policy_from_order_policy,
)
from ordersync.domain.inventory import Stock, StockUnit
from ordersync.domain.orders import Order, OrderPolicy, PickFrom, ValueAddedService

LOCATIONS = ["W1", "W2", "W3", "W4"]
SKUS = ["A", "B"]
LOTS = ["L1", "L2", "L3"]
POS = ["P1", "P2"]
DAYS = [date(2030, 1, d) for d in (1, 5, 9)]
TODAY = date(2030, 1, 5)

# --- the oracle -------------------------------------------------------------------------------


def rule_holds(rule: PickRule, unit: StockUnit) -> bool:
    """The meaning of a rule, spelled out again independently of the module."""
    values = rule.match_value
    if rule.match_type == "lot_number":
        return unit.lot_number in values
    if rule.match_type == "location":
        return unit.location in values
    if rule.match_type == "purchase_order":
        return unit.purchase_order in values
    for value in values:
        if value.startswith(">="):
            if unit.expires_on is None or unit.expires_on >= date.fromisoformat(value[2:]):
                return True
        elif unit.expires_on == date.fromisoformat(value):
            return True
    return False


def usable(unit: StockUnit, today: date | None) -> bool:
    return unit.available > 0 and (
        today is None or unit.expires_on is None or unit.expires_on >= today
    )


def oracle_fill(
    demand: OrderDemand,
    stock: Stock,
    locations: set[str],
    *,
    today: date | None,
    also: Sequence[PickRule] = (),
) -> int:
    """Most units the order can get: min over line subsets T of need(not T) + room(N(T))."""
    rules = [r for r in demand.pick_from if r.match_style == "hard"] + list(also)
    eligible = [
        {
            unit.key
            for unit in stock
            if unit.sku == line.sku
            and unit.location in locations
            and usable(unit, today)
            and all(rule_holds(r, unit) for r in rules if r.line_number in (None, line.line_number))
        }
        for line in demand.lines
    ]
    room = {unit.key: unit.available for unit in stock}
    best = None
    for size in range(len(demand.lines) + 1):
        for chosen in itertools.combinations(range(len(demand.lines)), size):
            outside = sum(ln.quantity for i, ln in enumerate(demand.lines) if i not in chosen)
            reached = set().union(*(eligible[i] for i in chosen)) if chosen else set()
            cut = outside + sum(room[k] for k in reached)
            best = cut if best is None else min(best, cut)
    assert best is not None
    return best


def location_sets(size: int) -> list[set[str]]:
    return [set(c) for c in itertools.combinations(LOCATIONS, size)]


def policy_options(
    demand: OrderDemand, stock: Stock, today: date | None
) -> tuple[int, list[set[str]]]:
    """What the policy allows: the quantity to ship and the location sets that ship it."""
    total = sum(line.quantity for line in demand.lines)
    if demand.policy is OrderPolicy.SINGLE_SHIPMENT:
        return total, [
            s for s in location_sets(1) if oracle_fill(demand, stock, s, today=today) == total
        ]
    best = oracle_fill(demand, stock, set(LOCATIONS), today=today)
    if demand.policy is OrderPolicy.ALLOW_SPLITS:
        return best, [set(LOCATIONS)]
    for size in range(1, len(LOCATIONS) + 1):
        sets = [
            s for s in location_sets(size) if oracle_fill(demand, stock, s, today=today) == best
        ]
        if sets:
            return best, sets
    return best, []


# --- strategies -------------------------------------------------------------------------------


@st.composite
def stocks(draw: st.DrawFn) -> Stock:
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(SKUS), st.sampled_from(LOCATIONS), st.sampled_from([None, *LOTS])
            ),
            unique=True,
            max_size=8,
        )
    )
    return Stock.of(
        StockUnit(
            sku,
            location,
            lot,
            expires_on=draw(st.sampled_from([None, *DAYS])),
            received_on=draw(st.sampled_from([None, *DAYS])),
            purchase_order=draw(st.sampled_from([None, *POS])),
            available=draw(st.integers(0, 4)),
            allocated=draw(st.integers(0, 2)),
            damaged=draw(st.integers(0, 2)),
            quality_control=draw(st.integers(0, 1)),
        )
        for sku, location, lot in keys
    )


@st.composite
def rules(draw: st.DrawFn, line_numbers: Sequence[int], style: str | None = None) -> PickRule:
    match_type = draw(st.sampled_from(list(MatchType)))
    pool = {
        MatchType.LOT_NUMBER: [*LOTS, "L9"],
        MatchType.LOCATION: [*LOCATIONS, "W9"],
        MatchType.PURCHASE_ORDER: [*POS, "P9"],
        MatchType.EXPIRATION_DATE: [d.isoformat() for d in DAYS] + [f">={d}" for d in DAYS],
    }[match_type]
    values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
    return PickRule(
        match_type,
        tuple(values),
        MatchStyle(style or draw(st.sampled_from(["hard", "soft"]))),
        draw(st.sampled_from([None, *line_numbers])),
    )


@st.composite
def demands(draw: st.DrawFn, order_id: str = "o1", soft_rules: int | None = None) -> OrderDemand:
    count = draw(st.integers(1, 3))
    lines = tuple(
        DemandLine(n, draw(st.sampled_from(SKUS)), draw(st.integers(1, 4)))
        for n in range(1, count + 1)
    )
    numbers = [line.line_number for line in lines]
    if soft_rules is None:
        picked = draw(st.lists(rules(numbers), max_size=2))
    else:
        hard = draw(st.lists(rules(numbers, "hard"), max_size=1))
        picked = hard + draw(
            st.lists(rules(numbers, "soft"), min_size=soft_rules, max_size=soft_rules)
        )
    return OrderDemand(
        id=order_id,
        lines=lines,
        policy=draw(st.sampled_from(list(OrderPolicy))),
        pick_from=tuple(picked),
        priority=draw(st.integers(0, 3)),
        submitted_at_ms=draw(st.integers(0, 3)),
    )


@st.composite
def order_batches(draw: st.DrawFn) -> list[OrderDemand]:
    count = draw(st.integers(1, 4))
    return [draw(demands(f"o{n}")) for n in range(count)]


today_or_not = st.sampled_from([None, TODAY])
PROPERTY = settings(max_examples=200, deadline=None)


def shipped(outcome: Allocated) -> int:
    return sum(p.quantity for s in outcome.shipments for p in s.picks)


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(stock=stocks(), orders=order_batches(), today=today_or_not)
def test_stock_is_never_negative_nor_allocated_twice(
    stock: Stock, orders: list[OrderDemand], today: date | None
) -> None:
    """Per unit: units picked = allocated after - allocated before = available before - after;
    other statuses untouched; each line is shipped plus short, never more."""
    run = allocate(orders, stock, today=today)
    picked: dict[tuple[str, str, str | None], int] = {}
    by_id = {o.id: o for o in orders}
    for outcome in run.outcomes:
        if not isinstance(outcome, Allocated):
            continue
        for shipment in outcome.shipments:
            assert shipment.picks and all(p.location == shipment.location for p in shipment.picks)
            for pick in shipment.picks:
                assert pick.quantity > 0
                key = (pick.sku, pick.location, pick.lot_number)
                picked[key] = picked.get(key, 0) + pick.quantity
        for line in by_id[outcome.order_id].lines:
            got = sum(
                p.quantity
                for s in outcome.shipments
                for p in s.picks
                if p.line_number == line.line_number
            )
            short = sum(s.quantity for s in outcome.shorts if s.line_number == line.line_number)
            assert got + short == line.quantity
    assert len(run.stock) == len(stock)
    for before in stock:
        after = run.stock.get(before.key)
        assert after is not None
        taken = picked.get((before.sku, before.location, before.lot_number), 0)
        assert after.available >= 0
        assert after.allocated - before.allocated == taken == before.available - after.available
        assert (after.damaged, after.backordered, after.quality_control) == (
            before.damaged,
            before.backordered,
            before.quality_control,
        )
        if taken:
            assert before.usable_on(today), "an expired lot was picked"


@PROPERTY
@given(stock=stocks(), orders=order_batches(), today=today_or_not)
def test_hard_rules_are_never_broken_and_single_shipments_never_split(
    stock: Stock, orders: list[OrderDemand], today: date | None
) -> None:
    run = allocate(orders, stock, today=today)
    by_id = {o.id: o for o in orders}
    for outcome in run.outcomes:
        if not isinstance(outcome, Allocated):
            continue
        demand = by_id[outcome.order_id]
        if demand.policy is OrderPolicy.SINGLE_SHIPMENT:
            assert len(outcome.shipments) == 1 and not outcome.shorts
        for shipment in outcome.shipments:
            for pick in shipment.picks:
                unit = stock_unit(stock, pick.sku, pick.location, pick.lot_number)
                for rule in demand.pick_from:
                    if rule.match_style == "hard" and rule.line_number in (None, pick.line_number):
                        assert rule_holds(rule, unit), (rule, unit)


@PROPERTY
@given(stock=stocks(), demand=demands(), today=today_or_not)
def test_an_order_ships_the_most_the_policy_allows_in_the_fewest_shipments(
    stock: Stock, demand: OrderDemand, today: date | None
) -> None:
    """Against exhaustive search: shipped quantity is the maximum; minimize_splits uses the
    fewest locations that ship it; single_shipment waits only when no location can fill it."""
    outcome = allocate([demand], stock, today=today).outcomes[0]
    hard_unmatched = any(
        not any(
            unit.sku == line.sku
            and all(
                rule_holds(r, unit)
                for r in demand.pick_from
                if r.match_style == "hard" and r.line_number in (None, line.line_number)
            )
            for unit in stock
        )
        for line in demand.lines
        if any(
            r.match_style == "hard" and r.line_number in (None, line.line_number)
            for r in demand.pick_from
        )
    )
    if hard_unmatched:
        assert isinstance(outcome, Failed) and outcome.reason is FailureReason.PICK_FROM_UNMATCHED
        return
    target, options = policy_options(demand, stock, today)
    if not options or target == 0:
        assert isinstance(outcome, Waiting)
        return
    assert isinstance(outcome, Allocated)
    assert shipped(outcome) == target
    if demand.policy is not OrderPolicy.ALLOW_SPLITS:
        assert len(outcome.shipments) == min(len(s) for s in options)


@PROPERTY
@given(stock=stocks(), demand=demands(soft_rules=1), today=today_or_not)
def test_a_soft_rule_is_honoured_whenever_an_allocation_honouring_it_exists(
    stock: Stock, demand: OrderDemand, today: date | None
) -> None:
    """If some allocation the policy allows (same quantity, same shipment count) keeps the
    soft rule, every unit picked for the lines it covers matches it."""
    outcome = allocate([demand], stock, today=today).outcomes[0]
    if not isinstance(outcome, Allocated):
        return
    soft = next(r for r in demand.pick_from if r.match_style == "soft")
    target, options = policy_options(demand, stock, today)
    possible = any(
        oracle_fill(demand, stock, s, today=today, also=[soft]) == target for s in options
    )
    honoured = all(
        rule_holds(soft, stock_unit(stock, pick.sku, pick.location, pick.lot_number))
        for s in outcome.shipments
        for pick in s.picks
        if soft.line_number in (None, pick.line_number)
    )
    assert possible == (soft not in outcome.relaxed)
    if possible:
        assert honoured


@PROPERTY
@given(stock=stocks(), orders=order_batches(), today=today_or_not, seed=st.integers(0, 1000))
def test_orders_take_stock_in_priority_order_whatever_order_they_come_in(
    stock: Stock, orders: list[OrderDemand], today: date | None, seed: int
) -> None:
    """Allocating a batch = allocating its orders one by one, most urgent first, each on the
    stock the previous ones left; shuffling the batch changes nothing."""
    run = allocate(orders, stock, today=today)
    shuffled = list(orders)
    random.Random(seed).shuffle(shuffled)
    assert allocate(shuffled, stock, today=today) == run
    ranked = sorted(orders, key=lambda o: (-o.priority, o.submitted_at_ms, o.id))
    assert [o.order_id for o in run.outcomes] == [o.id for o in ranked]
    left = stock
    for demand, outcome in zip(ranked, run.outcomes, strict=True):
        alone = allocate([demand], left, today=today)
        assert alone.outcomes[0] == outcome
        left = alone.stock
    assert left == run.stock


def stock_unit(stock: Stock, sku: str, location: str, lot: str | None) -> StockUnit:
    return next(u for u in stock if (u.sku, u.location, u.lot_number) == (sku, location, lot))


# --- examples ---------------------------------------------------------------------------------


def unit(
    location: str, lot: str | None, available: int, sku: str = "A", **more: object
) -> StockUnit:
    return StockUnit(sku, location, lot, available=available, **more)  # type: ignore[arg-type]


def order(
    *lines: tuple[str, int],
    policy: OrderPolicy = OrderPolicy.ALLOW_SPLITS,
    rules: Sequence[PickRule] = (),
    order_id: str = "o1",
    priority: int = 0,
    submitted_at_ms: int = 0,
) -> OrderDemand:
    return OrderDemand(
        order_id,
        tuple(DemandLine(n, sku, qty) for n, (sku, qty) in enumerate(lines, start=1)),
        policy,
        tuple(rules),
        priority,
        submitted_at_ms,
    )


def lot(*values: str, style: str = "hard", line: int | None = None) -> PickRule:
    return PickRule(MatchType.LOT_NUMBER, values, MatchStyle(style), line)


def picks(outcome: object) -> list[tuple[int, str, str | None, int]]:
    assert isinstance(outcome, Allocated), outcome
    return [
        (p.line_number, p.location, p.lot_number, p.quantity)
        for s in outcome.shipments
        for p in s.picks
    ]


def test_a_hard_lot_that_does_not_exist_fails_the_order_naming_line_and_lot() -> None:
    stock = Stock.of([unit("W1", "L1", 10)])
    outcome = allocate([order(("A", 1), rules=[lot("L-7")])], stock).outcomes[0]
    assert isinstance(outcome, Failed)
    assert outcome.reason is FailureReason.PICK_FROM_UNMATCHED
    assert outcome.line_number == 1
    assert "line 1 (A): no stock matches hard pick_from lot_number in ['L-7']" in outcome.detail


def test_a_hard_lot_is_kept_even_when_other_lots_could_fill_the_line_and_the_rest_is_short() -> (
    None
):
    stock = Stock.of([unit("W1", "L1", 2), unit("W1", "L2", 10)])
    outcome = allocate([order(("A", 5), rules=[lot("L1")])], stock).outcomes[0]
    assert picks(outcome) == [(1, "W1", "L1", 2)]
    assert isinstance(outcome, Allocated)
    assert [(s.quantity, s.reason) for s in outcome.shorts] == [(3, ShortReason.HARD_PICK_FROM)]


def test_a_soft_lot_is_honoured_when_it_can_be_even_against_fefo() -> None:
    stock = Stock.of(
        [
            unit("W1", "OLD", 5, expires_on=date(2030, 1, 1)),
            unit("W1", "NEW", 5, expires_on=date(2031, 1, 1)),
        ]
    )
    outcome = allocate([order(("A", 3), rules=[lot("NEW", style="soft")])], stock).outcomes[0]
    assert picks(outcome) == [(1, "W1", "NEW", 3)]


def test_a_soft_lot_that_cannot_be_honoured_is_relaxed_and_the_order_still_ships() -> None:
    stock = Stock.of([unit("W1", "L1", 2), unit("W1", "L2", 5)])
    rule = lot("L1", style="soft")
    outcome = allocate([order(("A", 4), rules=[rule])], stock).outcomes[0]
    assert isinstance(outcome, Allocated)
    assert outcome.relaxed == (rule,)
    assert picks(outcome) == [(1, "W1", "L1", 2), (1, "W1", "L2", 2)]  # matching units first


def test_single_shipment_waits_when_no_location_holds_the_whole_order() -> None:
    stock = Stock.of([unit("W1", None, 2), unit("W2", None, 2)])
    run = allocate([order(("A", 3), policy=OrderPolicy.SINGLE_SHIPMENT)], stock)
    outcome = run.outcomes[0]
    assert isinstance(outcome, Waiting)
    assert outcome.reason is WaitReason.NO_SINGLE_LOCATION
    assert "no location can fill all 3 units; W1 can fill 2" in outcome.detail
    assert run.stock == stock


def test_single_shipment_ships_from_the_one_location_that_holds_every_line() -> None:
    stock = Stock.of([unit("W1", None, 5), unit("W2", None, 5), unit("W2", None, 1, sku="B")])
    outcome = allocate(
        [order(("A", 3), ("B", 1), policy=OrderPolicy.SINGLE_SHIPMENT)], stock
    ).outcomes[0]
    assert picks(outcome) == [(1, "W2", None, 3), (2, "W2", None, 1)]


def test_allow_splits_ships_from_several_locations_and_shorts_the_rest() -> None:
    stock = Stock.of([unit("W1", None, 2), unit("W2", None, 3)])
    outcome = allocate([order(("A", 7))], stock).outcomes[0]
    assert isinstance(outcome, Allocated)
    assert [s.location for s in outcome.shipments] == ["W1", "W2"]
    assert sorted(picks(outcome)) == [(1, "W1", None, 2), (1, "W2", None, 3)]
    assert [(s.sku, s.quantity, s.reason) for s in outcome.shorts] == [
        ("A", 2, ShortReason.INSUFFICIENT_STOCK)
    ]


def test_minimize_splits_uses_one_location_where_fefo_alone_would_split() -> None:
    """W1 holds the oldest lot but too little; W2 can fill the whole order by itself."""
    stock = Stock.of(
        [
            unit("W1", "OLD", 1, expires_on=date(2030, 1, 1)),
            unit("W2", "NEW", 4, expires_on=date(2031, 1, 1)),
            unit("W2", None, 2, sku="B"),
        ]
    )
    outcome = allocate(
        [order(("A", 3), ("B", 2), policy=OrderPolicy.MINIMIZE_SPLITS)], stock
    ).outcomes[0]
    assert picks(outcome) == [(1, "W2", "NEW", 3), (2, "W2", None, 2)]


def test_minimize_splits_splits_when_no_location_can_fill_the_order() -> None:
    stock = Stock.of([unit("W1", None, 1), unit("W2", None, 3), unit("W3", None, 2)])
    outcome = allocate([order(("A", 5), policy=OrderPolicy.MINIMIZE_SPLITS)], stock).outcomes[0]
    assert isinstance(outcome, Allocated)
    assert [s.location for s in outcome.shipments] == ["W2", "W3"]
    assert not outcome.shorts


def test_the_more_urgent_order_gets_scarce_stock_first() -> None:
    """Seed 001: higher priority = more urgent, whatever order the batch lists them in."""
    stock = Stock.of([unit("W1", None, 3)])
    calm = order(("A", 3), order_id="calm", priority=1)
    urgent = order(("A", 3), order_id="urgent", priority=900)
    run = allocate([calm, urgent], stock)
    assert picks(run.outcome("urgent")) == [(1, "W1", None, 3)]
    assert isinstance(run.outcome("calm"), Waiting)


def test_equal_priorities_go_by_submission_time_then_id() -> None:
    stock = Stock.of([unit("W1", None, 1)])
    late = order(("A", 1), order_id="a", submitted_at_ms=2)
    early = order(("A", 1), order_id="b", submitted_at_ms=1)
    twin = order(("A", 1), order_id="c", submitted_at_ms=1)
    run = allocate([late, twin, early], stock)
    assert [o.order_id for o in run.outcomes] == ["b", "c", "a"]
    assert isinstance(run.outcome("b"), Allocated)


def test_fefo_picks_the_earliest_expiry_first_and_skips_expired_lots() -> None:
    stock = Stock.of(
        [
            unit("W1", "GONE", 5, expires_on=date(2030, 1, 1)),
            unit("W1", "SOON", 2, expires_on=date(2030, 2, 1)),
            unit("W1", "LATER", 5, expires_on=date(2030, 6, 1)),
            unit("W1", "NEVER", 5),
        ]
    )
    outcome = allocate([order(("A", 4))], stock, today=date(2030, 1, 15)).outcomes[0]
    assert picks(outcome) == [(1, "W1", "SOON", 2), (1, "W1", "LATER", 2)]


def test_expiration_date_matches_an_exact_day_or_not_before_a_day() -> None:
    stock = Stock.of(
        [
            unit("W1", "SOON", 5, expires_on=date(2030, 2, 1)),
            unit("W1", "LATER", 5, expires_on=date(2030, 6, 1)),
        ]
    )
    exact = PickRule(MatchType.EXPIRATION_DATE, ("2030-06-01",))
    floor = PickRule(MatchType.EXPIRATION_DATE, (">=2030-03-01",))
    assert picks(allocate([order(("A", 1), rules=[exact])], stock).outcomes[0]) == [
        (1, "W1", "LATER", 1)
    ]
    assert picks(allocate([order(("A", 1), rules=[floor])], stock).outcomes[0]) == [
        (1, "W1", "LATER", 1)
    ]
    with pytest.raises(ValueError, match="'June' is not a date"):
        PickRule(MatchType.EXPIRATION_DATE, ("June",))


def test_purchase_order_and_location_rules_choose_the_units() -> None:
    stock = Stock.of(
        [unit("W1", "L1", 5, purchase_order="P1"), unit("W2", "L2", 5, purchase_order="P2")]
    )
    by_po = PickRule(MatchType.PURCHASE_ORDER, ("P2",))
    by_location = PickRule(MatchType.LOCATION, ("W1",), line_number=1)
    assert picks(allocate([order(("A", 1), rules=[by_po])], stock).outcomes[0]) == [
        (1, "W2", "L2", 1)
    ]
    assert picks(allocate([order(("A", 1), rules=[by_location])], stock).outcomes[0]) == [
        (1, "W1", "L1", 1)
    ]


def test_a_line_rule_binds_its_line_only() -> None:
    stock = Stock.of([unit("W1", "L1", 1), unit("W1", "L2", 1)])
    outcome = allocate([order(("A", 1), ("A", 1), rules=[lot("L2", line=1)])], stock).outcomes[0]
    assert sorted(picks(outcome)) == [(1, "W1", "L2", 1), (2, "W1", "L1", 1)]


def test_an_order_with_nothing_available_waits_instead_of_shipping_nothing() -> None:
    stock = Stock.of([unit("W1", "L1", 0, damaged=4, allocated=2)])
    outcome = allocate([order(("A", 1))], stock).outcomes[0]
    assert isinstance(outcome, Waiting) and outcome.reason is WaitReason.NO_STOCK


def test_value_added_services_ride_on_every_shipment() -> None:
    wrap = ValueAddedService(service="gift_wrap")
    demand = OrderDemand("o1", (DemandLine(1, "A", 3),), value_added_services=(wrap,))
    stock = Stock.of([unit("W1", None, 2), unit("W2", None, 1)])
    outcome = allocate([demand], stock).outcomes[0]
    assert isinstance(outcome, Allocated)
    assert [s.value_added_services for s in outcome.shipments] == [(wrap,), (wrap,)]


def stored_order(**changes: object) -> Order:
    address = {
        "name": "A",
        "address1": "1 Main St",
        "city": "Town",
        "state": "CA",
        "postal_code": "90000",
        "country": "US",
    }
    fields: dict[str, object] = {
        "id": "ord-1",
        "customer_identifier": "c-1",
        "order_type": "customer",
        "priority": 5,
        "shipping_provider": "UPS",
        "shipper_service_level": "ground",
        "shipping_address": address,
        "billing_address": address,
        "submitted_at": "2030-01-01T00:00:00.000Z",
        "line_items": [{"sku_customer_identifier": "A", "quantity": "2.000", "unit_price": "1"}],
        "order_policy": "single_shipment",
        "created_at": "2030-01-01T00:00:00.000Z",
        "updated_at": "2030-01-01T00:00:00.000Z",
    }
    return Order.model_validate({**fields, **changes})


def test_a_stored_order_maps_onto_a_demand_with_its_pick_from_rules() -> None:
    """PickFrom(attribute, value, match) becomes a whole-order rule in MasonHub's spelling."""
    demand = demand_from_order(
        stored_order(pick_from=[{"attribute": "lot_number", "value": "L-7", "match": "soft"}])
    )
    assert demand.lines == (DemandLine(1, "A", 2),)
    assert demand.policy is OrderPolicy.SINGLE_SHIPMENT
    assert demand.priority == 5 and demand.submitted_at_ms == 1_893_456_000_000
    assert demand.pick_from == (PickRule(MatchType.LOT_NUMBER, ("L-7",), MatchStyle.SOFT),)


def test_a_fractional_quantity_fails_the_order_naming_the_line() -> None:
    stored = stored_order(
        line_items=[{"sku_customer_identifier": "A", "quantity": "1.5", "unit_price": "1"}]
    )
    outcome = allocate([stored], Stock.of([unit("W1", None, 9)])).outcomes[0]
    assert isinstance(outcome, Failed)
    assert outcome.reason is FailureReason.FRACTIONAL_QUANTITY and outcome.line_number == 1
    assert "line 1: quantity 1.5 is not a whole number of units" in outcome.detail


def test_an_unknown_hard_pick_from_attribute_fails_and_an_unknown_soft_one_is_ignored() -> None:
    stock = Stock.of([unit("W1", None, 9)])
    hard = stored_order(pick_from=[{"attribute": "colour", "value": "red", "match": "hard"}])
    soft = stored_order(
        id="ord-2", pick_from=[{"attribute": "colour", "value": "red", "match": "soft"}]
    )
    run = allocate([hard, soft], stock)
    failed = run.outcome("ord-1")
    assert isinstance(failed, Failed) and failed.reason is FailureReason.INVALID_PICK_FROM
    assert "pick_from attribute 'colour' is not one of lot_number" in failed.detail
    assert picks(run.outcome("ord-2")) == [(1, "W1", None, 2)]
    with pytest.raises(ValueError, match="'colour'"):
        rule_from_pick_from(PickFrom(attribute="colour", value="red"))


def test_masonhub_split_policy_maps_onto_order_policies() -> None:
    assert order_policy_from_split_policy("manual") is OrderPolicy.SINGLE_SHIPMENT
    assert order_policy_from_split_policy("auto") is OrderPolicy.MINIMIZE_SPLITS
    assert split_policy_from_order_policy(OrderPolicy.ALLOW_SPLITS) == "auto"
    assert split_policy_from_order_policy(OrderPolicy.SINGLE_SHIPMENT) == "manual"
    with pytest.raises(ValueError, match="'sometimes' is not one of manual, auto"):
        order_policy_from_split_policy("sometimes")


def test_an_order_listed_twice_in_one_run_is_refused() -> None:
    with pytest.raises(ValueError, match="once"):
        allocate([order(("A", 1)), order(("A", 1))], Stock())


def test_lines_of_one_sku_share_its_units_so_that_every_line_is_filled() -> None:
    """Line 1 may take L1 or L2, line 2 L1 or L3. Taking the oldest lot (L1) for line 1 would
    leave line 2 one unit short: line 1 must move to L2."""
    stock = Stock.of(
        [
            unit("W1", "L1", 1, expires_on=date(2030, 1, 1)),
            unit("W1", "L2", 1, expires_on=date(2030, 2, 1)),
            unit("W1", "L3", 1, expires_on=date(2030, 3, 1)),
        ]
    )
    line_rules = [lot("L1", "L2", line=1), lot("L1", "L3", line=2)]
    outcome = allocate([order(("A", 1), ("A", 2), rules=line_rules)], stock).outcomes[0]
    assert sorted(picks(outcome)) == [(1, "W1", "L2", 1), (2, "W1", "L1", 1), (2, "W1", "L3", 1)]


def test_minimize_splits_finds_two_locations_where_the_biggest_location_would_need_two_more() -> (
    None
):
    """W1 holds a bit of everything (the most units), but W2 and W3 together hold the whole
    order: two shipments, where starting from the biggest location needs three."""
    stock = Stock.of(
        [
            unit("W1", None, 2, sku="A"),
            unit("W1", None, 1, sku="B"),
            unit("W1", None, 1, sku="C"),
            unit("W1", None, 1, sku="D"),
            unit("W2", None, 2, sku="A"),
            unit("W2", None, 2, sku="B"),
            unit("W3", None, 2, sku="C"),
            unit("W3", None, 2, sku="D"),
        ]
    )
    lines = [("A", 2), ("B", 2), ("C", 2), ("D", 2)]
    fewest = allocate([order(*lines, policy=OrderPolicy.MINIMIZE_SPLITS)], stock).outcomes[0]
    free = allocate([order(*lines, policy=OrderPolicy.ALLOW_SPLITS)], stock).outcomes[0]
    assert isinstance(fewest, Allocated) and isinstance(free, Allocated)
    assert [s.location for s in fewest.shipments] == ["W2", "W3"]
    assert len(free.shipments) == 3  # allow_splits does not search: it may split more


def test_beyond_the_exact_limit_minimize_splits_covers_the_order_greedily() -> None:
    """With more candidate locations than `max_exact_locations`, the biggest location first:
    still every unit, with no shorts."""
    stock = Stock.of([unit("W1", None, 1), unit("W2", None, 3), unit("W3", None, 2)])
    demand = order(("A", 5), policy=OrderPolicy.MINIMIZE_SPLITS)
    outcome = allocate([demand], stock, max_exact_locations=1).outcomes[0]
    assert isinstance(outcome, Allocated) and not outcome.shorts
    assert [s.location for s in outcome.shipments] == ["W2", "W3"]


def test_a_rule_given_a_list_of_values_matches_any_of_them() -> None:
    rule = PickRule(MatchType.LOT_NUMBER, ["L1", "L2"], MatchStyle.HARD)  # type: ignore[arg-type]
    assert rule.match_value == ("L1", "L2")
    assert rule.matches(unit("W1", "L2", 1)) and not rule.matches(unit("W1", "L3", 1))
    with pytest.raises(ValueError, match="at least one non-empty value"):
        PickRule(MatchType.LOT_NUMBER, ())
