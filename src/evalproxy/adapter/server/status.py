"""A live one-line status on a terminal, plain periodic log lines elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger("evalproxy.status")


@dataclass(frozen=True)
class Snapshot:
    requests: int
    errors: int
    cache_hits: int
    in_flight: int


class StatusReporter:
    """Shows request count, rate, cache hits, errors and requests in flight.

    On a terminal the line is redrawn in place twice a second; otherwise a log line is written every ``interval``
    seconds, and only when something changed, so a long quiet run does not fill its log.
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        *,
        mode: str = "auto",
        interval: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self.stream.isatty() else "log"
        self.mode = mode
        self.interval = 0.5 if mode == "tty" else interval
        self._task: asyncio.Task[None] | None = None
        self._last: Snapshot | None = None
        self._t0 = time.monotonic()

    def line(self, s: Snapshot, elapsed: float) -> str:
        rate = s.requests / elapsed if elapsed > 0 else 0.0
        hit_pct = f" ({100 * s.cache_hits / s.requests:.0f}%)" if s.requests else ""
        return (
            f"[evalproxy] {s.requests} requests ({rate:.1f}/s) | cache hits {s.cache_hits}{hit_pct} | "
            f"errors {s.errors} | in flight {s.in_flight}"
        )

    def start(self) -> None:
        if self.mode != "off" and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="evalproxy-status")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.mode == "tty" and self._last is not None:
            self._emit(final=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._emit()

    def _emit(self, final: bool = False) -> None:
        s = self.snapshot()
        if s == self._last and not final:
            return
        self._last = s
        text = self.line(s, time.monotonic() - self._t0)
        if self.mode == "tty":
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.stream.flush()
        else:
            log.info("%s", text)
