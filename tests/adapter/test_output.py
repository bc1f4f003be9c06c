"""The statistics writer and the merge of several proxies' statistics (adapter/server/output.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.adapter.core.files import dump_json
from evalproxy.adapter.flow.run import PersistedStats, RunFile, Statistics
from evalproxy.adapter.server.output import STATISTICS_FILE, StatisticsFile, merge_statistics


class Taken:
    """A snapshot of :class:`Counting`: its number, and a gate the test may hold its thread at."""

    def __init__(self, n: int, where: Path, gate: tuple[threading.Event, threading.Event] | None,
                 ended: threading.Event) -> None:
        self.n, self.where, self.gate, self.ended = n, where, gate, ended

    def files(self) -> list[RunFile]:
        return [RunFile(self.where / "run-r.json", orjson.dumps({"n": self.n}))]

    def section(self) -> dict[str, Any]:
        if self.gate is not None:
            entered, release = self.gate
            entered.set()
            release.wait(10)
            self.ended.set()
        return {"n": self.n}


class Counting(PersistedStats):
    """A unit that counts and persists one number per run in ``<dir>/run-r.json``."""

    stats_section = "counting"

    def __init__(self, where: Path) -> None:
        self.where, self.n = where, 0
        self.gate: tuple[threading.Event, threading.Event] | None = None
        self.gated_ended = threading.Event()
        self.taken_after_gated_ended: list[bool] = []

    def snapshot(self) -> Taken:
        gate, self.gate = self.gate, None
        self.taken_after_gated_ended.append(self.gated_ended.is_set())
        return Taken(self.n, self.where, gate, self.gated_ended)

    @classmethod
    def merged_section(cls, params: Any, output_dirs: list[Path]) -> dict[str, Any] | None:
        files = [d / "counting" / "run-r.json" for d in output_dirs]
        return {"n": sum(orjson.loads(f.read_bytes())["n"] for f in files if f.exists()), "exact": True}


class Undeclared:
    """Has a ``merged_section`` but does not declare :class:`PersistedStats`."""

    name = "undeclared"

    @classmethod
    def merged_section(cls, params: Any, output_dirs: list[Path]) -> dict[str, Any] | None:
        raise AssertionError("an undeclared unit is never asked")


def written(path: Path) -> dict[str, Any]:
    data = orjson.loads(path.read_bytes())
    assert isinstance(data, dict)
    return data


class TestStatisticsFile:
    async def test_writes_sections_and_run_files_keeping_other_sections(self, tmp_path: Path) -> None:
        """A write puts every section in the file, beside sections of earlier runs, and writes the units' run files."""
        path = tmp_path / STATISTICS_FILE
        path.write_bytes(dump_json({"old": {"kept": 1}}))
        stats = Statistics()
        unit = Counting(tmp_path / "counting")
        stats.persist(unit)
        stats.register("plain", lambda: {"hits": unit.n})
        unit.n = 3
        await StatisticsFile(path, stats).write()
        assert written(path) == {"old": {"kept": 1}, "counting": {"n": 3}, "plain": {"hits": 3}}
        assert written(tmp_path / "counting" / "run-r.json") == {"n": 3}

    async def test_a_section_whose_files_fail_is_still_reported(self, tmp_path: Path) -> None:
        """A unit whose run file cannot be written (its dir is a file) is logged, and its section still written."""
        (tmp_path / "counting").write_bytes(b"not a dir")
        stats = Statistics()
        stats.persist(Counting(tmp_path / "counting"))
        await StatisticsFile(tmp_path / STATISTICS_FILE, stats).write()
        assert written(tmp_path / STATISTICS_FILE) == {"counting": {"n": 0}}

    async def test_a_write_cancelled_in_its_thread_ends_before_the_next(self, tmp_path: Path) -> None:
        """A write cancelled while its thread runs (shutdown) still finishes before the next one starts, so the file
        ends with the later snapshot, not the earlier."""
        stats = Statistics()
        unit = Counting(tmp_path / "counting")
        stats.persist(unit)
        writer = StatisticsFile(tmp_path / STATISTICS_FILE, stats)
        entered, release = threading.Event(), threading.Event()
        unit.n, unit.gate = 1, (entered, release)
        first = asyncio.create_task(writer.write())
        assert await asyncio.to_thread(entered.wait, 10)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        unit.n = 2
        second = asyncio.create_task(writer.write())
        await asyncio.sleep(0)  # the second write's first step: it must wait for the first's thread
        release.set()
        await second
        assert unit.taken_after_gated_ended == [False, True]
        assert written(tmp_path / STATISTICS_FILE) == {"counting": {"n": 2}}
        assert written(tmp_path / "counting" / "run-r.json") == {"n": 2}

    def test_a_failing_unit_is_left_out(self) -> None:
        """A section whose snapshot raises is logged and left out; the others are taken."""
        stats = Statistics()
        stats.register("broken", lambda: {"x": 1 // 0})
        stats.register("fine", lambda: {"x": 1})
        assert list(stats.snapshot()) == ["fine"]


class TestMergeStatistics:
    def test_declared_units_merge_exactly_others_by_field(self, tmp_path: Path) -> None:
        """A PersistedStats class gives its own merged section; sections of undeclared units add up by field."""
        dirs = [tmp_path / "0", tmp_path / "1"]
        for i, d in enumerate(dirs):
            (d / "counting").mkdir(parents=True)
            (d / "counting" / "run-r.json").write_bytes(orjson.dumps({"n": i + 1}))
            (d / STATISTICS_FILE).write_bytes(dump_json({"counting": {"n": 99}, "undeclared": {"hits": i + 1}}))
        merged = merge_statistics(dirs, [(Counting, None), (Undeclared, None)])
        assert merged == {"counting": {"n": 3, "exact": True}, "undeclared": {"hits": 3}}
