"""A live one-line status on a terminal the proxy owns (``tty``: a bar redrawn in place), plain periodic log lines
elsewhere (``log``: when the terminal is shared with a harness's own display, or is no terminal). With a known
total (``server.progress_total``, which ``evalproxy run`` takes from ``--limit`` or a launcher's ``limit_samples``)
the line says how far the run is: answers of the total, percent and the time left at the rate so far."""

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
BAR_WIDTH = 20


def _clock(seconds: float) -> str:
    """``0:56``, ``1:02:03``: a time left as a person reads it."""
    total = int(seconds + 0.5)
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


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
        total: int | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.total = total
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self.stream.isatty() else "log"
        self.mode = mode
        self.interval = 0.5 if mode == "tty" else interval
        self._task: asyncio.Task[None] | None = None
        self._last: Snapshot | None = None
        self._t0 = time.monotonic()
        self._idle = 0.0  # seconds after start of the last line that saw no request

    def line(self, s: Snapshot, elapsed: float) -> str:
        """The status for ``s``, ``elapsed`` seconds after the proxy started. The time left counts from the last
        line that saw no request yet: a harness that takes a while to start does not stretch it."""
        if s.requests == 0:
            self._idle = elapsed
        rate = s.requests / elapsed if elapsed > 0 else 0.0
        busy = elapsed - self._idle
        hit_pct = f" ({100 * s.cache_hits / s.requests:.0f}%)" if s.requests else ""
        return (
            f"[evalproxy] {self.progress(s.requests, s.requests / busy if busy > 0 else rate)} ({rate:.1f}/s) | "
            f"cache hits {s.cache_hits}{hit_pct} | errors {s.errors} | in flight {s.in_flight}"
        )

    def progress(self, done: int, rate: float) -> str:
        """``12 requests``; with a total ``12/40 requests 30% ETA 0:56`` (a bar before it on a terminal). Past the
        total (retries, several requests a sample) the count goes on and the percent stays at 100."""
        if not self.total:
            return f"{done} requests"
        frac = min(done / self.total, 1.0)
        left = self.total - done
        eta = "ETA " + _clock(left / rate) if left > 0 and rate > 0 else "ETA -" if left > 0 else "done"
        bar = ""
        if self.mode == "tty":
            filled = round(frac * BAR_WIDTH)
            bar = "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "] "
        return f"{bar}{done}/{self.total} requests {100 * frac:.0f}% {eta}"

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
        elif self.mode == "log" and self._last is not None:
            self._emit()  # the last count, when it changed since the last line

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
