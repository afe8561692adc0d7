"""Which event loop the commands run on, and stop signals on every platform.

`ORDERSYNC_LOOP` chooses: `auto` (default: uvloop where it is installed, which the package's
dependency marker limits to non-Windows platforms; asyncio's own loop elsewhere), `uvloop` or
`asyncio`. `ORDERSYNC_LOOP=asyncio` is how a test runs the path a Windows machine takes.

Windows' loops have no `add_signal_handler`: there, Ctrl-C and SIGTERM reach the loop through
`signal.signal` and `call_soon_threadsafe` instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ordersync.errors import ConfigurationError

LOOP_ENV = "ORDERSYNC_LOOP"
LOOPS = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def loop_name(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The loop `ORDERSYNC_LOOP` asks for, `auto` resolved to what this machine has."""
    wanted = environ.get(LOOP_ENV, "auto").strip().lower() or "auto"
    if wanted not in LOOPS:
        raise ConfigurationError(f"{LOOP_ENV}={wanted!r}: use one of {', '.join(LOOPS)}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ConfigurationError(
                f"{LOOP_ENV}=uvloop but uvloop is not installed (it is not on Windows)"
            ) from None
        return "asyncio"
    return "uvloop"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` on the loop `ORDERSYNC_LOOP` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def on_stop_signals(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[], None],
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Callable[[], None]:
    """Call `callback` on the loop when one of `signals` arrives, on any platform; returns
    what puts the previous handling back."""
    added: list[signal.Signals] = []
    replaced: list[tuple[signal.Signals, Any]] = []

    def from_any_thread(*_: object) -> None:
        loop.call_soon_threadsafe(callback)

    for sig in signals:
        try:
            loop.add_signal_handler(sig, callback)
            added.append(sig)
        except (NotImplementedError, RuntimeError):
            # Windows (no add_signal_handler) or not the main thread's loop.
            replaced.append((sig, signal.signal(sig, from_any_thread)))

    def restore() -> None:
        for sig in added:
            loop.remove_signal_handler(sig)
        for sig, previous in replaced:
            signal.signal(sig, previous)

    return restore
