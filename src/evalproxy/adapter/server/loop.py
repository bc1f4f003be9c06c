"""The event loop the proxy runs on: uvloop where it is installed (a dependency on Linux), asyncio's own otherwise.

``EVALPROXY_LOOP=asyncio`` (or ``--loop asyncio``) turns uvloop off; ``uvloop`` insists on it.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

log = logging.getLogger("evalproxy")

T = TypeVar("T")
LoopName = Literal["auto", "uvloop", "asyncio"]
ENV = "EVALPROXY_LOOP"


def loop_factory(choice: str | None = None) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """(the loop's name, a factory for ``asyncio.Runner``; None means asyncio's default)."""
    name = (choice or os.environ.get(ENV) or "auto").lower()
    if name not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"{ENV} / --loop must be auto, uvloop or asyncio, not {name!r}")
    if name == "asyncio" or (name == "auto" and importlib.util.find_spec("uvloop") is None):
        return "asyncio", None
    import uvloop  # present (checked above), or asked for by name: then a missing uvloop is an error

    return "uvloop", uvloop.new_event_loop


GC_THRESHOLD = (10_000, 10, 10)
"""The proxy makes many short-lived objects per request and few reference cycles: CPython's default young-generation
collection every 700 allocations cost 7-12 % of its CPU under load (paired runs, bench/RESULTS.md). It collects every
10,000 instead, with what start-up made (modules, config, the app) frozen out of the full collections."""


def run(main: Coroutine[Any, Any, T], choice: str | None = None) -> T:
    """``asyncio.run(main)`` on the chosen loop, with the garbage collector tuned for serving."""
    name, factory = loop_factory(choice)
    log.debug("event loop: %s", name)
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
