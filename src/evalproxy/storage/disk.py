"""The default store: diskcache (SQLite) under the run's output dir; safe for several processes on one machine.

Layout of ``cache_dir`` (each a diskcache directory; SQLite in WAL mode, so a killed process leaves every committed
entry intact and at most loses what it was writing)::

    responses/   "<key>:<slot>" -> an encoded answer (status, safe headers, body or SSE events)
    requests/    "<run_id>/<request_id>" -> a saved pair: the request as sent upstream (secrets redacted), key, path,
                 status, when; keys sort in arrival order (run ids start with their start time)
    failures/    "<run_id>/<request_id>" -> a failed request (upstream error or broken stream), at most MAX_FAILURES
                 and in the same database, tables of evalproxy's own: evalproxy_counters (run, key) -> the run's
                 next pass@k slot of a key and the slots handed back; evalproxy_leases (key, slot) -> who fills
                 that slot now (owner, host, pid), until when

An encoded answer is ``MAGIC + sha256(payload)[:8] + payload`` with ``payload = len(header) (4 bytes) + header JSON
+ body``: a truncated or altered entry fails its checksum and is treated as a miss, deleted, never served.

Every call blocks, so one thread per store (:class:`StoreWorker`) runs them in batches, each batch one SQLite
transaction per database; claims take the slot table's write lock, so they are atomic across processes sharing the
directory. Not for NFS or Lustre: SQLite's locks do not hold there (use Redis).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import struct
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import orjson

from evalproxy.storage.base import (
    HOST,
    LEASE_SECONDS,
    MAX_FAILURES,
    Claim,
    Failure,
    SavedPair,
    StoreClosedError,
    StoredAnswer,
    answer_key,
    holder_gone,
    now,
)

log = logging.getLogger("evalproxy.store")

T = TypeVar("T")
# Never evict a paid answer. SQLite's page cache and memory map are kept small (diskcache's defaults allow 32 MiB
# and 64 MiB per database, which shows as memory growing with the cache over a long run): lookups are by index, and
# 64 pages hold its upper levels (512 pages measured no faster per claim at 30,000 answers; RSS growth over 100k
# requests 8.4 % -> 6.6 % with 100,000 samples per statistic). A WAL checkpoint every 4096 pages rather than 1000:
# a quarter of the fsyncs.
_NEVER_EVICT: dict[str, Any] = {"eviction_policy": "none", "size_limit": 2**62, "statistics": False,
                                "sqlite_cache_size": 64, "sqlite_mmap_size": 0,
                                "sqlite_wal_autocheckpoint": 4096}
# The answers are read and written with one statement each on diskcache's own table, in the row format of its
# Cache.get / Cache.set for a str key and a bytes value kept inline (mode raw, size 0): diskcache reads what we
# write and we read what it wrote, at a third of the Python per call. A value diskcache kept in a file of its own
# (>= disk_min_file_size), and the replacement of an existing entry (whose old file must go), are left to diskcache.
_MODE_RAW = diskcache.core.MODE_RAW
_SELECT_ANSWER = ("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
                  " AND (expire_time IS NULL OR expire_time > ?)")
_INSERT_ANSWER = ("INSERT OR IGNORE INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag,"
                  " size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)")


class SlotTable:
    """pass@k slot counters and leases, in tables of their own inside the answers' SQLite database.

    Living in the same database as the answers, they share its transaction: a store-thread batch (one
    ``responses.transact()``) commits claims, answers and released leases together, in one commit, and the write
    lock of that transaction makes a claim atomic across processes sharing the directory. (diskcache keeps its
    SQLite connection per thread behind ``Cache._con``; these tables are ours, beside its own ``Cache`` table.)
    A lease row says who fills a slot until when (``expires``, by this machine's clock, the store's own); it holds
    while that deadline has not passed, lies at most one lease ahead (no holder sets a later one) and, on this host,
    its process is alive. A row without a readable deadline, or whose holder never renews it, is taken over.
    """

    def __init__(self, cache: diskcache.Cache, lease_seconds: float = LEASE_SECONDS) -> None:
        self.cache = cache
        self.lease_seconds = lease_seconds
        for statement in (
            "CREATE TABLE IF NOT EXISTS evalproxy_counters (run TEXT, key TEXT, next INTEGER, free TEXT,"
            " PRIMARY KEY (run, key)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS evalproxy_leases (key TEXT, slot INTEGER, owner TEXT, host TEXT, pid INTEGER,"
            " expires REAL, PRIMARY KEY (key, slot)) WITHOUT ROWID",
        ):
            self.cache._con.execute(statement)

    @property
    def db(self) -> sqlite3.Connection:
        con: sqlite3.Connection = self.cache._con  # this thread's connection to the answers' database
        return con

    def transaction(self) -> AbstractContextManager[Any]:
        """The answers' write transaction (re-entrant: a store-thread batch already holds it)."""
        txn: AbstractContextManager[Any] = self.cache.transact()
        return txn

    def next_slot(self, run_id: str, key: str) -> int:
        """The run's next slot of ``key``: the lowest one handed back, else a new one."""
        with self.transaction():
            row = self.db.execute("SELECT next, free FROM evalproxy_counters WHERE run=? AND key=?",
                                  (run_id, key)).fetchone()
            if row is None:
                self.db.execute("INSERT INTO evalproxy_counters VALUES (?, ?, 1, '')", (run_id, key))
                return 0
            nxt, free = row
            if free:
                slots = sorted(int(x) for x in free.split(","))
                self.db.execute("UPDATE evalproxy_counters SET free=? WHERE run=? AND key=?",
                                (",".join(map(str, slots[1:])), run_id, key))
                return slots[0]
            self.db.execute("UPDATE evalproxy_counters SET next=? WHERE run=? AND key=?", (nxt + 1, run_id, key))
            return int(nxt)

    def hand_back(self, run_id: str, key: str, slot: int) -> None:
        with self.transaction():
            row = self.db.execute("SELECT free FROM evalproxy_counters WHERE run=? AND key=?", (run_id, key)).fetchone()
            if row is None:
                return
            free = {int(x) for x in row[0].split(",") if x}
            free.add(slot)
            self.db.execute("UPDATE evalproxy_counters SET free=? WHERE run=? AND key=?",
                            (",".join(map(str, sorted(free))), run_id, key))

    def lease(self, key: str, slot: int, owner: str) -> bool:
        """Take the slot's lease for ``owner``; False while another holder's lease is live (a lease of ``owner``
        itself is live too: a sibling request of the same process fills the slot)."""
        t = now()
        row = (key, slot, owner, HOST, os.getpid(), t + self.lease_seconds)
        # The common case, nobody holds it, is one statement: atomic by itself, no transaction of its own needed.
        if self.db.execute("INSERT OR IGNORE INTO evalproxy_leases VALUES (?, ?, ?, ?, ?, ?)", row).rowcount == 1:
            return True
        with self.transaction():
            held = self.db.execute("SELECT host, pid, expires FROM evalproxy_leases WHERE key=? AND slot=?",
                                   (key, slot)).fetchone()
            if held is not None and _live(held[0], held[1], held[2], t, self.lease_seconds):
                return False
            self.db.execute("INSERT OR REPLACE INTO evalproxy_leases VALUES (?, ?, ?, ?, ?, ?)", row)
            return True

    def release(self, key: str, slot: int, owner: str) -> None:
        self.db.execute("DELETE FROM evalproxy_leases WHERE key=? AND slot=? AND owner=?", (key, slot, owner))

    def renew(self, slots: list[tuple[str, int]], owner: str) -> None:
        """Extend ``owner``'s leases on ``slots``, and drop expired ones (of processes that died filling a slot)."""
        with self.transaction():
            t = now()
            self.db.executemany("UPDATE evalproxy_leases SET expires=? WHERE key=? AND slot=? AND owner=?",
                                [(t + self.lease_seconds, key, slot, owner) for key, slot in slots])
            self.db.execute("DELETE FROM evalproxy_leases WHERE expires < ?", (t,))

    def clear(self) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM evalproxy_counters")
            self.db.execute("DELETE FROM evalproxy_leases")


def _live(host: Any, pid: Any, expires: Any, t: float, lease_seconds: float) -> bool:
    """Whether a lease row still holds at time ``t``: a deadline that has not passed and lies at most one lease
    ahead, and a process (when on this host) still alive. A row it cannot read (planted, foreign) does not hold."""
    if not isinstance(expires, int | float) or not isinstance(pid, int) or not isinstance(host, str):
        return False
    if not t <= expires <= t + lease_seconds:
        return False
    return not holder_gone(host, pid)


class CacheStore:
    """The synchronous store over one cache directory (every method blocks: see :class:`DiskStore`)."""

    def __init__(self, cache_dir: str | Path, lease_seconds: float = LEASE_SECONDS) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.responses = diskcache.Cache(str(self.dir / "responses"), **_NEVER_EVICT)
        self.requests = diskcache.Cache(str(self.dir / "requests"), **_NEVER_EVICT)
        self.failures_db = diskcache.Cache(str(self.dir / "failures"), **_NEVER_EVICT)
        self.slots = SlotTable(self.responses, lease_seconds)
        self._inline_limit: int = self.responses.disk_min_file_size
        self._n_failures = len(self.failures_db)

    @property
    def _db(self) -> sqlite3.Connection:
        return self.slots.db

    @property
    def databases(self) -> tuple[diskcache.Cache, ...]:
        return (self.responses, self.requests, self.failures_db)

    def close(self) -> None:
        for c in self.databases:
            c.close()

    # -- answers ---------------------------------------------------------------------------------------------------
    def get_answer(self, key: str, slot: int = 0) -> StoredAnswer | None:
        """The stored answer, or None; a corrupted entry is logged, deleted and reported as a miss."""
        k = answer_key(key, slot)
        row = self._db.execute(_SELECT_ANSWER, (k, now())).fetchone()
        if row is None:
            return None
        mode, filename, value = row
        blob = value if mode == _MODE_RAW and filename is None else self.responses.get(k)
        if blob is None:
            return None
        try:
            return StoredAnswer.decode(blob)
        except (ValueError, KeyError, TypeError, struct.error, orjson.JSONDecodeError) as exc:
            log.warning("cache entry %s is corrupted (%s): deleted, the request goes upstream", k, exc)
            self.responses.delete(k)
            return None

    def put_answer(self, key: str, slot: int, answer: StoredAnswer) -> None:
        k, blob = answer_key(key, slot), answer.encode()
        if len(blob) < self._inline_limit:
            t = now()
            if self._db.execute(_INSERT_ANSWER, (k, t, t, blob)).rowcount == 1:
                return
        self.responses.set(k, blob)  # a large answer (diskcache keeps it in a file of its own) or a replaced one

    def count_answers(self) -> int:
        return len(self.responses)

    # -- slots and leases ------------------------------------------------------------------------------------------
    def claim(self, key: str, run_id: str, sampled: bool, reuse: bool, owner: str) -> Claim:
        slot = self.slots.next_slot(run_id, key) if sampled else 0
        if not reuse:
            return Claim(slot, None, leased=True)
        return self.acquire(key, slot, owner)

    def acquire(self, key: str, slot: int, owner: str) -> Claim:
        # In one write transaction (a store-thread batch already holds one): no other process commits between the
        # look-up and the lease, so a slot found empty and then leased is this owner's to fill.
        if not self._db.in_transaction:
            with self.slots.transaction():
                return self.acquire(key, slot, owner)
        answer = self.get_answer(key, slot)
        if answer is not None:
            return Claim(slot, answer)
        return Claim(slot, None, leased=self.slots.lease(key, slot, owner))

    def finish(self, key: str, slot: int, owner: str, answer: StoredAnswer | None, pair: SavedPair | None) -> None:
        if answer is not None:
            self.put_answer(key, slot, answer)
        if pair is not None:
            self.save_pair(pair)
        # Released at once: the lease table holds only slots being filled, so it stays a few pages, always cached
        # (leases kept until expiry grew it to every answer of the last half minute, and its inserts slowed down).
        self.slots.release(key, slot, owner)

    def abandon(self, key: str, slot: int, owner: str, run_id: str, sampled: bool) -> None:
        self.slots.release(key, slot, owner)
        if sampled:
            self.slots.hand_back(run_id, key, slot)

    def renew(self, slots: list[tuple[str, int]], owner: str) -> None:
        self.slots.renew(slots, owner)

    # -- saved pairs -----------------------------------------------------------------------------------------------
    def save_pair(self, pair: SavedPair) -> None:
        self.requests.set(pair.sort_key, pair.record())

    def count_pairs(self) -> int:
        return len(self.requests)

    def saved_pairs(self, limit: int | None = None, *, with_responses: bool = True) -> list[SavedPair]:
        """Saved pairs in the order their requests arrived (runs in start order), the first ``limit`` of them."""
        keys = sorted(self.requests.iterkeys())
        if limit is not None:
            keys = keys[:limit]
        pairs = []
        for k in keys:
            raw = self.requests.get(k)
            try:
                rec = orjson.loads(raw)
                pair = SavedPair(**rec)
            except (orjson.JSONDecodeError, TypeError, ValueError):
                log.warning("saved pair %s is unreadable; skipped", k)
                continue
            if with_responses:
                answer = self.get_answer(pair.key, pair.occurrence)
                if answer is not None:
                    pair.response = answer.json()
                    pair.events = answer.events
            pairs.append(pair)
        return pairs

    # -- failures --------------------------------------------------------------------------------------------------
    def record_failure(self, failure: Failure) -> bool:
        """Keep a failed request for the report; False once MAX_FAILURES are kept."""
        if self._n_failures >= MAX_FAILURES:
            return False
        self.failures_db.set(failure.sort_key, failure.record())
        self._n_failures += 1
        return True

    def failures(self, limit: int | None = None) -> list[Failure]:
        keys = sorted(self.failures_db.iterkeys())
        if limit is not None:
            keys = keys[:limit]
        out = []
        for k in keys:
            try:
                out.append(Failure(**orjson.loads(self.failures_db.get(k))))
            except (orjson.JSONDecodeError, TypeError):
                continue
        return out

    # -- whole store -----------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "location": str(self.dir),
            "backend": "diskcache",
            "answers": len(self.responses),
            "saved_requests": len(self.requests),
            "failures": len(self.failures_db),
            "bytes": sum(c.volume() for c in self.databases),
        }

    def clear(self) -> int:
        n: int = sum(int(c.clear()) for c in self.databases)
        self.slots.clear()
        self._n_failures = 0
        return n


Call = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", bool]  # fn, args, future, writes


class StoreWorker:
    """One thread that owns a :class:`CacheStore` and runs its calls in batches, off the event loop.

    ``await worker.call(fn, *args)`` queues the call; the calls made in one turn of the event loop go to the thread
    together (one wake-up of the thread, not one per call: waking it was a tenth of the loop's time on cache hits);
    the thread takes everything handed over so far, runs the writes inside one transaction (one commit per batch
    instead of one per answer; reads, :meth:`read`, outside it) and wakes the loop once for the whole batch. A
    result is delivered only after its batch committed, so an answer the client saw is on disk. Under load the
    batches grow by themselves; a lone request is a batch of one. After :meth:`aclose`, calls are refused. Claims
    and leases live in the answers' database, so they commit with the batch: a miss costs no extra commit.
    """

    MAX_BATCH = 256

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[list[Call] | None] = queue.SimpleQueue()
        self._outbox: list[Call] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the thread, inside its batch's write transaction; the result once committed."""
        return await self._submit(fn, args, writes=True)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)``, which only reads, on the thread outside the write transaction: a long read (every saved
        pair, for a report) does not hold the write lock other processes' claims wait for."""
        return await self._submit(fn, args, writes=False)

    async def _submit(self, fn: Callable[..., T], args: tuple[Any, ...], *, writes: bool) -> T:
        if self._closed:
            raise StoreClosedError(f"the store at {self.store.dir} is closed")
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name="evalproxy-store", daemon=True)
            self._thread.start()
        fut: asyncio.Future[T] = loop.create_future()
        self._outbox.append((fn, args, fut, writes))
        if len(self._outbox) == 1:
            loop.call_soon(self._hand_over)
        return await fut

    def _hand_over(self) -> None:
        if self._outbox:
            calls, self._outbox = self._outbox, []
            self._queue.put(calls)

    def _run(self) -> None:
        assert self._loop is not None
        while True:
            calls = self._queue.get()
            if calls is None:
                return
            batch = list(calls)
            while len(batch) < self.MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch += more
            writes = [call for call in batch if call[3]]
            outcomes = _run_calls([call for call in batch if not call[3]])
            if writes:
                try:
                    # One commit per batch for the answers and the slot table (they share the answers' database).
                    with self.store.responses.transact():
                        done = _run_calls(writes)
                except Exception as exc:  # the commit itself failed (disk full, read-only): nothing of it is stored
                    done = [(fut, None, exc) for _, _, fut, _ in writes]
                outcomes += done
            self._loop.call_soon_threadsafe(_deliver, outcomes)

    async def aclose(self) -> None:
        """Finish what is queued, stop the thread, close the store; later calls raise StoreClosedError."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._hand_over()
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await asyncio.to_thread(self.store.close)


def _run_calls(calls: list[Call]) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
    for fn, args, fut, _ in calls:
        try:
            outcomes.append((fut, fn(*args), None))
        except Exception as exc:
            outcomes.append((fut, None, exc))
    return outcomes


def _deliver(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in outcomes:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class DiskStore:
    """The :class:`~evalproxy.storage.base.Store` interface over a cache directory."""

    def __init__(self, cache_dir: str | Path, lease_seconds: float = LEASE_SECONDS) -> None:
        self.sync = CacheStore(cache_dir, lease_seconds)
        self.location = str(self.sync.dir)
        self._worker = StoreWorker(self.sync)

    @property
    def lease_seconds(self) -> float:
        return self.sync.slots.lease_seconds

    @lease_seconds.setter
    def lease_seconds(self, value: float) -> None:
        self.sync.slots.lease_seconds = value

    async def claim(self, key: str, run_id: str, *, sampled: bool, reuse: bool, owner: str) -> Claim:
        return await self._worker.call(self.sync.claim, key, run_id, sampled, reuse, owner)

    async def acquire(self, key: str, slot: int, *, owner: str) -> Claim:
        return await self._worker.call(self.sync.acquire, key, slot, owner)

    async def finish(self, key: str, slot: int, *, owner: str, answer: StoredAnswer | None,
                     pair: SavedPair | None) -> None:
        await self._worker.call(self.sync.finish, key, slot, owner, answer, pair)

    async def abandon(self, key: str, slot: int, *, owner: str, run_id: str, sampled: bool) -> None:
        await self._worker.call(self.sync.abandon, key, slot, owner, run_id, sampled)

    async def renew(self, slots: list[tuple[str, int]], *, owner: str) -> None:
        await self._worker.call(self.sync.renew, slots, owner)

    async def save_pair(self, pair: SavedPair) -> None:
        await self._worker.call(self.sync.save_pair, pair)

    async def record_failure(self, failure: Failure) -> None:
        await self._worker.call(self.sync.record_failure, failure)

    async def count_answers(self) -> int:
        return await self._worker.read(self.sync.count_answers)

    async def count_pairs(self) -> int:
        return await self._worker.read(self.sync.count_pairs)

    async def saved_pairs(self, limit: int | None = None, *, with_responses: bool = True) -> list[SavedPair]:
        return await self._worker.read(lambda: self.sync.saved_pairs(limit, with_responses=with_responses))

    async def failures(self, limit: int | None = None) -> list[Failure]:
        return await self._worker.read(self.sync.failures, limit)

    async def raw_answers(self, batch: int = 500) -> AsyncIterator[list[tuple[str, bytes]]]:
        responses = self.sync.responses
        names = await self._worker.read(lambda: sorted(str(k) for k in responses.iterkeys()))
        for i in range(0, len(names), batch):
            part = names[i : i + batch]
            blobs = await self._worker.read(lambda part=part: [responses.get(n) for n in part])
            yield [(n, b) for n, b in zip(part, blobs, strict=True) if isinstance(b, bytes)]

    async def put_raw_answers(self, items: list[tuple[str, bytes]]) -> None:
        def put() -> None:
            for name, blob in items:
                self.sync.responses.set(name, blob)

        await self._worker.call(put)

    async def stats(self) -> dict[str, Any]:
        return await self._worker.read(self.sync.stats)

    async def clear(self) -> int:
        return await self._worker.call(self.sync.clear)

    async def aclose(self) -> None:
        await self._worker.aclose()
