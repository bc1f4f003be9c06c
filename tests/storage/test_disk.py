"""The on-disk store: entries, checksums, arrival order, and the batching store thread."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.adapter.core.errors import StoreFullError
from evalproxy.adapter.flow.sse import DONE_EVENT, make_event
from evalproxy.storage.base import (
    HOST,
    MAX_FAILURES,
    Failure,
    SavedPair,
    StoredAnswer,
    answer_key,
    by_value,
    cache_key,
    canonical_json,
)
from evalproxy.storage.disk import CacheStore, DiskStore, StoreWorker


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


class TestCacheKey:
    @pytest.mark.parametrize(("a", "b"), [
        ({"t": 0, "x": [{"y": 2.0}]}, {"x": [{"y": 2}], "t": 0.0}),
        ({"top_p": 1.0, "m": "a"}, {"m": "a", "top_p": 1}),
    ])
    def test_same_numbers_same_key(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        """Integral floats equal their integers at any depth, and key order never matters."""
        assert cache_key("/v1/chat/completions", a) == cache_key("/v1/chat/completions", b)

    @pytest.mark.parametrize(("a", "b"), [
        ({"x": True}, {"x": 1}), ({"x": [False]}, {"x": [0]}), ({"x": 0.5}, {"x": 0}), ({"x": "1"}, {"x": 1}),
    ])
    def test_different_values_different_key(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        """Booleans, strings and fractions never collapse into integers."""
        assert cache_key("/p", a) != cache_key("/p", b)

    def test_a_known_key(self) -> None:
        """The key of a known request is the one earlier versions stored answers under (cached answers are found)."""
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "top_p": 1,
                "n": 1.0, "x": [1.5, 2.0, {"b": True, "a": None}]}
        assert cache_key("/v1/chat/completions", body, "api-version=1") == \
            "8ec7116742d282cab3243eb735e9eae6bb481dd639bb874ff5548995c657921e"

    def test_records_canonicalise_as_keys_do(self) -> None:
        """Prompt keys and observed parameters use the cache key's canonical JSON (one canonicaliser)."""
        canon = canonical_json({"b": (1.0, 2**70 * 1.0), "a": {1: 0.0}})
        assert canon == b'{"a":{"1":0},"b":[1,1.1805916207174113e+21]}'
        assert by_value([True, 2.0, 2.5]) == [True, 2, 2.5]

    @pytest.mark.parametrize("value", [
        {"model": "m", "temperature": 0, "top_p": 0.95, "messages": [{"content": "6 x 7? 3.0, 1e+5 or 2.05"}]},
        {"x": [1.0, -0.0, 1e16, 2.5, 1e-7, 2**53 * 1.0], "y": {"z": 3.0}, "big": 1e300},
        {"b": (1.0, 2), "a": {1: 0.0}}, [{"a": 2.0}], "x", 7, 7.0, None,
    ])
    def test_bodies_with_and_without_integral_floats_canonicalise_alike(self, value: Any) -> None:
        """Written as it is (no integral float in sight) or through by_value, a value's canonical JSON is the one
        of its by_value copy."""
        assert canonical_json(value) == orjson.dumps(by_value(value), option=orjson.OPT_SORT_KEYS)

    def test_random_floats_canonicalise_as_by_value_does(self) -> None:
        """Floats of every magnitude, integral or not, at any depth: the same bytes as by_value's copy."""
        rng = random.Random(23)
        for _ in range(3000):
            f = rng.choice([float(rng.randint(-2**70, 2**70)), rng.uniform(-1e6, 1e6), float(rng.randint(-999, 999)),
                            rng.choice([-1.0, 1.0]) * 10.0 ** rng.randint(-30, 300)])
            value = {"n": f, "v": [{"k": f}, str(f)]}
            assert canonical_json(value) == orjson.dumps(by_value(value), option=orjson.OPT_SORT_KEYS), f


class TestCacheStore:
    def test_answers_survive_reopening(self, tmp_path: Path) -> None:
        """A stored body and a stored stream read back whole from a new store on the same directory."""
        s = CacheStore(tmp_path)
        events = [make_event({"choices": [{"index": 0, "delta": {"content": "hi"}}]}), DONE_EVENT]
        s.put_answer("a", 0, StoredAnswer(200, {"Content-Type": "application/json"}, body=b'{"ok": 1}'))
        s.put_answer("a", 1, StoredAnswer(200, {}, events=events))
        s.close()
        s = CacheStore(tmp_path)
        body, stream = s.get_answer("a", 0), s.get_answer("a", 1)
        assert s.get_answer("a", 2) is None and s.get_answer("b", 0) is None
        s.close()
        assert body is not None and body.body == b'{"ok": 1}' and body.headers == {"Content-Type": "application/json"}
        assert stream is not None and stream.events == events and stream.is_stream

    @pytest.mark.parametrize("garbage", [b"junk", "a string", {"a": "dict"}, 42])
    def test_foreign_value_is_a_miss_and_deleted(self, tmp_path: Path, garbage: Any) -> None:
        """Whatever else lies under an answer's key is never served: it is a miss and is removed."""
        s = CacheStore(tmp_path)
        s.responses.set(answer_key("k", 0), garbage)
        assert s.get_answer("k", 0) is None
        assert answer_key("k", 0) not in s.responses
        s.close()

    def test_truncated_large_answer_is_a_miss(self, tmp_path: Path) -> None:
        """A large answer (kept by diskcache in its own file) cut short on disk is detected and not served."""
        s = CacheStore(tmp_path)
        s.put_answer("big", 0, StoredAnswer(200, {}, body=random.Random(0).randbytes(200_000)))  # incompressible
        files = list((tmp_path / "responses").rglob("*.val"))
        assert len(files) == 1
        files[0].write_bytes(files[0].read_bytes()[:1000])
        assert s.get_answer("big", 0) is None
        s.close()


    @pytest.mark.parametrize("size", [10, 200_000])
    def test_answers_are_diskcache_entries_both_ways(self, tmp_path: Path, size: int) -> None:
        """Small answers (written by the store's own statement) and large ones (a file of diskcache's) read back
        through plain diskcache, and an entry diskcache wrote reads back through the store."""
        s = CacheStore(tmp_path)
        answer = StoredAnswer(200, {}, body=random.Random(size).randbytes(size))  # incompressible: 200 KB is a file
        s.put_answer("ours", 0, answer)
        assert StoredAnswer.decode(s.responses.get(answer_key("ours", 0))).body == answer.body
        s.responses.set(answer_key("theirs", 0), answer.encode())
        got = s.get_answer("theirs", 0)
        assert got is not None and got.body == answer.body
        assert len(s.responses) == 2 == s.count_answers()
        s.close()

    @pytest.mark.parametrize(("first", "second"), [(10, 20), (10, 200_000), (200_000, 10)])
    def test_a_replaced_answer_reads_back_new_and_leaves_no_file(self, tmp_path: Path, first: int,
                                                                  second: int) -> None:
        """Storing over an existing answer (small or large, either way) keeps only the new one on disk."""
        s = CacheStore(tmp_path)
        s.put_answer("k", 0, StoredAnswer(200, {}, body=random.Random(1).randbytes(first)))  # incompressible
        new = random.Random(2).randbytes(second)
        s.put_answer("k", 0, StoredAnswer(200, {}, body=new))
        got = s.get_answer("k", 0)
        assert got is not None and got.body == new and s.count_answers() == 1
        assert len(list((tmp_path / "responses").rglob("*.val"))) == (1 if second >= 32_768 else 0)
        s.close()

    def test_a_claim_found_empty_is_leased_in_one_transaction(self, tmp_path: Path) -> None:
        """Two stores on one directory: the first claim of a slot leases it, the second waits; once filled and
        released, a new claim is a hit."""
        a, b = CacheStore(tmp_path), CacheStore(tmp_path)
        first = a.claim("k", "run", sampled=False, reuse=True, owner="a")
        second = b.claim("k", "run", sampled=False, reuse=True, owner="b")
        assert (first.leased, first.answer) == (True, None) and (second.leased, second.answer) == (False, None)
        a.finish("k", 0, owner="a", answer=StoredAnswer(200, {}, body=b"ok"), pair=None)
        third = b.claim("k", "run", sampled=False, reuse=True, owner="b")
        assert third.answer is not None and third.answer.body == b"ok"
        a.close()
        b.close()
    def test_saved_pairs_carry_their_answers(self, tmp_path: Path) -> None:
        """Pairs come with the parsed body, or for a stream the assembled message plus the raw events; limit
        keeps the first ones."""
        s = CacheStore(tmp_path)
        events = [make_event({"object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": {"content": "po"}}]}), make_event({"choices": [
                {"index": 0, "delta": {"content": "ng"}, "finish_reason": "stop"}]}), DONE_EVENT]
        s.put_answer("k0", 0, StoredAnswer(200, {}, body=b'{"choices": []}'))
        s.put_answer("k1", 0, StoredAnswer(200, {}, events=events))
        for rid in (0, 1, 2):
            s.save_pair(SavedPair(run_id="r", request_id=rid, key=f"k{rid}", occurrence=0, path="/v1/x",
                                  request={"i": rid}, status=200, stream=rid == 1, received_at=float(rid)))
        pairs = s.saved_pairs()
        first_two = s.saved_pairs(2)
        s.close()
        assert [p.request_id for p in first_two] == [0, 1]
        assert pairs[0].response == {"choices": []} and pairs[0].events is None
        assert pairs[1].events == events
        assert pairs[1].response["choices"][0]["message"]["content"] == "pong"
        assert pairs[1].response["choices"][0]["finish_reason"] == "stop"
        assert pairs[2].response is None  # its answer was not saved

    def test_failures_are_bounded(self, tmp_path: Path) -> None:
        """At most MAX_FAILURES failures are kept, across reopening; the rest are refused."""
        s = CacheStore(tmp_path)
        with s.failures_db.transact():
            kept = [s.record_failure(Failure("r", i, "/v1/x", {"i": i}, 500, "boom", 0.0))
                    for i in range(MAX_FAILURES + 3)]
        s.close()
        s = CacheStore(tmp_path)
        refused = s.record_failure(Failure("r2", 0, "/v1/x", None, 502, "boom", 0.0))
        failures = s.failures()
        stats = s.stats()
        s.close()
        assert kept.count(False) == 3 and not refused
        assert len(failures) == MAX_FAILURES and [f.request_id for f in failures[:3]] == [0, 1, 2]
        assert stats["failures"] == MAX_FAILURES and stats["bytes"] > 0

    def test_pairs_come_back_in_arrival_order_across_runs(self, tmp_path: Path) -> None:
        """Pairs sort by run start, then by arrival within the run (request id 10 after 9)."""
        s = CacheStore(tmp_path)
        for run_id, rid in [("20260102T000000-b", 1), ("20260101T000000-a", 10), ("20260101T000000-a", 9)]:
            s.save_pair(pair(run_id, rid))
        got = [(p.run_id, p.request_id) for p in s.saved_pairs(with_responses=False)]
        s.close()
        assert got == [("20260101T000000-a", 9), ("20260101T000000-a", 10), ("20260102T000000-b", 1)]



def plant_lease(store: CacheStore, key: str, row: tuple[Any, ...]) -> None:
    """Write a lease row by hand, as a crashed or foreign writer could leave it."""
    with store.slots.transaction():
        store.slots.db.execute("INSERT OR REPLACE INTO evalproxy_leases VALUES (?, 0, ?, ?, ?, ?)", (key, *row))


class TestLeaseDeadline:
    """A lease row expires by the store's clock unless its holder renews it (finding 1 of issue 18)."""

    pytestmark = pytest.mark.timeout(20)

    def test_a_live_holder_that_never_renews_loses_its_lease(self, tmp_path: Path) -> None:
        """A lease of a running process that does not renew it is taken over once its deadline passes."""
        a, b = CacheStore(tmp_path, lease_seconds=0.3), CacheStore(tmp_path, lease_seconds=0.3)
        assert a.claim("k", "run", sampled=False, reuse=True, owner="a").leased
        assert not b.acquire("k", 0, owner="b").leased
        for _ in range(500):  # bounded: 10 s
            if b.acquire("k", 0, owner="b").leased:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the lease never expired")
        a.close()
        b.close()

    def test_renewal_moves_the_deadline(self, tmp_path: Path) -> None:
        """renew moves the holder's deadline forward; release still drops the renewed row."""
        s = CacheStore(tmp_path, lease_seconds=5)
        assert s.claim("k", "run", sampled=False, reuse=True, owner="a").leased
        query = "SELECT expires FROM evalproxy_leases WHERE key='k'"
        (first,) = s.slots.db.execute(query).fetchone()
        time.sleep(0.01)
        s.renew([("k", 0)], owner="a")
        assert s.slots.db.execute(query).fetchone()[0] > first
        s.finish("k", 0, owner="a", answer=None, pair=None)
        assert s.slots.db.execute(query).fetchone() is None
        s.close()

    @pytest.mark.parametrize("row", [
        ("x", HOST, os.getpid(), 1e18),  # a deadline no holder sets: far beyond one lease
        ("x", "elsewhere", 1, None),  # no deadline at all
        ("x", HOST, "not a pid", "soon"),  # unreadable
    ])
    def test_a_planted_lease_row_does_not_hold(self, tmp_path: Path, row: tuple[Any, ...]) -> None:
        """A lease row without a believable deadline (planted, or left by a foreign writer) is taken over."""
        s = CacheStore(tmp_path)
        plant_lease(s, "k", row)
        assert s.acquire("k", 0, owner="b").leased
        s.close()


class TestStoreWorker:
    async def test_reads_run_outside_the_write_transaction(self, tmp_path: Path) -> None:
        """A call runs inside its batch's write transaction; a read (a report's every saved pair) does not, so it
        never holds the write lock other processes wait for."""
        store = CacheStore(tmp_path)
        worker = StoreWorker(store)
        in_txn = lambda: store.slots.db.in_transaction  # noqa: E731
        assert await worker.call(in_txn) is True
        assert await worker.read(in_txn) is False
        await worker.aclose()

    async def test_a_hit_takes_no_write_lock(self, tmp_path: Path) -> None:
        """A deterministic request's stored answer is found while another process holds the database's write lock
        (a hit is a plain read); a miss waits for that lock, and then leases its slot."""
        store = DiskStore(tmp_path)
        assert (await store.claim("k", "r", sampled=False, reuse=True, owner="a")).leased
        await store.finish("k", 0, owner="a", answer=StoredAnswer(200, {}, body=b'{"x": 1}'), pair=None)
        other = sqlite3.connect(tmp_path / "responses" / "cache.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # what another process's batch holds while it writes
        hit = await asyncio.wait_for(store.claim("k", "r", sampled=False, reuse=True, owner="b"), 10)
        assert hit.answer is not None and hit.answer.body == b'{"x": 1}' and not hit.leased
        miss = asyncio.ensure_future(store.claim("new", "r", sampled=False, reuse=True, owner="b"))
        await asyncio.sleep(0.2)
        assert not miss.done()  # the look-up found nothing, so the claim needs the write lock
        other.execute("ROLLBACK")
        claim = await asyncio.wait_for(miss, 10)
        assert claim.answer is None and claim.leased
        other.close()
        await store.aclose()

    async def test_a_batch_of_claims_is_looked_up_together_as_one_by_one(self, tmp_path: Path) -> None:
        """Claims made in one turn (their look-ups read by one statement) get what each would get alone: hits
        (twice the same key, a large answer diskcache keeps in a file), a miss leased, a sampled claim (its first
        sample is slot 0, settled in the transaction), and a damaged entry deleted and then leased."""
        store = DiskStore(tmp_path)
        sync = store.sync
        big = random.Random(1).randbytes(100_000)
        sync.put_answer("hit", 0, StoredAnswer(200, {"A": "1"}, body=b'{"x": 1}'))
        sync.put_answer("big", 0, StoredAnswer(200, {}, body=big))
        sync.responses.set(answer_key("bad", 0), b"junk")
        asked = [("hit", False), ("hit", False), ("big", False), ("new", False), ("hit", True), ("bad", False)]
        got = await asyncio.gather(*(store.claim(k, "r", sampled=s, reuse=True, owner="o") for k, s in asked))
        x = b'{"x": 1}'
        assert [c.answer.body if c.answer else None for c in got] == [x, x, big, None, x, None]
        assert got[0].answer is not got[1].answer and got[0].answer is not None and got[0].answer.headers == {"A": "1"}
        assert [c.leased for c in got] == [False, False, False, True, False, True]
        assert answer_key("bad", 0) not in sync.responses
        await store.aclose()

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
        """A failing call raises in its own caller, as a StoreError; the others in its batch still succeed."""
        s = CacheStore(tmp_path)
        w = StoreWorker(s)

        def boom() -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        results = await asyncio.gather(w.call(boom), w.call(s.count_answers), return_exceptions=True)
        assert isinstance(results[0], StoreFullError) and isinstance(results[0].__cause__, OSError)
        assert results[1] == 0
        await w.aclose()


class TestDiskcacheTable:
    """The one adapter over diskcache's own table: what pyproject.toml's diskcache pin rests on."""

    @pytest.mark.parametrize("size", [10, 200_000])
    def test_plain_diskcache_and_the_table_read_each_other(self, tmp_path: Path, size: int) -> None:
        """A value the table writes reads back through a separate plain diskcache.Cache, and one that plain
        diskcache writes reads back through the table, small (an inline row) and large (a file of diskcache's)."""
        import diskcache

        from evalproxy.storage.diskcache_table import DiskcacheTable

        ours = diskcache.Cache(str(tmp_path), eviction_policy="none", statistics=False)
        table = DiskcacheTable(ours)
        plain = diskcache.Cache(str(tmp_path))
        try:
            table.put("written-by-table", b"a" * size)
            assert plain.get("written-by-table") == b"a" * size
            plain.set("written-by-diskcache", b"b" * size)
            assert table.get("written-by-diskcache") == b"b" * size
            table.put("written-by-diskcache", b"c" * size)  # a replacement goes through diskcache
            assert plain.get("written-by-diskcache") == b"c" * size == table.get("written-by-diskcache")
            plain.set("expired", b"d", expire=-1)
            assert table.get("expired") is None and table.get("absent") is None
            assert "written-by-table" in plain and "written-by-diskcache" in plain
        finally:
            plain.close()
            ours.close()
