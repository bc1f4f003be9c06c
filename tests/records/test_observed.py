"""Observed generation parameters and the request ledger."""

from __future__ import annotations

import asyncio
from pathlib import Path

from evalproxy.records.observed import (
    ObservedParams,
    RequestLedger,
    input_key,
    prompt_key,
    read_ledger,
)

MSG = [{"role": "user", "content": "What is 1 + 4?"}]


class TestObservedParams:
    def test_constant_params_render_as_single_values(self) -> None:
        """A parameter with one value on every request is that value; one never sent is left out."""
        obs = ObservedParams()
        for _ in range(3):
            obs.observe({"model": "m", "messages": MSG, "temperature": 0, "max_tokens": 16})
        assert obs.params() == {"temperature": 0, "max_tokens": 16}
        assert obs.total == 3

    def test_varied_params_render_counts(self) -> None:
        """A parameter that varied (or was absent on some requests) renders varied: true and counts per value."""
        obs = ObservedParams()
        obs.observe({"temperature": 0.6})
        obs.observe({"temperature": 0.6})
        obs.observe({"temperature": 0.0})
        obs.observe({})
        t = obs.params()["temperature"]
        assert t["varied"] is True
        assert t["values"] == [{"value": 0.6, "requests": 2}, {"value": 0.0, "requests": 1},
                               {"value": None, "absent": True, "requests": 1}]

    def test_numbers_compare_by_value(self) -> None:
        """``0`` and ``0.0`` are one value, so a mix of them is not 'varied'."""
        obs = ObservedParams()
        obs.observe({"temperature": 0})
        obs.observe({"temperature": 0.0})
        assert obs.params() == {"temperature": 0}

    def test_memory_is_bounded(self) -> None:
        """Past max_distinct values, further distinct values are only counted under 'other'."""
        obs = ObservedParams(max_distinct=4)
        for seed in range(1000):
            obs.observe({"seed": seed})
        seed = obs.params()["seed"]
        assert len(seed["values"]) == 4 and seed["other"] == 996


class TestKeys:
    def test_prompt_key_ignores_model_only(self) -> None:
        """The prompt key is the same across models but changes with any other field."""
        a = {"model": "a", "messages": MSG, "temperature": 0}
        assert prompt_key(a) == prompt_key({**a, "model": "b"})
        assert prompt_key(a) == prompt_key({**a, "temperature": 0.0})
        assert prompt_key(a) != prompt_key({**a, "temperature": 0.6})

    def test_input_key_ignores_sampling_params(self) -> None:
        """The input key pairs requests that ask the same thing with other sampling parameters."""
        a = {"model": "a", "messages": MSG, "temperature": 0}
        assert input_key(a) == input_key({**a, "temperature": 0.6, "seed": 3, "max_tokens": 9})
        assert input_key(a) != input_key({**a, "messages": [{"role": "user", "content": "other"}]})


class TestRequestLedger:
    def test_records_are_flushed_and_read_back(self, tmp_path: Path) -> None:
        """Every recorded request is in requests.jsonl after close, in order, with its fields and params."""
        ledger = RequestLedger(tmp_path, batch=7, interval=0.01)
        for i in range(20):
            ledger.record({"model": "m", "messages": MSG, "temperature": 0.0, "seed": i}, cache_key=f"c{i}", slot=0,
                          status=200, latency_ms=1.5, prompt_tokens=12, completion_tokens=1, finish_reason="stop")
        ledger.close()
        entries = list(read_ledger(tmp_path))
        assert [e.cache_key for e in entries] == [f"c{i}" for i in range(20)]
        assert entries[3].params == {"temperature": 0.0, "seed": 3}
        assert entries[0].finish_reason == "stop" and entries[0].prompt_tokens == 12
        assert entries[0].prompt_key == prompt_key({"messages": MSG, "temperature": 0.0, "seed": 0})

    async def test_record_hands_entries_to_the_writer_thread(self, tmp_path: Path) -> None:
        """Recording 2000 requests from a coroutine queues them for the ledger's thread, which writes every one."""
        ledger = RequestLedger(tmp_path)
        body = {"messages": [{"role": "user", "content": "x" * 10_000}]}
        for _ in range(2000):
            ledger.record(body, status=200)
        await ledger.aclose()
        assert ledger.written == 2000
        assert sum(1 for _ in read_ledger(tmp_path)) == 2000
        await asyncio.sleep(0)

    def test_torn_last_line_is_skipped(self, tmp_path: Path) -> None:
        """A line cut off by a killed process is ignored by the reader."""
        ledger = RequestLedger(tmp_path)
        ledger.record({"messages": MSG})
        ledger.close()
        with open(tmp_path / "requests.jsonl", "ab") as f:
            f.write(b'{"prompt_key": "abc", "sta')
        assert len(list(read_ledger(tmp_path))) == 1

    def test_unserialisable_body_is_counted_not_fatal(self, tmp_path: Path) -> None:
        """A body that cannot be encoded is counted in errors and the writer goes on."""
        ledger = RequestLedger(tmp_path, interval=0.01)
        ledger.record({"messages": {1, 2}})
        ledger.record({"messages": MSG})
        ledger.close()
        assert ledger.errors == 1 and ledger.written == 1
