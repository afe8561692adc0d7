"""`ordersync.quotas`: one grammar, one window math, one heavy-route table, one header syntax,
for hub and agent alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from ordersync import quotas
from ordersync.agent.budget import Quota, endpoint_class
from ordersync.hub.ratelimit import endpoint_class as hub_endpoint_class
from ordersync.quotas import (
    HEAVY_ROUTES,
    HUB_ROOTS,
    QuotaPolicy,
    QuotaSpecError,
    Window,
    format_policy,
    format_standing,
    parse_spec,
    parse_structured_list,
)
from tests.unit.test_layers import imported_modules, outward


@pytest.mark.parametrize(
    ("text", "prefix", "cls", "windows"),
    [
        ("500/minute", None, "all", [("minute", 60, 500)]),
        ("heavy:10/minute", None, "heavy", [("heavy-minute", 60, 10)]),
        ("heavy:5/2s", None, "heavy", [("heavy-2", 2, 5)]),
        ("40/10", None, "all", [("10", 10, 40)]),
        ("/v1/@heavy=10/minute", "/v1/", "heavy", [("heavy-minute", 60, 10)]),
        (
            "/api/v1/=5/minute,100/3600s",
            "/api/v1/",
            "all",
            [("minute", 60, 5), ("hour", 3600, 100)],
        ),
        (" /V1/@HEAVY = 10/Minutes ", "/V1/", "heavy", [("heavy-minute", 60, 10)]),
    ],
)
def test_one_grammar_reads_both_the_hubs_and_the_agents_spellings(
    text: str, prefix: str | None, cls: str, windows: list[tuple[str, int, int]]
) -> None:
    """`PREFIX[@CLASS]=...` and `[CLASS:]LIMIT/PERIOD` are one grammar; the prefix keeps case."""
    spec = parse_spec(text)
    assert (spec.prefix, spec.endpoint_class) == (prefix, cls)
    assert [(w.name, w.seconds, w.limit) for w in spec.windows or ()] == windows


@pytest.mark.parametrize("text", ["500", "/v1/=off/minute", "light:5/minute", "0/minute", "5/week"])
def test_a_malformed_spec_is_both_a_configuration_and_a_value_error(text: str) -> None:
    """The CLI catches ConfigurationError, pydantic ValueError: one error type serves both."""
    with pytest.raises(QuotaSpecError, match=r"e\.g\. '500/minute'"):
        parse_spec(text)
    assert issubclass(QuotaSpecError, ValueError)


def test_the_hub_reads_an_agent_style_spec_as_applying_to_every_path() -> None:
    """`heavy:10/minute` given to the hub limits every dialect's heavy listings."""
    policy = QuotaPolicy.from_specs("heavy:10/minute")
    assert policy.describe() == "/@heavy=10/minute"
    assert len(policy.windows_for("GET", "/api/v1/orders")) == 1
    assert policy.windows_for("GET", "/api/v1/orders/x") == ()


def test_hub_and_agent_agree_on_every_declared_heavy_route() -> None:
    """Each dialect's heavy routes, under its hub root, are heavy for hub and agent alike."""
    samples = {"[^/]+": "abc", "(search|poll)": "poll"}
    for dialect, routes in HEAVY_ROUTES.items():
        for method, route in routes:
            path = HUB_ROOTS[dialect] + route
            for pattern, value in samples.items():
                path = path.replace(pattern, value)
            assert hub_endpoint_class(method, path) == "heavy", path
            assert endpoint_class(method, f"http://hub{path}?limit=1") == "heavy", path
            assert hub_endpoint_class(method, path + "/x1") == "all"
            assert endpoint_class(method, f"http://hub{path}/x1") == "all"


def test_the_agent_reads_back_the_policy_the_hub_writes() -> None:
    """RateLimit-Policy and RateLimit as the hub formats them parse to the same numbers."""
    windows = [Window("minute", 60, 500), Window("heavy-10", 10, 4)]
    assert parse_structured_list(format_policy(windows)) == [
        ("minute", {"q": 500, "w": 60}),
        ("heavy-10", {"q": 4, "w": 10}),
    ]
    assert parse_structured_list(format_standing("hour", 12, 1500)) == [
        ("hour", {"r": 12, "t": 1500})
    ]


def test_an_agent_config_entry_names_its_window_as_the_hub_does() -> None:
    """The agent's `heavy:10/minute` is the window the hub calls "heavy-minute"."""
    hub_window = QuotaPolicy.hubrise_default().windows_for("GET", "/v1/location/orders")[-1][1]
    assert Quota.parse("heavy:10/minute").name == hub_window.name == "heavy-minute"


def test_the_quota_module_is_pure() -> None:
    """No web, database or I/O library, and no hub, store or agent module."""
    offenders = {m for m in imported_modules(Path(quotas.__file__), "ordersync") if outward(m)}
    assert offenders == set()
