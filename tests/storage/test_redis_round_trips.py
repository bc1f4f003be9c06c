"""Round trips to the shared store, counted by the real redis-server: one script call per event-loop
turn (in the same write, the HSETs of its answers and pairs before it and the HMGET of its looks' answers after it), a
hit costs one and a miss two (MONITOR on the real redis-server); answers go in compressed and replay byte-identical."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest
import redis.asyncio as aredis

from evalproxy.simulator import SimulatedModel
from evalproxy.storage import codec
from evalproxy.storage.base import StoredAnswer
from evalproxy.storage.redis import RedisStore, TurnBatch
from tests.storage.test_redis_server import RedisServer, needs_redis, redis_server
from tests.waiting import wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest
pytestmark = needs_redis


class Monitor:
    """The commands clients send to a real redis-server, as its MONITOR feed shows them: one line per command a
    client sent (commands a script runs show as ``lua`` and are left out), in the order the server ran them."""

    def __init__(self, url: str) -> None:
        self.client = aredis.Redis.from_url(url)  # sends the markers
        self.feed = aredis.Redis.from_url(url)  # reads the feed, on a connection of its own
        self.seen: list[str] = []

    async def __aenter__(self) -> Monitor:
        await self.client.ping()  # the markers' connection, opened (and its handshake done) before the feed starts
        self._monitor = await self.feed.monitor().__aenter__()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._monitor.__aexit__()
        await self.client.aclose()
        await self.feed.aclose()

    async def _read(self) -> None:
        while True:
            line = await self._monitor.next_command()
            if line["client_type"] != "lua":
                self.seen.append(line["command"].split(" ", 1)[0].lower())

    async def sent(self) -> list[str]:
        """The commands clients sent since the last call: a marker is sent after them and, the feed being in
        order, everything before it has been seen once it shows."""
        await self.client.echo("mark")
        await wait_until(lambda: "echo" in self.seen, what="the marker in the MONITOR feed")
        at = self.seen.index("echo")
        got, self.seen = self.seen[:at], self.seen[at + 1 :]
        return got


class TestBatches:
    async def test_calls_of_one_turn_are_one_script_call(self, redis_server: RedisServer) -> None:
        """Fifty claims, a finish and a renewal asked for in one turn reach the server in one write, one EVALSHA and
        the HMGET of the claims' answers, and each caller gets its own result."""
        store = RedisStore(redis_server.url)
        try:
            # Loads the script, and asks for the store's compression dictionary (once per process, before its
            # first write).
            await store.claim("warm", "r", sampled=False, reuse=True, owner="a")
            await store.finish("other", 0, owner="a", answer=StoredAnswer(200, {}, body=b"{}"), pair=None)
            async with Monitor(redis_server.url) as monitor:
                before = store.batch.round_trips
                claims = await asyncio.gather(
                    *(store.claim(f"k{i}", "r", sampled=False, reuse=True, owner="a") for i in range(50)),
                    store.finish("warm", 0, owner="a", answer=StoredAnswer(200, {}, body=b"{}"), pair=None),
                    store.renew([("k1", 0)], owner="a"))
                assert await monitor.sent() == ["hset", "evalsha", "hmget"]  # the finish's answer, then the script
                assert store.batch.round_trips - before == 1
            assert all(c.leased and c.slot == 0 for c in claims[:50])
            assert (await store.claim("warm", "r2", sampled=False, reuse=True, owner="b")).answer is not None
        finally:
            await store.aclose()

    async def test_any_bytes_survive_the_batch_framing(self, redis_server: RedisServer) -> None:
        """Answers of arbitrary bytes (colons, digits, NULs, empty), stored and claimed in one batch, come back
        exactly, with their slots."""
        store = RedisStore(redis_server.url)
        rng = random.Random(5)
        bodies = [b"", b"1:2:3:", b"\x00" * 300, rng.randbytes(20_000), b"7:" * 5000]
        try:
            await asyncio.gather(*(store.finish(f"b{i}", 0, owner="a", answer=StoredAnswer(200, {"k": ":"}, body=b),
                                                pair=None) for i, b in enumerate(bodies)))
            claims = await asyncio.gather(*(store.claim(f"b{i}", "r", sampled=False, reuse=True, owner="a")
                                            for i in range(len(bodies))))
            assert [c.answer.body if c.answer else None for c in claims] == bodies
            assert all(c.answer is not None and c.answer.headers == {"k": ":"} for c in claims)
        finally:
            await store.aclose()

    async def test_large_answers_close_a_batch(self, redis_server: RedisServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
        """Answers past the batch's byte bound go in batches of their own, small operations with them; all are
        stored."""
        monkeypatch.setattr(TurnBatch, "MAX_BYTES", 100_000)  # answers this large are compressed on the loop
        store = RedisStore(redis_server.url)
        big = [random.Random(i).randbytes(80_000) for i in range(2)]  # incompressible: stored at full size
        try:
            await store.finish("other", 0, owner="a", answer=StoredAnswer(200, {}, body=b"{}"), pair=None)
            before = store.batch.round_trips
            await asyncio.gather(*(store.finish(f"big{i}", 0, owner="a", answer=StoredAnswer(200, {}, body=b),
                                                pair=None) for i, b in enumerate(big)),
                                 *(store.save_pair(_pair()) for _ in range(3)))
            assert store.batch.round_trips - before == 2
            got = await store.get_answers([("big0", 0), ("big1", 0)])
            assert [a.body if a else None for a in got] == big
        finally:
            await store.aclose()

    async def test_looks_share_the_turns_batch_and_split_at_its_bound(self, redis_server: RedisServer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """Deterministic claims (looks) of one turn, hits, empty slots and a slot another owner fills, get each its
        own outcome, past the batch's bound in more batches; a look batched with the finish of its slot finds the
        answer, whichever was asked first."""
        store = RedisStore(redis_server.url)
        answer = StoredAnswer(200, {}, body=b'{"x":1}')
        try:
            await asyncio.gather(*(store.finish(f"h{i}", 0, owner="a", answer=answer, pair=None) for i in range(10)))
            assert (await store.claim("held", "r", sampled=False, reuse=True, owner="b")).leased
            monkeypatch.setattr(TurnBatch, "MAX_OPS", 8)
            before = store.batch.round_trips
            got = await asyncio.gather(*(store.claim(k, "r", sampled=False, reuse=True, owner="a")
                                         for k in [*(f"h{i}" for i in range(10)), "m0", "m1", "held", "m0"]))
            assert store.batch.round_trips - before == 2  # 14 looks: 8, then 6
            assert [c.answer.body if c.answer else None for c in got[:10]] == [b'{"x":1}'] * 10
            assert [(c.slot, c.answer, c.leased) for c in got[10:]] == [(0, None, True)] * 2 + [(0, None, False)] * 2
            monkeypatch.undo()
            late = await asyncio.gather(store.claim("late", "r", sampled=False, reuse=True, owner="c"),
                                        store.finish("late", 0, owner="a", answer=answer, pair=None))
            assert late[0].answer is not None and late[0].answer.body == b'{"x":1}'
            assert store.batch.round_trips - before == 3
        finally:
            await store.aclose()

    async def test_one_failing_operation_fails_only_its_caller(self, redis_server: RedisServer) -> None:
        """An operation the server refuses (the answers key is of another type) fails its own caller with a
        StoreError; the other operations of its batch succeed."""
        store = RedisStore(redis_server.url, prefix="bad:")
        good = RedisStore(redis_server.url, prefix="good:")
        try:
            await store.redis.set("bad:answers", "not a hash")
            claims = await asyncio.gather(store.claim("k", "r", sampled=False, reuse=True, owner="a"),
                                          store.save_pair(_pair()), return_exceptions=True)
            assert type(claims[0]).__name__ == "StoreError" and "WRONGTYPE" in str(claims[0])
            assert claims[1] is None and await store.count_pairs() == 1
            assert (await good.claim("k", "r", sampled=False, reuse=True, owner="a")).leased
        finally:
            await store.aclose()
            await good.aclose()

    async def test_a_refused_write_before_the_script_fails_only_its_callers(self, redis_server: RedisServer) -> None:
        """A pair whose hash the server refuses (another type) fails the two callers whose records it carried, with
        a StoreError naming WRONGTYPE; a finish in the same batch stores its answer, a claim is leased, and the
        connection stays in step for the next batch."""
        store = RedisStore(redis_server.url, prefix="pw:")
        try:
            await store.claim("warm", "r", sampled=False, reuse=True, owner="a")
            await store.redis.set("pw:pair", "not a hash")
            got = await asyncio.gather(store.save_pair(_pair()), store.save_pair(_pair()),
                                       store.finish("f", 0, owner="a", answer=StoredAnswer(200, {}, body=b"{}"),
                                                    pair=None),
                                       store.claim("c", "r", sampled=False, reuse=True, owner="a"),
                                       return_exceptions=True)
            assert [type(g).__name__ for g in got[:2]] == ["StoreError"] * 2 and "WRONGTYPE" in str(got[0])
            assert got[2] is None and got[3].leased
            again = await store.claim("f", "r", sampled=False, reuse=True, owner="b")
            assert again.answer is not None and again.answer.body == b"{}"
        finally:
            await store.aclose()

    async def test_an_operation_of_many_keys_runs_whole(self, redis_server: RedisServer) -> None:
        """A renewal of 150 slots (more fields than the script reads in one go) moves every one of their leases,
        the first as the last."""
        store = RedisStore(redis_server.url, lease_seconds=5)
        slots = [(f"m{i}", 0) for i in range(150)]
        try:
            await asyncio.gather(*(store.claim(k, "r", sampled=False, reuse=True, owner="o") for k, _ in slots))
            store.lease_seconds = 500
            await store.renew(slots, owner="o")
            ttls = [await store.redis.pttl(store._lease(k, s)) for k, s in slots]
            assert min(ttls) > 100_000
        finally:
            await store.aclose()

    async def test_a_killed_connection_and_a_flushed_script_fail_no_call(self, redis_server: RedisServer) -> None:
        """The batches' own connection killed by the server and the script flushed from it: the next calls (a
        finish whose answer goes before the script call among them) succeed all the same (a fresh connection, the
        script loaded again) and what they store is there."""
        store = RedisStore(redis_server.url)
        admin = aredis.Redis.from_url(redis_server.url)
        try:
            assert (await store.claim("a", "r", sampled=False, reuse=True, owner="o")).leased
            await admin.script_flush()
            both = await asyncio.gather(  # an answer's HSET goes before the script call: sent again with it
                store.claim("b", "r", sampled=False, reuse=True, owner="o"),
                store.finish("a", 0, owner="o", answer=StoredAnswer(200, {}, body=b'{"a":1}'), pair=None))
            assert both[0].leased
            again = await store.claim("a", "r2", sampled=False, reuse=True, owner="o2")
            assert again.answer is not None and again.answer.body == b'{"a":1}'
            assert not await admin.exists("evalproxy:lease:a:0")  # the settle ran: its lease is gone
            assert await admin.client_kill_filter(_type="normal", skipme=True) >= 1
            await store.finish("b", 0, owner="o", answer=StoredAnswer(200, {}, body=b'{"x":1}'), pair=None)
            got = await store.claim("b", "r2", sampled=False, reuse=True, owner="o2")
            assert got.answer is not None and got.answer.body == b'{"x":1}'
        finally:
            await admin.aclose()
            await store.aclose()

    async def test_a_call_the_server_refuses_whole_fails_its_batch_and_keeps_the_connection(
            self, redis_server: RedisServer) -> None:
        """The server refuses the script call itself (an ACL without EVALSHA): every caller of that batch gets a
        StoreError naming the refusal, and once allowed again the next calls succeed on the same connection (the
        error reply was read whole, nothing of it is left on the stream)."""
        store = RedisStore(redis_server.url)
        admin = aredis.Redis.from_url(redis_server.url)
        try:
            assert (await store.claim("a", "r", sampled=False, reuse=True, owner="o")).leased
            conn = store.batch_connections._idle[0]
            await admin.execute_command("ACL", "SETUSER", "default", "-evalsha")
            refused = await asyncio.gather(*(store.claim(k, "r", sampled=False, reuse=True, owner="o")
                                             for k in ("b", "c")), return_exceptions=True)
            assert [type(e).__name__ for e in refused] == ["StoreError", "StoreError"]
            assert "NOPERM" in str(refused[0]) or "permission" in str(refused[0]).lower()
            await admin.execute_command("ACL", "SETUSER", "default", "+evalsha")
            assert store._down_until == 0.0  # a refusal is no outage: the store is not taken as down
            await store.finish("a", 0, owner="o", answer=StoredAnswer(200, {}, body=b'{"x":1}'), pair=None)
            got = await store.claim("a", "r2", sampled=False, reuse=True, owner="o2")
            assert got.answer is not None and got.answer.body == b'{"x":1}'
            assert store.batch_connections._idle == [conn]
        finally:
            await admin.aclose()
            await store.aclose()


def _pair() -> Any:
    from evalproxy.storage.base import SavedPair

    return SavedPair(run_id="r", request_id=1, key="k", occurrence=0, path="/v1/x", request={}, status=200,
                     stream=False, received_at=1.0)


class TestThroughTheProxy:
    async def test_a_hit_costs_one_round_trip_and_a_miss_two(self, make_proxy: Any, sim: SimulatedModel,
                                                             redis_server: RedisServer) -> None:
        """Through the running proxy on a real server, for a JSON answer and a stream with long reasoning: a miss
        is one script call (and its look's HMGET) before the upstream call and one after, a hit one script call and
        its HMGET; what is stored is compressed, and the hit's bytes are the miss's bytes."""
        sim.reasoning, sim.reasoning_words, sim.answer_words = True, 1500, 200
        proxy = await make_proxy({"interceptors": [
            {"name": "caching", "config": {"cache_url": redis_server.url, "reuse_cached_responses": True,
                                           "save_requests": True}}, "endpoint"], "generate_html_report": False})

        async def ask(content: str, **extra: Any) -> tuple[bytes, str]:
            body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": content}], **extra}
            resp = await proxy.post("/v1/chat/completions", json=body)
            assert resp.status == 200
            return await resp.read(), resp.headers["X-EvalProxy-Cache"]

        await ask("warm up")  # the run's first answer also counts what the store holds (once per run)
        async with Monitor(redis_server.url) as monitor:
            for extra in ({}, {"stream": True, "stream_options": {"include_usage": True}}):
                miss, how = await ask("Prove it.", **extra)
                assert how == "miss"
                # The answer and the pair go by plain HSETs in the same write as the settling script.
                assert await monitor.sent() == ["evalsha", "hmget", "hset", "hset", "evalsha"]
                hit, how = await ask("Prove it.", **extra)
                assert how == "hit" and await monitor.sent() == ["evalsha", "hmget"]
                assert hit == miss and len(miss) > 5_000
        client = aredis.Redis.from_url(redis_server.url)
        try:
            blobs = list((await client.hgetall("evalproxy:answers")).values())
        finally:
            await client.aclose()
        assert len(blobs) == 3 and all(b[:4] == codec.ZMAGIC for b in blobs)
        assert all(len(b) < StoredAnswer.decode(b).size / 2 for b in blobs)
