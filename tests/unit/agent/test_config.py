"""Configuration mistakes are one clear ConfigurationError naming the key, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from ordersync.agent.config import load_config, parse_config
from ordersync.errors import ConfigurationError

SOURCE = {
    "name": "masonhub",
    "base_url": "http://127.0.0.1:8080/api/v1",
    "token_env": "MASONHUB_TOKEN",
}


def test_a_port_override_that_is_no_number_names_the_port() -> None:
    """ORDERSYNC_AGENT_PORT=abc is a configuration error about `port`, not a ValueError."""
    with pytest.raises(ConfigurationError, match="port"):
        parse_config({"sources": [SOURCE]}, {"ORDERSYNC_AGENT_PORT": "abc"})


def test_a_port_override_that_is_a_number_is_taken() -> None:
    """ORDERSYNC_AGENT_PORT=9108 sets the port."""
    assert parse_config({"sources": [SOURCE]}, {"ORDERSYNC_AGENT_PORT": "9108"}).port == 9108


def test_a_page_size_of_one_names_the_key() -> None:
    """The listing walk re-checks one slot per page, so a page needs at least 2 records."""
    with pytest.raises(ConfigurationError, match=r"sources\[masonhub\]\.page_size"):
        parse_config({"sources": [SOURCE | {"page_size": 1}]}, {})


def test_a_config_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    """--config pointing at a directory is a clear error, not IsADirectoryError."""
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_config(tmp_path, {})


def test_the_inventory_stream_is_refused_for_tradecloud_and_taken_elsewhere() -> None:
    """Tradecloud has no inventory: asking for the stream there is a configuration error
    naming it; MasonHub and HubRise take it."""
    tradecloud = SOURCE | {
        "dialect": "tradecloud",
        "connection_name": "erp",
        "streams": ["orders", "inventory"],
    }
    with pytest.raises(ConfigurationError, match="inventory"):
        parse_config({"sources": [tradecloud]}, {})
    for dialect in ("masonhub", "hubrise"):
        source = SOURCE | {"dialect": dialect, "streams": ["orders", "inventory"]}
        (parsed,) = parse_config({"sources": [source]}, {}).sources
        assert parsed.streams == ["orders", "inventory"]
