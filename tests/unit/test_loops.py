"""ORDERSYNC_LOOP and stop signals where the loop has no add_signal_handler (Windows)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from ordersync import loops
from ordersync.errors import ConfigurationError


def test_auto_takes_uvloop_where_installed_and_asyncio_on_request() -> None:
    pytest.importorskip("uvloop")
    assert loops.loop_name({}) == "uvloop"
    assert loops.loop_name({"ORDERSYNC_LOOP": "asyncio"}) == "asyncio"


def test_an_unknown_loop_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="ORDERSYNC_LOOP='trio': use one of auto"):
        loops.loop_name({"ORDERSYNC_LOOP": "trio"})


def test_run_uses_asyncio_s_own_loop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSYNC_LOOP", "asyncio")

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert loops.run(which()).startswith("asyncio")


class _WindowsLikeLoop(asyncio.SelectorEventLoop):
    def add_signal_handler(self, *args: object) -> None:
        raise NotImplementedError


def test_stop_signals_reach_a_loop_without_add_signal_handler() -> None:
    """SIGTERM still sets the stop event; the previous handler is back afterwards."""
    loop = _WindowsLikeLoop()
    before = signal.getsignal(signal.SIGTERM)
    try:
        stop = asyncio.Event()

        async def wait_for_stop() -> None:
            restore = loops.on_stop_signals(loop, stop.set, (signal.SIGTERM,))
            try:
                loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)
                await asyncio.wait_for(stop.wait(), timeout=30)
            finally:
                restore()

        loop.run_until_complete(wait_for_stop())
        assert stop.is_set()
    finally:
        loop.close()
    assert signal.getsignal(signal.SIGTERM) == before
