"""The default store: diskcache (SQLite) under the run's output dir; safe for several processes on one machine.

Layout of ``cache_dir`` (each a diskcache directory; SQLite in WAL mode, so a killed process leaves every committed
entry intact and at most loses what it was writing)::

    responses/   "<key>:<slot>" -> an encoded answer (status, safe headers, body or SSE events)
    requests/    "<run_id>/<request_id>" -> a saved pair: the request as sent upstream (secrets redacted), key, path,
                 status, when; keys sort in arrival order (run ids start with their start time)
    failures/    "<run_id>/<request_id>" -> a failed request (upstream error or broken stream), at most MAX_FAILURES
                 and in the same database, tables of evalproxy's own: evalproxy_counters (run, key) -> the run's
                 next pass@k slot of a key and the slots handed back; evalproxy_leases (key, slot) -> who fills
                 that slot now (owner, host, pid), until when; evalproxy_dicts id -> a compression dictionary and
                 evalproxy_dict_current, the one answers are written with (storage/codec.py)

An encoded answer is ``MAGIC + sha256(payload)[:8] + payload`` with ``payload = len(header) (4 bytes) + header JSON
+ body``: a truncated or altered entry fails its checksum and is treated as a miss, deleted, never served.

Every call blocks, so one thread per store (:class:`StoreWorker`) runs them in batches, each batch one SQLite
transaction per database; claims take the slot table's write lock, so they are atomic across processes sharing the
directory. A deterministic request whose answer is stored (a hit) is settled by a plain read before that
(:meth:`CacheStore.look_all`): hits take no write lock and wait for no commit. Not for NFS or Lustre: SQLite's locks do
not hold there (use Redis). What fails on that thread (sqlite3, diskcache, the file system) reaches the caller as the
``StoreError`` subtree (:func:`store_error`); every use of diskcache's internals is in
:mod:`evalproxy.storage.diskcache_table`.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import queue
import sqlite3
import struct
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import diskcache
import orjson
import zstandard

import evalproxy.storage.codec as codec
from evalproxy.adapter.core.errors import (
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
    StoreUnavailableError,
)
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
from evalproxy.storage.diskcache_table import DiskcacheTable

log = logging.getLogger("evalproxy.store")

T = TypeVar("T")
P = ParamSpec("P")
# Never evict a paid answer. SQLite's page cache and memory map are kept small (diskcache's defaults allow 32 MiB
# and 64 MiB per database, which shows as memory growing with the cache over a long run): lookups are by index, and
# 64 pages hold its upper levels (512 pages measured no faster per claim at 30,000 answers; RSS growth over 100k
# requests 8.4 % -> 6.6 % with 100,000 samples per statistic). A WAL checkpoint every 4096 pages rather than 1000:
# a quarter of the fsyncs.
_NEVER_EVICT: dict[str, Any] = {"eviction_policy": "none", "size_limit": 2**62, "statistics": False,
                                "sqlite_cache_size": 64, "sqlite_mmap_size": 0,
                                "sqlite_wal_autocheckpoint": 4096}

# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF) and errno values, by what they mean for a store.
_SQLITE_FULL, _SQLITE_READONLY, _SQLITE_PERM = 13, 8, 3
_SQLITE_UNAVAILABLE = {5, 6, 10, 11, 14, 26}  # BUSY, LOCKED, IOERR, CORRUPT, CANTOPEN, NOTADB
_ERRNO_FULL = {errno.ENOSPC, errno.EDQUOT}
_ERRNO_READONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def store_error(exc: BaseException, location: str) -> BaseException:
    """What a failure of the disk store's libraries means, as the ``StoreError`` subtree (its cause kept); anything
    else (a bug) is returned as it is. By SQLite result code and errno, never by message text."""
    if isinstance(exc, StoreError):
        return exc
    kind: type[StoreError]
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        kind = (StoreFullError if code == _SQLITE_FULL
                else StoreReadOnlyError if code in (_SQLITE_READONLY, _SQLITE_PERM)
                else StoreUnavailableError if code in _SQLITE_UNAVAILABLE else StoreError)
    elif isinstance(exc, OSError):
        kind = (StoreFullError if exc.errno in _ERRNO_FULL else StoreReadOnlyError if exc.errno in _ERRNO_READONLY
                else StoreUnavailableError if exc.errno is not None else StoreError)
    elif isinstance(exc, diskcache.Timeout):  # another process held the database's lock past diskcache's timeout
        kind = StoreUnavailableError
    else:
        return exc
    error = kind(f"the store at {location} failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class SlotTable:
    """pass@k slot counters and leases, in tables of their own inside the answers' SQLite database.

    Living in the same database as the answers, they share its transaction: a store-thread batch (one
    ``responses.transact()``) commits claims, answers and released leases together, in one commit, and the write
    lock of that transaction makes a claim atomic across processes sharing the directory. (diskcache keeps its
    SQLite connection per thread, :attr:`DiskcacheTable.db`; these tables are ours, beside its own ``Cache`` table.)
    A lease row says who fills a slot until when (``expires``, by this machine's clock, the store's own); it holds
    while that deadline has not passed, lies at most one lease ahead (no holder sets a later one) and, on this host,
    its process is alive. A row without a readable deadline, or whose holder never renews it, is taken over.
    """

    def __init__(self, table: DiskcacheTable, lease_seconds: float = LEASE_SECONDS) -> None:
        self.table = table
        self.lease_seconds = lease_seconds
        for statement in (
            "CREATE TABLE IF NOT EXISTS evalproxy_counters (run TEXT, key TEXT, next INTEGER, free TEXT,"
            " PRIMARY KEY (run, key)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS evalproxy_leases (key TEXT, slot INTEGER, owner TEXT, host TEXT, pid INTEGER,"
            " expires REAL, PRIMARY KEY (key, slot)) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS evalproxy_dicts (id INTEGER PRIMARY KEY, data BLOB)",
            "CREATE TABLE IF NOT EXISTS evalproxy_dict_current (k INTEGER PRIMARY KEY CHECK (k = 0), id INTEGER)",
        ):
            table.db.execute(statement)

    @property
    def db(self) -> sqlite3.Connection:
        return self.table.db  # this thread's connection to the answers' database

    def transaction(self) -> AbstractContextManager[Any]:
        """The answers' write transaction (re-entrant: a store-thread batch already holds it)."""
        txn: AbstractContextManager[Any] = self.table.cache.transact()
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
            for table in ("evalproxy_counters", "evalproxy_leases", "evalproxy_dicts", "evalproxy_dict_current"):
                self.db.execute(f"DELETE FROM {table}")


def _live(host: Any, pid: Any, expires: Any, t: float, lease_seconds: float) -> bool:
    """Whether a lease row still holds at time ``t``: a deadline that has not passed and lies at most one lease
    ahead, and a process (when on this host) still alive. A row it cannot read (planted, foreign) does not hold."""
    if not isinstance(expires, int | float) or not isinstance(pid, int) or not isinstance(host, str):
        return False
    if not t <= expires <= t + lease_seconds:
        return False
    return not holder_gone(host, pid)


class DiskDictionaries:
    """A cache directory's compression dictionaries (:class:`~evalproxy.storage.codec.Dictionaries`, :attr:`table`)
    in two tables of the answers' database: ``evalproxy_dicts`` holds every one by id, ``evalproxy_dict_current``
    names the current one. Read when the store opens; checked now and then after a write (then the current id is
    read again: another process may have published one); trained on a thread of its own when due, and published
    compare-and-set on the id it was judged against. Called on the store's thread, as the rest of
    :class:`CacheStore`."""

    def __init__(self, slots: SlotTable, where: Path) -> None:
        self.slots, self.dir = slots, where
        self.table = codec.Dictionaries()
        self._training: threading.Thread | None = None
        self.load()

    def close(self) -> None:
        if self._training is not None:
            self._training.join()

    def forget(self) -> None:
        """The store was cleared: no dictionary any more, answers written without one."""
        self.table.forget()
        self.table.use(None)

    def load(self) -> None:
        """Hold every dictionary of the store and write with its current one (if it has one)."""
        rows = self.slots.db.execute("SELECT id, data FROM evalproxy_dicts").fetchall()
        self.table.add_all(data for dict_id, data in rows if dict_id not in self.table.known)
        row = self.slots.db.execute("SELECT c.id FROM evalproxy_dict_current c JOIN evalproxy_dicts d"
                                    " ON d.id = c.id").fetchone()
        self.table.use_id(row[0] if row and row[0] in self.table.known else None)

    def after_write(self) -> None:
        """What is due after an answer was written: a periodic check, then the store's current dictionary re-read
        (another process may have published one); training, on a thread of its own."""
        t = self.table
        if t.pending is not None:
            t.run_check()
            row = self.slots.db.execute("SELECT id FROM evalproxy_dict_current").fetchone()
            if (row[0] if row else None) != t.current:
                self.load()
        if t.take_due():
            self._training = threading.Thread(target=self._train, name="evalproxy-dictionary", daemon=True)
            self._training.start()

    def _train(self) -> None:
        """On a thread of its own: train a dictionary on the samples and publish the choice, compare-and-set on the
        current id it was judged against (a dictionary another process published meanwhile stays); then write with
        whichever the store holds."""
        full = False
        try:
            data = self.table.train()
            if data is not None:
                full = self.publish(self.table.base, data)
            self.load()
        except Exception as exc:  # the store stays usable without: answers are compressed without a dictionary
            log.warning("the compression dictionary could not be stored in %s (%s: %s)", self.dir,
                        type(exc).__name__, exc)
        finally:
            self.table.done_training(full)

    def publish(self, judged: int | None, data: bytes) -> bool:
        """Make ``data`` (empty: no dictionary) the store's current dictionary if ``judged`` still is (the one this
        process judged stale; None: the store had none); whether the store refused it for holding codec.MAX_DICTS
        already. (The store's own writes pick the change up at their next check.)"""
        dict_id = zstandard.ZstdCompressionDict(data).dict_id() if data else None
        db = self.slots.db
        with self.slots.transaction():
            row = db.execute("SELECT id FROM evalproxy_dict_current").fetchone()
            if (row[0] if row else None) != judged:
                return False
            if dict_id is None:
                db.execute("DELETE FROM evalproxy_dict_current")
                return False
            held = db.execute("SELECT COUNT(*) FROM evalproxy_dicts WHERE id != ?", (dict_id,)).fetchone()[0]
            if held >= codec.MAX_DICTS:
                return True
            db.execute("INSERT OR IGNORE INTO evalproxy_dicts VALUES (?, ?)", (dict_id, data))
            db.execute("INSERT OR REPLACE INTO evalproxy_dict_current VALUES (0, ?)", (dict_id,))
            return False

    def all(self) -> list[bytes]:
        return [bytes(d) for (d,) in self.slots.db.execute("SELECT data FROM evalproxy_dicts").fetchall()]

    def put(self, items: list[bytes]) -> None:
        held = self.table.add_all(items)
        self.slots.db.executemany("INSERT OR IGNORE INTO evalproxy_dicts VALUES (?, ?)",
                                  [(zstandard.ZstdCompressionDict(d).dict_id(), d) for d in held])

    def decode(self, blob: bytes) -> StoredAnswer:
        try:
            return StoredAnswer.decode(blob, self.table)
        except codec.MissingDictionary:  # written by another process with a dictionary published since
            self.load()
        try:
            return StoredAnswer.decode(blob, self.table)
        except codec.MissingDictionary as exc:
            raise ValueError(str(exc)) from exc


class CacheStore:
    """The synchronous store over one cache directory (every method blocks: see :class:`DiskStore`, which runs them
    on its thread under the same names and signatures). Raises what sqlite3, diskcache and the file system raise."""

    def __init__(self, cache_dir: str | Path, lease_seconds: float = LEASE_SECONDS) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.responses = diskcache.Cache(str(self.dir / "responses"), **_NEVER_EVICT)
        self.requests = diskcache.Cache(str(self.dir / "requests"), **_NEVER_EVICT)
        self.failures_db = diskcache.Cache(str(self.dir / "failures"), **_NEVER_EVICT)
        self.answers = DiskcacheTable(self.responses)
        self.slots = SlotTable(self.answers, lease_seconds)
        self._n_failures = len(self.failures_db)
        self.dicts = DiskDictionaries(self.slots, self.dir)

    @property
    def databases(self) -> tuple[diskcache.Cache, ...]:
        return (self.responses, self.requests, self.failures_db)

    def close(self) -> None:
        self.dicts.close()
        for c in self.databases:
            c.close()

    def dictionaries(self) -> list[bytes]:
        return self.dicts.all()

    def put_dictionaries(self, items: list[bytes]) -> None:
        self.dicts.put(items)

    # -- answers ---------------------------------------------------------------------------------------------------
    def get_answer(self, key: str, slot: int = 0) -> StoredAnswer | None:
        """The stored answer, or None; a corrupted entry is logged, deleted and reported as a miss."""
        k = answer_key(key, slot)
        return self._answer(k, self.answers.get(k))

    def _answer(self, k: str, blob: Any) -> StoredAnswer | None:
        """The answer decoded from ``blob``, the entry ``k`` (None: none there, or damaged: logged and deleted)."""
        if blob is None:
            return None
        try:
            return self.dicts.decode(blob)
        except (ValueError, KeyError, TypeError, struct.error, orjson.JSONDecodeError) as exc:
            log.warning("cache entry %s is corrupted (%s): deleted, the request goes upstream", k, exc)
            self.responses.delete(k)
            return None

    def get_answers(self, slots: list[tuple[str, int]]) -> list[StoredAnswer | None]:
        """The stored answers of ``(key, slot)`` pairs, in order (None: none, or damaged)."""
        return [self.get_answer(key, slot) for key, slot in slots]

    def put_answer(self, key: str, slot: int, answer: StoredAnswer) -> None:
        self.answers.put(answer_key(key, slot), answer.encode(self.dicts.table))
        self.dicts.after_write()

    def count_answers(self) -> int:
        return len(self.responses)

    def raw_answer_names(self) -> list[str]:
        return sorted(str(k) for k in self.responses.iterkeys())

    def raw_answers(self, names: list[str]) -> list[tuple[str, bytes]]:
        """The encoded bytes of the answers ``names`` ("<key>:<slot>"), those still there."""
        blobs = [(n, self.answers.get(n)) for n in names]
        return [(n, b) for n, b in blobs if isinstance(b, bytes)]

    def put_raw_answers(self, items: list[tuple[str, bytes]]) -> None:
        for name, blob in items:
            self.responses.set(name, blob)

    # -- slots and leases ------------------------------------------------------------------------------------------
    def look_all(self, keys: list[str]) -> list[Claim | None]:
        """Deterministic requests' stored answers (slot 0 of each key) found by plain reads, one statement for all,
        outside the write transaction (None: the claim runs in it, and looks again under the write lock before it
        leases)."""
        names = [answer_key(key, 0) for key in keys]
        blobs = self.answers.get_many(names)
        out: list[Claim | None] = []
        for k in names:
            answer = self._answer(k, blobs.get(k))
            if answer is None:
                blobs.pop(k, None)  # damaged: logged and deleted once, the same key's other looks find nothing
            out.append(Claim(0, answer) if answer is not None else None)
        return out

    def claim(self, key: str, run_id: str, *, sampled: bool, reuse: bool, owner: str) -> Claim:
        slot = self.slots.next_slot(run_id, key) if sampled else 0
        if not reuse:
            return Claim(slot, None, leased=True)
        return self.acquire(key, slot, owner=owner)

    def acquire(self, key: str, slot: int, *, owner: str) -> Claim:
        # In one write transaction (a store-thread batch already holds one): no other process commits between the
        # look-up and the lease, so a slot found empty and then leased is this owner's to fill.
        if not self.slots.db.in_transaction:
            with self.slots.transaction():
                return self.acquire(key, slot, owner=owner)
        answer = self.get_answer(key, slot)
        if answer is not None:
            return Claim(slot, answer)
        return Claim(slot, None, leased=self.slots.lease(key, slot, owner))

    def finish(self, key: str, slot: int, *, owner: str, answer: StoredAnswer | None, pair: SavedPair | None) -> None:
        if answer is not None:
            self.put_answer(key, slot, answer)
        if pair is not None:
            self.save_pair(pair)
        # Released at once: the lease table holds only slots being filled, so it stays a few pages, always cached
        # (leases kept until expiry grew it to every answer of the last half minute, and its inserts slowed down).
        self.slots.release(key, slot, owner)

    def abandon(self, key: str, slot: int, *, owner: str, run_id: str, sampled: bool) -> None:
        self.slots.release(key, slot, owner)
        if sampled:
            self.slots.hand_back(run_id, key, slot)

    def renew(self, slots: list[tuple[str, int]], *, owner: str) -> None:
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
        self.dicts.forget()
        return n


Call = tuple[Callable[[], Any], "asyncio.Future[Any]", bool, str | None]
"""fn (its arguments bound), its future, whether it writes, and for a claim the key whose stored answer settles it
when a plain read finds one (:meth:`CacheStore.look_all`: the write is not run)."""


def _hit_key(key: str, run_id: str, *, sampled: bool, reuse: bool, owner: str) -> str | None:
    """A claim's key, when a stored answer settles it: a deterministic request's (a sampled slot is counted in the
    transaction, and a claim that reuses nothing only leases)."""
    return key if reuse and not sampled else None


class StoreWorker:
    """One thread that owns a :class:`CacheStore` and runs its calls in batches, off the event loop.

    ``await worker.call(fn, *args)`` queues the call; the calls made in one turn of the event loop go to the thread
    together (one wake-up of the thread, not one per call: waking it was a tenth of the loop's time on cache hits);
    the thread takes everything handed over so far, runs the writes inside one transaction (one commit per batch
    instead of one per answer; reads, :meth:`read`, outside it) and wakes the loop once for the whole batch. A
    result is delivered only after its batch committed, so an answer the client saw is on disk. Under load the
    batches grow by themselves; a lone request is a batch of one. A claim may come with a key to look up first,
    outside the transaction (:meth:`submit`'s ``look``), which settles it when its answer is stored. After
    :meth:`aclose`, calls are refused. Claims and leases live in the answers' database, so they commit with the
    batch: a miss costs no extra commit. A call that fails raises the ``StoreError`` subtree (:func:`store_error`)
    in its caller only.
    """

    MAX_BATCH = 256

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[list[Call] | None] = queue.SimpleQueue()
        self._outbox: list[Call] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the thread, inside its batch's write transaction; the result once
        committed."""
        return await self.submit(functools.partial(fn, *args, **kwargs) if args or kwargs else fn, writes=True)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)``, which only reads, on the thread outside the write transaction: a long read
        (every saved pair, for a report) does not hold the write lock other processes' claims wait for."""
        return await self.submit(functools.partial(fn, *args, **kwargs) if args or kwargs else fn, writes=False)

    async def submit(self, fn: Callable[[], T], *, writes: bool, look: str | None = None) -> T:
        """Queue ``fn`` for the thread's next batch (see :meth:`call` and :meth:`read`). ``look``, for a claim: the key
        whose stored answer, found by a plain read outside the transaction with the batch's other looks, is the
        call's result, ``fn`` not run (a cache hit takes no write lock and waits for no commit)."""
        if self._closed:
            raise StoreClosedError(f"the store at {self.store.dir} is closed")
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name="evalproxy-store", daemon=True)
            self._thread.start()
        fut: asyncio.Future[T] = loop.create_future()
        self._outbox.append((fn, fut, writes, look))
        if len(self._outbox) == 1:
            loop.call_soon(self._hand_over)
        return await fut

    def _hand_over(self) -> None:
        if self._outbox:
            calls, self._outbox = self._outbox, []
            self._queue.put(calls)

    def _run(self) -> None:
        assert self._loop is not None
        where = str(self.store.dir)
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
            outcomes = _run_calls([call for call in batch if not call[2]], where)
            writes = _settle_first([call for call in batch if call[2]], outcomes, self.store)
            if writes:
                try:
                    # One commit per batch for the answers and the slot table (they share the answers' database).
                    with self.store.responses.transact():
                        done = _run_calls(writes, where)
                except Exception as exc:  # the commit itself failed (disk full, read-only): nothing of it is stored
                    error = store_error(exc, where)
                    done = [(fut, None, error) for _, fut, _, _ in writes]
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


Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _settle_first(writes: list[Call], outcomes: list[Outcome], store: CacheStore) -> list[Call]:
    """Look up the keys of the claims among ``writes`` that have one, with one plain read outside any transaction;
    those whose answer is stored are settled (appended to ``outcomes``); the rest, to run in the batch's
    transaction, are returned. A read that fails leaves every claim to its write, which meets the failure again or
    not (the read never decides on an error)."""
    looking = [call for call in writes if call[3] is not None]
    if not looking:
        return writes
    try:
        found = store.look_all([call[3] for call in looking if call[3] is not None])
    except Exception:
        return writes
    settled: set[int] = set()
    for call, claim in zip(looking, found, strict=True):
        if claim is not None:
            outcomes.append((call[1], claim, None))
            settled.add(id(call))
    return [call for call in writes if id(call) not in settled] if settled else writes


def _run_calls(calls: list[Call], where: str) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for fn, fut, _, _ in calls:
        try:
            outcomes.append((fut, fn(), None))
        except Exception as exc:
            outcomes.append((fut, None, store_error(exc, where)))
    return outcomes


def _deliver(outcomes: list[Outcome]) -> None:
    for fut, result, exc in outcomes:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class _OnThread(Generic[P, T]):
    """A :class:`DiskStore` method: :class:`CacheStore`'s method of the same name and signature, run on the store's
    thread (as a write, inside its batch's transaction, or as a read outside it). Bound once per store: the first
    look-up leaves the bound method in the instance, so a request pays no more than a plain method call."""

    def __init__(self, fn: Callable[Concatenate[CacheStore, P], T], *, writes: bool,
                 look: Callable[P, str | None] | None = None) -> None:
        self.fn, self.writes, self.look = fn, writes, look
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        assert name == self.name, f"{owner.__name__}.{name} runs CacheStore.{self.name}"

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _OnThread[P, T]: ...

    @overload
    def __get__(self, obj: DiskStore, owner: type | None = None) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, obj: DiskStore | None, owner: type | None = None) -> Any:
        if obj is None:
            return self
        submit, method, writes = obj._worker.submit, getattr(obj.sync, self.name), self.writes
        if self.look is not None:
            key_of = self.look

            def looking_first(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
                return submit(functools.partial(method, *args, **kwargs), writes=writes, look=key_of(*args, **kwargs))

            obj.__dict__[self.name] = looking_first
            return looking_first

        def on_thread(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
            # submit's own coroutine is the method's: one coroutine less per call than an ``async def`` around it
            return submit(functools.partial(method, *args, **kwargs) if args or kwargs else method, writes=writes)

        obj.__dict__[self.name] = on_thread
        return on_thread


class DiskStore:
    """The :class:`~evalproxy.storage.base.Store` interface over a cache directory: each method is
    :class:`CacheStore`'s, run on the store's thread (:class:`StoreWorker`); what fails raises the ``StoreError``
    subtree, opening included."""

    def __init__(self, cache_dir: str | Path, lease_seconds: float = LEASE_SECONDS) -> None:
        try:
            self.sync = CacheStore(cache_dir, lease_seconds)
        except Exception as exc:
            error = store_error(exc, str(cache_dir))
            if error is exc:
                raise
            if type(error) is StoreError:  # whatever keeps a directory from opening makes it unavailable
                error = StoreUnavailableError(str(error))
                error.__cause__ = exc
            raise error from exc
        self.location = str(self.sync.dir)
        self._worker = StoreWorker(self.sync)

    @property
    def lease_seconds(self) -> float:
        return self.sync.slots.lease_seconds

    @lease_seconds.setter
    def lease_seconds(self, value: float) -> None:
        self.sync.slots.lease_seconds = value

    claim = _OnThread(CacheStore.claim, writes=True, look=_hit_key)
    acquire = _OnThread(CacheStore.acquire, writes=True)
    finish = _OnThread(CacheStore.finish, writes=True)
    abandon = _OnThread(CacheStore.abandon, writes=True)
    renew = _OnThread(CacheStore.renew, writes=True)
    save_pair = _OnThread(CacheStore.save_pair, writes=True)
    record_failure = _OnThread(CacheStore.record_failure, writes=True)
    put_raw_answers = _OnThread(CacheStore.put_raw_answers, writes=True)
    put_dictionaries = _OnThread(CacheStore.put_dictionaries, writes=True)
    dictionaries = _OnThread(CacheStore.dictionaries, writes=False)
    clear = _OnThread(CacheStore.clear, writes=True)
    get_answers = _OnThread(CacheStore.get_answers, writes=False)
    count_answers = _OnThread(CacheStore.count_answers, writes=False)
    count_pairs = _OnThread(CacheStore.count_pairs, writes=False)
    saved_pairs = _OnThread(CacheStore.saved_pairs, writes=False)
    failures = _OnThread(CacheStore.failures, writes=False)
    stats = _OnThread(CacheStore.stats, writes=False)

    async def raw_answers(self, batch: int = 500) -> AsyncIterator[list[tuple[str, bytes]]]:
        names = await self._worker.read(self.sync.raw_answer_names)
        for i in range(0, len(names), batch):
            yield await self._worker.read(self.sync.raw_answers, names[i : i + batch])

    async def aclose(self) -> None:
        await self._worker.aclose()
