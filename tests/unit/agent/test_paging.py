"""TiePager: re-anchoring per page, the overlap check, and tie restarts (pure)."""

from __future__ import annotations

import pytest

from ordersync.agent.errors import ProtocolError
from ordersync.agent.paging import PageRequest, TiePager
from ordersync.agent.records import Record


def rec(ts: int, rid: str, version: int = 1) -> Record:
    return Record("order", rid, version, ts, {})


def test_first_request_starts_at_since_with_offset_zero() -> None:
    """A walk begins at `since`, offset 0, the full page size."""
    assert TiePager(500, 100).next_request() == PageRequest(500, 0, 100)


def test_next_request_reanchors_at_the_last_timestamp_with_one_slot_of_overlap() -> None:
    """Two records at the last timestamp: ask from it at offset 1 to re-check the last one."""
    pager = TiePager(0, 4)
    fresh = pager.accept(pager.next_request(), [rec(1, "a"), rec(2, "b"), rec(5, "c"), rec(5, "d")])
    assert len(fresh) == 4
    assert pager.next_request() == PageRequest(5, 1, 4)


def test_a_page_wholly_inside_a_tie_advances_the_offset_within_it() -> None:
    """Offsets accumulate only while every record shares the anchor timestamp."""
    pager = TiePager(7, 3)
    pager.accept(pager.next_request(), [rec(7, "a"), rec(7, "b"), rec(7, "c")])
    request = pager.next_request()
    assert request == PageRequest(7, 2, 3)
    fresh = pager.accept(request, [rec(7, "c"), rec(7, "d"), rec(7, "e")])
    assert [r.id for r in fresh] == ["d", "e"]
    assert pager.next_request() == PageRequest(7, 4, 3)


def test_a_shifted_tie_is_walked_again_from_offset_zero() -> None:
    """When the overlap slot holds another record, a counted one moved: restart the tie."""
    pager = TiePager(7, 3)
    pager.accept(pager.next_request(), [rec(7, "a"), rec(7, "b"), rec(7, "c")])
    request = pager.next_request()
    assert pager.accept(request, [rec(7, "d"), rec(7, "e"), rec(9, "a", 2)]) == []
    assert pager.tie_restarts == 1
    assert pager.next_request() == PageRequest(7, 0, 3)


def test_a_short_page_ends_the_walk() -> None:
    """Fewer records than the limit: caught up."""
    pager = TiePager(0, 3)
    pager.accept(pager.next_request(), [rec(1, "a")])
    assert pager.done


def test_records_before_since_are_a_protocol_error() -> None:
    """A listing that ignores updated_since or is not ascending is refused."""
    pager = TiePager(10, 3)
    with pytest.raises(ProtocolError):
        pager.accept(pager.next_request(), [rec(9, "a")])


def test_page_size_one_cannot_make_progress_and_is_refused() -> None:
    """One slot would be all overlap."""
    with pytest.raises(ValueError):
        TiePager(0, 1)
