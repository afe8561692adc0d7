"""`hub serve --faults PROFILE|SPEC`: profiles, KEY=VALUE items, later items winning."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ordersync.errors import ConfigurationError
from ordersync.hub.faults import FaultSettings


def test_the_demo_profile_is_what_demo_faults_injects() -> None:
    assert FaultSettings.parse("demo") == FaultSettings.demo()


def test_items_apply_left_to_right_over_a_profile() -> None:
    """`demo,latency=0` is the demo profile without its latency; rates take percentages."""
    parsed = FaultSettings.parse("seed=7, demo, latency=0, error=5%")
    assert parsed == replace(FaultSettings.demo(seed=7), latency_ms=0, error_rate=0.05)


def test_a_spec_alone_sets_only_what_it_names() -> None:
    parsed = FaultSettings.parse("throttle=0.2,retry-after=3s,late=0.1,late-ms=1500ms")
    assert parsed == FaultSettings(
        throttle_rate=0.2, throttle_retry_after=3, late_commit_rate=0.1, late_commit_ms=1500
    )
    assert parsed.any and not FaultSettings.parse("off").any


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("chaos", "unknown profile 'chaos'"),
        ("errors=0.1", "unknown key 'errors'"),
        ("error=1.5", "'error=1.5' needs a rate from 0 to 1"),
        ("latency=-3", "'latency=-3' needs a whole number"),
        ("reset=lots", "'reset=lots' needs a rate"),
    ],
)
def test_a_wrong_item_is_named(spec: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(")):
        FaultSettings.parse(spec)
