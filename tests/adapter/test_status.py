"""The live status line: what it says, and when it speaks."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pytest

from evalproxy.adapter.server.status import Snapshot, StatusReporter


class TestStatusReporter:
    def test_line_shows_counts_rate_and_hit_ratio(self) -> None:
        """The line names requests, rate, cache hits with their share, errors and in-flight requests."""
        r = StatusReporter(lambda: Snapshot(0, 0, 0, 0), mode="log")
        assert r.line(Snapshot(requests=40, errors=2, cache_hits=10, in_flight=3), elapsed=10.0) == (
            "[evalproxy] 40 requests (4.0/s) | cache hits 10 (25%) | errors 2 | in flight 3")

    def test_a_known_total_gives_percent_and_eta(self) -> None:
        """With the run's total, the line says answers of total, percent and the time left at the rate so far; a
        bar only where the proxy owns the terminal (issue 20: no total, percent or ETA)."""
        snap = Snapshot(requests=12, errors=0, cache_hits=0, in_flight=1)
        line = StatusReporter(lambda: snap, mode="log", total=40).line(snap, elapsed=24.0)
        assert line.startswith("[evalproxy] 12/40 requests 30% ETA 0:56 (0.5/s) | ") and "[#" not in line
        bar = StatusReporter(lambda: snap, mode="tty", total=40).line(snap, elapsed=24.0)
        assert bar.startswith("[evalproxy] [######..............] 12/40 requests 30% ETA 0:56")
        slow_start = StatusReporter(lambda: snap, mode="log", total=40)
        slow_start.line(Snapshot(0, 0, 0, 0), elapsed=20.0)  # the harness took 20 s to send its first request
        assert "12/40 requests 30% ETA 0:09 (0.5/s)" in slow_start.line(snap, elapsed=24.0)
        over = Snapshot(requests=45, errors=0, cache_hits=0, in_flight=0)
        assert "45/40 requests 100% done" in StatusReporter(lambda: over, mode="log", total=40).line(over, 9.0)

    async def test_tty_mode_redraws_in_place(self) -> None:
        """On a terminal the line is redrawn with a carriage return and ends with a newline on close."""
        out = io.StringIO()
        counts = {"n": 0}
        r = StatusReporter(lambda: Snapshot(counts["n"], 0, 0, 0), mode="tty", stream=out)
        r.interval = 0.01
        r.start()
        counts["n"] = 5
        await asyncio.sleep(0.05)
        await r.aclose()
        text = out.getvalue()
        assert text.startswith("\r\x1b[2K[evalproxy] 5 requests") and text.endswith("\n")

    async def test_log_mode_is_quiet_when_nothing_changes(self, caplog: pytest.LogCaptureFixture) -> None:
        """Off a terminal, a log line is written only when the numbers changed."""
        caplog.set_level(logging.INFO, logger="evalproxy.status")
        snap: dict[str, Any] = {"s": Snapshot(1, 0, 0, 0)}
        r = StatusReporter(lambda: snap["s"], mode="log", interval=0.01)
        r.start()
        await asyncio.sleep(0.08)
        await r.aclose()
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "evalproxy.status"]
        assert len(lines) == 1 and "1 requests" in lines[0]
