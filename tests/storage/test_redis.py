"""The Redis store against a real redis-server: the same slots, leases, answers, pairs and failures as on disk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from evalproxy.storage import DiskStore, is_url, open_store
from evalproxy.storage.base import MAX_FAILURES, Failure, SavedPair, StoredAnswer
from evalproxy.storage.redis import RedisStore, StoreUnavailableError, parse_location
from tests.storage.test_redis_server import RedisServer, needs_redis, redis_server
from tests.waiting import wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest
pytestmark = needs_redis
T = TypeVar("T")


async def eventually(call: Callable[[], Awaitable[T]], seconds: float = 30) -> T:
    """The first result of ``call`` that is not a store error, trying again for up to ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            return await call()
        except (ConnectionError, StoreUnavailableError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


def pair(run_id: str, request_id: int, received_at: float, key: str = "k") -> SavedPair:
    return SavedPair(run_id=run_id, request_id=request_id, key=key, occurrence=0, path="/v1/x",
                     request={"n": request_id}, status=200, stream=False, received_at=received_at)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url)
    try:
        yield s
    finally:
        await s.aclose()


class TestLocation:
    def test_our_query_parameters_are_taken_off(self) -> None:
        """prefix and timeout are read from the URL and never reach the client; other parameters stay."""
        url, prefix, timeout = parse_location("redis://h:1/2?prefix=proj:&timeout=0.5&protocol=3")
        assert (url, prefix, timeout) == ("redis://h:1/2?protocol=3", "proj:", 0.5)

    def test_open_store_picks_the_backend(self, tmp_path: Path) -> None:
        """A URL gives the Redis store (without connecting), a directory the disk store."""
        assert is_url("rediss://h/0") and is_url("unix:///tmp/r.sock") and not is_url(str(tmp_path))
        assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
        assert isinstance(open_store(tmp_path), DiskStore)


class TestSlots:
    async def test_sampled_claims_take_successive_slots_per_run(self, store: RedisStore) -> None:
        """The k-th claim of a sampled key in a run gets slot k, leased; another run starts at slot 0 again."""
        claims = await asyncio.gather(*(store.claim("k", "r1", sampled=True, reuse=True, owner=f"o{i}")
                                        for i in range(5)))
        assert sorted(c.slot for c in claims) == [0, 1, 2, 3, 4] and all(c.leased for c in claims)
        other = await store.claim("k", "r2", sampled=True, reuse=True, owner="x")
        assert other.slot == 0 and not other.leased and other.answer is None  # r1's o0 is filling it

    async def test_finish_stores_and_replays(self, store: RedisStore) -> None:
        """A finished slot replays to the next claimant, body and stream alike, with the lease released."""
        c = await store.claim("k", "r", sampled=False, reuse=True, owner="a")
        assert c.leased
        await store.finish("k", 0, owner="a", answer=StoredAnswer(200, {"a": "b"}, body=b'{"x": 1}'), pair=None)
        again = await store.claim("k", "r2", sampled=False, reuse=True, owner="b")
        assert again.answer is not None and again.answer.body == b'{"x": 1}' and again.answer.headers == {"a": "b"}
        events = [b'data: {"choices": []}\n\n', b"data: [DONE]\n\n"]
        await store.claim("s", "r", sampled=False, reuse=True, owner="a")
        await store.finish("s", 0, owner="a", answer=StoredAnswer(200, {}, events=events), pair=None)
        replay = await store.acquire("s", 0, owner="b")
        assert replay.answer is not None and replay.answer.events == events

    async def test_abandoned_sampled_slot_goes_back_to_its_run(self, store: RedisStore) -> None:
        """A sample that got no answer hands its slot back: the run's next claim takes the lowest handed-back one."""
        a = await store.claim("k", "r", sampled=True, reuse=True, owner="o")
        b = await store.claim("k", "r", sampled=True, reuse=True, owner="o")
        await store.abandon("k", a.slot, owner="o", run_id="r", sampled=True)
        c = await store.claim("k", "r", sampled=True, reuse=True, owner="o")
        assert (a.slot, b.slot, c.slot) == (0, 1, 0) and c.leased

    async def test_lease_is_exclusive_until_released(self, store: RedisStore) -> None:
        """A held lease makes others wait (even the same owner); released, the next caller takes it."""
        assert (await store.claim("k", "r", sampled=False, reuse=True, owner="a")).leased
        assert not (await store.acquire("k", 0, owner="b")).leased
        assert not (await store.acquire("k", 0, owner="a")).leased
        await store.abandon("k", 0, owner="b", run_id="r", sampled=False)  # not b's lease: nothing happens
        assert not (await store.acquire("k", 0, owner="b")).leased
        await store.abandon("k", 0, owner="a", run_id="r", sampled=False)
        assert (await store.acquire("k", 0, owner="b")).leased

    async def test_renewal_keeps_a_lease_alive(self, store: RedisStore) -> None:
        """renew pushes the lease's expiry back to LEASE_SECONDS."""
        await store.claim("k", "r", sampled=False, reuse=True, owner="a")
        lease = store._lease("k", 0)
        await store.redis.pexpire(lease, 500)
        await store.renew([("k", 0)], owner="a")
        assert await store.redis.pttl(lease) > 20_000

    async def test_lease_of_a_dead_local_process_is_taken_over(self, store: RedisStore) -> None:
        """A lease whose holder process on this host is gone does not make others wait for its expiry."""
        await store.redis.set(store._lease("k", 0), "someone|" + __import__("socket").gethostname() + "|999999999",
                              px=30_000)
        assert (await store.acquire("k", 0, owner="b")).leased

    async def test_corrupted_answer_is_a_miss(self, store: RedisStore) -> None:
        """A damaged entry is never served: dropped, and the caller gets the lease to fill it again."""
        blob = StoredAnswer(200, {}, body=b"hello").encode()
        await store.redis.hset(store.k_answers, "k:0", blob[:-1])
        c = await store.claim("k", "r", sampled=False, reuse=True, owner="a")
        assert c.answer is None and c.leased
        assert await store.count_answers() == 0

    async def test_without_reuse_the_caller_always_fills(self, store: RedisStore) -> None:
        """reuse off: no look-up, the caller gets the slot to fill even when an answer is stored."""
        await store.finish("k", 0, owner="a", answer=StoredAnswer(200, {}, body=b"1"), pair=None)
        c = await store.claim("k", "r", sampled=False, reuse=False, owner="b")
        assert c.leased and c.answer is None



async def store_ms(store: RedisStore) -> int:
    """The store's own clock (Redis TIME), in milliseconds."""
    seconds, micros = await store.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


class TestLeaseDeadline:
    """A lease expires by the store's clock even when its key has no TTL (finding 1 of issue 18)."""

    pytestmark = pytest.mark.timeout(20)

    async def test_lease_without_ttl_or_deadline_is_taken_over(self, store: RedisStore) -> None:
        """A lease key planted with no TTL and no deadline in its value (another host's holder) is taken over."""
        await store.redis.set(store._lease("k", 0), "someone|elsewhere|1")
        assert await store.redis.pttl(store._lease("k", 0)) == -1
        assert (await store.acquire("k", 0, owner="b")).leased

    async def test_lease_without_ttl_expires_at_its_deadline(self, store: RedisStore) -> None:
        """A lease key with no TTL holds until the deadline in its value passes by the store's clock, then the
        next caller takes it over."""
        store.lease_seconds = 1.0
        lease = store._lease("k", 0)
        await store.redis.set(lease, f"{await store_ms(store) + 800}|someone|elsewhere|1")
        assert not (await store.acquire("k", 0, owner="b")).leased
        async def taken() -> bool:
            return (await store.acquire("k", 0, owner="b")).leased

        await wait_until(taken, what="the planted lease's deadline to pass", seconds=20, every=0.05)
        assert await store.redis.pttl(lease) > 0

    async def test_deadline_beyond_one_lease_is_taken_over(self, store: RedisStore) -> None:
        """A deadline further ahead than one lease (no holder sets one) is not believed: the lease is taken."""
        await store.redis.set(store._lease("k", 0), f"{await store_ms(store) + 10**9}|someone|elsewhere|1")
        assert (await store.acquire("k", 0, owner="b")).leased

    async def test_old_style_lease_with_ttl_holds_until_it_expires(self, store: RedisStore) -> None:
        """A lease without a deadline in its value but with a TTL (an older proxy's) holds while the TTL runs."""
        await store.redis.set(store._lease("k", 0), "someone|elsewhere|1", px=20_000)
        assert not (await store.acquire("k", 0, owner="b")).leased

    async def test_renewal_moves_the_deadline_and_release_still_works(self, store: RedisStore) -> None:
        """renew moves the deadline in the lease value (and its TTL); finish releases the renewed lease."""
        store.lease_seconds = 1.0
        assert (await store.claim("k", "r", sampled=False, reuse=True, owner="a")).leased
        lease = store._lease("k", 0)
        first = int((await store.redis.get(lease)).split(b"|")[0])
        async def moved_on() -> bool:  # the store's clock moves on before the renewal
            return await store_ms(store) > first - 990

        await wait_until(moved_on, what="the store's clock to move on", seconds=2, every=0.01)
        await store.renew([("k", 0)], owner="a")
        assert int((await store.redis.get(lease)).split(b"|")[0]) > first
        assert not (await store.acquire("k", 0, owner="b")).leased
        await store.finish("k", 0, owner="a", answer=None, pair=None)
        assert await store.redis.exists(lease) == 0


class TestRecords:
    async def test_pairs_come_back_in_arrival_order_across_processes(self, redis_server: RedisServer) -> None:
        """Pairs saved by two stores (two proxies of one run, same request ids) all come back, by arrival time."""
        a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
        try:
            t = time.time()
            await a.save_pair(pair("run", 1, t + 2))
            await b.save_pair(pair("run", 1, t + 1))
            await a.finish("k", 0, owner="a", answer=StoredAnswer(200, {}, body=b'{"ok": 1}'),
                           pair=pair("run", 2, t + 3))
            got = await a.saved_pairs()
            assert [p.received_at for p in got] == [t + 1, t + 2, t + 3]
            assert got[2].response == {"ok": 1}
            assert len(await b.saved_pairs(2, with_responses=False)) == 2 and await b.count_pairs() == 3
        finally:
            await a.aclose()
            await b.aclose()

    async def test_failures_are_bounded(self, store: RedisStore) -> None:
        """At most MAX_FAILURES failures are kept, however many proxies record them."""
        for i in range(MAX_FAILURES + 5):
            await store.record_failure(Failure("r", i, "/p", None, 500, "boom", float(i)))
        got = await store.failures()
        assert len(got) == MAX_FAILURES and got[0].request_id == 0

    async def test_prefixes_keep_projects_apart(self, redis_server: RedisServer) -> None:
        """Two prefixes on one server see only their own entries; clear empties one prefix only."""
        a = RedisStore(redis_server.url + "?prefix=a:")
        b = RedisStore(redis_server.url + "?prefix=b:")
        try:
            await a.finish("k", 0, owner="o", answer=StoredAnswer(200, {}, body=b"1"), pair=None)
            assert (await b.claim("k", "r", sampled=False, reuse=True, owner="o")).answer is None
            assert (await a.stats())["answers"] == 1 and (await b.stats())["answers"] == 0
            assert await a.clear() == 1
            assert await a.count_answers() == 0 and await b.redis.exists("b:lease:k:0") == 1
        finally:
            await a.aclose()
            await b.aclose()


class TestServerTrouble:
    async def test_down_server_fails_fast_and_comes_back(self, redis_server: RedisServer) -> None:
        """With the server gone a call raises within the timeout and later calls fail at once; when it is back the
        store reconnects by itself."""
        store = RedisStore(redis_server.url + "?timeout=0.5")
        try:
            await store.count_answers()
            redis_server.stop(hard=True)
            with pytest.raises(ConnectionError):  # a hang fails the test at the guard, not here
                await asyncio.wait_for(store.count_answers(), 30)
            with pytest.raises(StoreUnavailableError):
                await asyncio.wait_for(store.count_answers(), 30)
            redis_server.start()
            assert await eventually(store.count_answers) == 0
            c = await store.claim("k", "r", sampled=True, reuse=True, owner="o")  # scripts are loaded again
            assert c.leased
        finally:
            await store.aclose()

    async def test_slow_server_is_bounded_by_the_timeout(self, redis_server: RedisServer) -> None:
        """A server that does not answer (paused) makes a call fail after the timeout, not hang."""
        store = RedisStore(redis_server.url + "?timeout=0.3")
        assert redis_server.proc is not None
        try:
            await store.count_answers()
            redis_server.proc.send_signal(__import__("signal").SIGSTOP)
            with pytest.raises(ConnectionError):  # the store's timeout, well before the guard
                await asyncio.wait_for(store.claim("k", "r", sampled=True, reuse=True, owner="o"), 30)
        finally:
            redis_server.proc.send_signal(__import__("signal").SIGCONT)
            await store.aclose()
