"""One way for a test to wait for something that happens on its own time: poll, bounded, and say what never came."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Check = Callable[[], "bool | Awaitable[bool]"]


async def wait_until(check: Check, *, what: str, seconds: float = 10.0, every: float = 0.02) -> None:
    """Return once ``check()`` (plain or async) is true; fail the test naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}, in vain")
        await asyncio.sleep(every)


def wait_until_sync(check: Callable[[], bool], *, what: str, seconds: float = 10.0, every: float = 0.02) -> None:
    """:func:`wait_until` for tests without an event loop (subprocesses, threads)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}, in vain")
        time.sleep(every)
