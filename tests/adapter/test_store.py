"""The on-disk store: entries, checksums, arrival order, and the batching store thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from evalproxy.adapter.store import CacheStore, SavedPair, StoredAnswer, StoreWorker


def pair(run_id: str, request_id: int) -> SavedPair:
    return SavedPair(run_id=run_id, request_id=request_id, key=f"k{request_id}", occurrence=0, path="/v1/x",
                     request={"n": request_id}, status=200, stream=False, received_at=0.0)


class TestStoredAnswer:
    def test_round_trip_body_and_events(self) -> None:
        """Bodies and event sequences read back exactly."""
        body = StoredAnswer(200, {"a": "b"}, body=b'{"x": 1}')
        stream = StoredAnswer(200, {}, events=[b"data: 1\n\n", b"", b"data: [DONE]\n\n"])
        assert StoredAnswer.decode(body.encode()).body == b'{"x": 1}'
        assert StoredAnswer.decode(stream.encode()).events == stream.events

    @pytest.mark.parametrize("damage", [lambda b: b[:-1], lambda b: b[:20] + b"X" + b[21:], lambda b: b"junk"])
    def test_damage_is_detected(self, damage: object) -> None:
        """Truncated, altered or foreign bytes never decode."""
        blob = StoredAnswer(200, {}, body=b"hello world").encode()
        with pytest.raises(ValueError):
            StoredAnswer.decode(damage(blob))  # type: ignore[operator]


class TestCacheStore:
    def test_pairs_come_back_in_arrival_order_across_runs(self, tmp_path: Path) -> None:
        """Pairs sort by run start, then by arrival within the run (request id 10 after 9)."""
        s = CacheStore(tmp_path)
        for run_id, rid in [("20260102T000000-b", 1), ("20260101T000000-a", 10), ("20260101T000000-a", 9)]:
            s.save_pair(pair(run_id, rid))
        got = [(p.run_id, p.request_id) for p in s.saved_pairs(with_responses=False)]
        s.close()
        assert got == [("20260101T000000-a", 9), ("20260101T000000-a", 10), ("20260102T000000-b", 1)]


class TestStoreWorker:
    async def test_concurrent_calls_are_batched_and_all_answered(self, tmp_path: Path) -> None:
        """Many concurrent writes and reads through the store thread all complete, in order per caller."""
        s = CacheStore(tmp_path)
        w = StoreWorker(s)
        answer = StoredAnswer(200, {}, body=b"{}")
        await asyncio.gather(*(w.call(s.put_answer, f"k{i}", 0, answer) for i in range(300)))
        got = await asyncio.gather(*(w.call(s.get_answer, f"k{i}", 0) for i in range(300)))
        assert all(g is not None and g.body == b"{}" for g in got)
        await w.aclose()
        assert CacheStore(tmp_path).count_answers() == 300

    async def test_errors_reach_their_caller_only(self, tmp_path: Path) -> None:
        """A failing call raises in its own caller; the others in its batch still succeed."""
        s = CacheStore(tmp_path)
        w = StoreWorker(s)

        def boom() -> None:
            raise OSError("disk on fire")

        results = await asyncio.gather(w.call(boom), w.call(s.count_answers), return_exceptions=True)
        assert isinstance(results[0], OSError) and results[1] == 0
        await w.aclose()
