"""The on-disk cache of answers and saved request/response pairs.

It is an adapter-level type because two components read it: the ``caching`` interceptor (answers) and the
``post_eval_report`` hook (saved pairs). Every method blocks (diskcache is SQLite): call them through
``asyncio.to_thread``.

Layout of ``cache_dir`` (each a diskcache directory; SQLite in WAL mode, so a killed process leaves every committed
entry intact and at most loses what it was writing)::

    responses/   "<key>:<occurrence>" -> an encoded answer (status, safe headers, body or SSE events)
    requests/    "<run_id>/<request_id>" -> a saved pair: the request as sent upstream (secrets redacted), key, path,
                 status, when; keys sort in arrival order (run ids start with their start time)
    failures/    "<run_id>/<request_id>" -> a failed request (upstream error or broken stream), at most MAX_FAILURES

An encoded answer is ``MAGIC + sha256(payload)[:8] + payload`` with ``payload = len(header) (4 bytes) + header JSON
+ body``: a truncated or altered entry fails its checksum and is treated as a miss, deleted, never served.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import orjson

from evalproxy.adapter.sse import assemble_stream

log = logging.getLogger("evalproxy.store")

T = TypeVar("T")
MAGIC = b"EPA1"
MAX_FAILURES = 1000
# Never evict a paid answer. SQLite's page cache and memory map are kept small (diskcache's defaults allow 32 MiB
# and 64 MiB per database, which shows as memory growing with the cache over a long run): lookups are by index.
_NEVER_EVICT: dict[str, Any] = {"eviction_policy": "none", "size_limit": 2**62, "statistics": False,
                                "sqlite_cache_size": 512, "sqlite_mmap_size": 0}


def _canonical(value: Any) -> Any:
    """Numbers compare by value in keys: 0 and 0.0 are one number; booleans stay booleans."""
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def cache_key(path: str, body: dict[str, Any]) -> str:
    """sha256 of the path and the canonical JSON (sorted keys) of the body; headers never take part."""
    canon = orjson.dumps(_canonical(body), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(path.encode() + b"\n" + canon).hexdigest()


@dataclass
class StoredAnswer:
    """An answer as the model gave it: a whole body, or the SSE events of a stream."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    events: list[bytes] | None = None
    stored_at: float = field(default_factory=time.time)

    @property
    def is_stream(self) -> bool:
        return self.events is not None

    def encode(self) -> bytes:
        header: dict[str, Any] = {"status": self.status, "headers": self.headers, "stored_at": self.stored_at}
        if self.events is not None:
            header["events"] = [len(e) for e in self.events]
            body = b"".join(self.events)
        else:
            body = self.body or b""
        h = orjson.dumps(header)
        payload = struct.pack(">I", len(h)) + h + body
        return MAGIC + hashlib.sha256(payload).digest()[:8] + payload

    @classmethod
    def decode(cls, blob: bytes) -> StoredAnswer:
        if not isinstance(blob, bytes) or blob[:4] != MAGIC:
            raise ValueError("not an evalproxy cache entry")
        digest, payload = blob[4:12], blob[12:]
        if hashlib.sha256(payload).digest()[:8] != digest:
            raise ValueError("checksum mismatch")
        (n,) = struct.unpack(">I", payload[:4])
        header = orjson.loads(payload[4 : 4 + n])
        body = payload[4 + n :]
        answer = cls(status=header["status"], headers=header["headers"], stored_at=header.get("stored_at", 0.0))
        if "events" in header:
            events, at = [], 0
            for size in header["events"]:
                events.append(body[at : at + size])
                at += size
            answer.events = events
        else:
            answer.body = body
        return answer

    def json(self) -> Any:
        """The answer as JSON: the body parsed, or a stream assembled into one chat/completion object."""
        if self.events is not None:
            return assemble_stream(self.events)
        try:
            return orjson.loads(self.body or b"")
        except orjson.JSONDecodeError:
            return None


@dataclass
class SavedPair:
    """A request and the answer it got, for reports."""

    run_id: str
    request_id: int
    key: str
    occurrence: int
    path: str
    request: dict[str, Any] | None
    status: int
    stream: bool
    received_at: float
    response: Any = None
    """The answer's JSON (a stream assembled), when the answer was saved too."""
    events: list[bytes] | None = None


@dataclass
class Failure:
    run_id: str
    request_id: int
    path: str
    request: dict[str, Any] | None
    status: int
    error: str
    received_at: float


class CacheStore:
    """Answers by key and occurrence, saved pairs in arrival order, and a bounded list of failures."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.responses = diskcache.Cache(str(self.dir / "responses"), **_NEVER_EVICT)
        self.requests = diskcache.Cache(str(self.dir / "requests"), **_NEVER_EVICT)
        self.failures_db = diskcache.Cache(str(self.dir / "failures"), **_NEVER_EVICT)
        self._n_failures = len(self.failures_db)

    def close(self) -> None:
        for c in (self.responses, self.requests, self.failures_db):
            c.close()

    # -- answers ---------------------------------------------------------------------------------------------------
    @staticmethod
    def answer_key(key: str, occurrence: int) -> str:
        return f"{key}:{occurrence}"

    def get_answer(self, key: str, occurrence: int = 0) -> StoredAnswer | None:
        """The stored answer, or None; a corrupted entry is logged, deleted and reported as a miss."""
        k = self.answer_key(key, occurrence)
        blob = self.responses.get(k)
        if blob is None:
            return None
        try:
            return StoredAnswer.decode(blob)
        except (ValueError, KeyError, TypeError, struct.error, orjson.JSONDecodeError) as exc:
            log.warning("cache entry %s is corrupted (%s): deleted, the request goes upstream", k, exc)
            self.responses.delete(k)
            return None

    def put_answer(self, key: str, occurrence: int, answer: StoredAnswer) -> None:
        self.responses.set(self.answer_key(key, occurrence), answer.encode())

    def put(self, key: str, occurrence: int, answer: StoredAnswer | None, pair: SavedPair | None) -> None:
        """Store an answer and/or its saved pair in one call (one trip to the store thread, one batch)."""
        if answer is not None:
            self.put_answer(key, occurrence, answer)
        if pair is not None:
            self.save_pair(pair)

    def count_answers(self) -> int:
        return len(self.responses)

    # -- saved pairs -----------------------------------------------------------------------------------------------
    @staticmethod
    def pair_key(run_id: str, request_id: int) -> str:
        return f"{run_id}/{request_id:010d}"

    def save_pair(self, pair: SavedPair) -> None:
        record = {
            "run_id": pair.run_id, "request_id": pair.request_id, "key": pair.key, "occurrence": pair.occurrence,
            "path": pair.path, "request": pair.request, "status": pair.status, "stream": pair.stream,
            "received_at": pair.received_at,
        }
        self.requests.set(self.pair_key(pair.run_id, pair.request_id), orjson.dumps(record))

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
            except (orjson.JSONDecodeError, TypeError):
                log.warning("saved pair %s is unreadable; skipped", k)
                continue
            pair = SavedPair(**rec)
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
        rec = {k: getattr(failure, k) for k in Failure.__dataclass_fields__}
        self.failures_db.set(self.pair_key(failure.run_id, failure.request_id), orjson.dumps(rec))
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
            "cache_dir": str(self.dir),
            "answers": len(self.responses),
            "saved_requests": len(self.requests),
            "failures": len(self.failures_db),
            "bytes": sum(c.volume() for c in (self.responses, self.requests, self.failures_db)),
        }

    def clear(self) -> int:
        n = 0
        for c in (self.responses, self.requests, self.failures_db):
            n += c.clear()
        self._n_failures = 0
        return n



class StoreWorker:
    """One thread that owns a :class:`CacheStore` and runs its calls in batches, off the event loop.

    ``await worker.call(fn, *args)`` queues the call; the thread takes everything queued so far, runs it inside one
    SQLite transaction (one commit per batch instead of one per answer) and wakes the loop once for the whole batch.
    A result is delivered only after its batch committed, so an answer the client saw is on disk. Under load the
    batches grow by themselves; a lone request is a batch of one.
    """

    MAX_BATCH = 256

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._run, name="evalproxy-store", daemon=True)
            self._thread.start()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, fut))
        return await fut

    def _run(self) -> None:
        assert self._loop is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            try:
                with self.store.responses.transact():
                    for fn, args, fut in batch:
                        try:
                            outcomes.append((fut, fn(*args), None))
                        except Exception as exc:
                            outcomes.append((fut, None, exc))
            except Exception as exc:  # the commit itself failed (disk full, read-only): nothing of it is stored
                outcomes = [(fut, None, exc) for _, _, fut in batch]
            self._loop.call_soon_threadsafe(_deliver, outcomes)

    async def aclose(self) -> None:
        """Finish what is queued, stop the thread, close the store."""
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await asyncio.to_thread(self.store.close)


def _deliver(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in outcomes:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
