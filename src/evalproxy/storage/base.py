"""What every store holds, and the interface its backends share.

A store keeps, for a cache shared by any number of runs and processes:

* answers, by cache key and slot (slot 0 for a deterministic request; slot k for the k-th sample of a sampled one),
  each encoded with a checksum so a damaged entry is never served, and compressed with zstd
  (:mod:`evalproxy.storage.codec`; entries of older versions, uncompressed, stay readable);
* pass@k slot counters per (run, key), claimed atomically, and the slots handed back by failed samples;
* leases: who is filling a slot right now, so identical requests in flight share one upstream call and another
  process waits instead of paying twice. A lease carries its deadline, by the store's own clock (the Redis server's
  ``TIME``, the disk store's machine), and a lease past it is taken over, whether its holder died, hangs, or its
  entry was planted without any expiry; holders renew theirs every third of the lease while they work;
* saved request/response pairs in arrival order, and a bounded list of failures, for reports.

Backends: :mod:`evalproxy.storage.disk` (diskcache under the run's output dir, the default; safe for several processes
on one machine) and :mod:`evalproxy.storage.redis` (a Redis or Valkey server, for processes on many machines).
Every method is async; a backend that blocks runs off the event loop. Every failure of a backend reaches its caller
as the ``StoreError`` subtree of :mod:`evalproxy.adapter.core.errors` (``StoreUnavailableError``,
``StoreReadOnlyError``, ``StoreFullError``, ``StoreClosedError``), whatever library the backend uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

import evalproxy.storage.codec as codec
from evalproxy.adapter.core.errors import StoreClosedError as StoreClosedError  # re-exported: the interface's
from evalproxy.adapter.flow.request import OFF_LOOP_BYTES
from evalproxy.adapter.flow.shape import assemble_stream

log = logging.getLogger("evalproxy.storage")
MAGIC = b"EPA1"
MAX_FAILURES = 1000
LEASE_SECONDS = 30.0
"""How long a lease lives without renewal (the default of a store's ``lease_seconds``); holders renew theirs every
third of it while they work. A lease whose deadline lies further ahead than one lease is not believed."""


HOST = socket.gethostname()


def holder_gone(host: str, pid: int) -> bool:
    """Whether a lease holder is a process on this host that no longer runs (its lease may be taken at once)."""
    if host != HOST:
        return False  # another machine's process: only its lease's expiry says it is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (EPERM: another user's)
    return False


_MAPPINGS = (dict, Mapping)  # tuples: isinstance with a union is slower, and every cache key walks its body
_ARRAYS = (list, tuple)


def by_value(value: Any) -> Any:
    """``value`` with numbers by value (``0`` and ``0.0`` are one number: an integral float within 64 bits becomes
    an int), recursively; booleans stay booleans, mapping keys become strings."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # most of a body: no isinstance, no ABC check
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() and -(2**63) <= value < 2**63 else value
    if isinstance(value, _MAPPINGS):  # dict (and a frozen body's dicts) first: a quick check, the ABC's only after
        return {k if isinstance(k, str) else str(k): by_value(v) for k, v in value.items()}
    if isinstance(value, _ARRAYS):
        return [by_value(v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """The canonical JSON of ``value``: numbers by value (:func:`by_value`), keys sorted. The bytes cache keys,
    prompt keys and the observed parameters are computed from."""
    return orjson.dumps(by_value(value), option=orjson.OPT_SORT_KEYS)


def cache_key(path: str, body: Any, query: str = "") -> str:
    """sha256 of the path (with its query string) and the canonical JSON (sorted keys) of the body.

    Headers never take part: clients send per-request ids in them."""
    target = f"{path}?{query}" if query else path
    return hashlib.sha256(target.encode() + b"\n" + canonical_json(body)).hexdigest()


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

    @property
    def size(self) -> int:
        """The answer's bytes as the model sent them (body, or events in all)."""
        return sum(map(len, self.events)) if self.events is not None else len(self.body or b"")

    def encode(self, dicts: codec.Dictionaries | None = None) -> bytes:
        """The bytes a store keeps: compressed (:mod:`~evalproxy.storage.codec`, with the store's dictionary if it
        has one, ``dicts``) unless too small to gain."""
        header: dict[str, Any] = {"status": self.status, "headers": self.headers, "stored_at": self.stored_at}
        if self.events is not None:
            header["events"] = [len(e) for e in self.events]
            body = b"".join(self.events)
        else:
            body = self.body or b""
        h = orjson.dumps(header)
        payload = struct.pack(">I", len(h)) + h + body
        packed = codec.compress(payload, dicts)
        if packed is not None:
            return packed
        return MAGIC + hashlib.sha256(payload).digest()[:8] + payload

    @classmethod
    def decode(cls, blob: bytes, dicts: codec.Dictionaries | None = None) -> StoredAnswer:
        """An answer from what a store keeps, compressed or not (entries of older versions included); ValueError
        for damaged or foreign bytes, ``codec.MissingDictionary`` for an entry of a dictionary ``dicts`` lacks."""
        if not isinstance(blob, bytes):
            raise ValueError("not an evalproxy cache entry")
        if blob[:4] == codec.ZMAGIC:
            payload = codec.decompress(blob, dicts)
        elif blob[:4] == MAGIC:
            digest, payload = blob[4:12], blob[12:]
            if hashlib.sha256(payload).digest()[:8] != digest:
                raise ValueError("checksum mismatch")
        else:
            raise ValueError("not an evalproxy cache entry")
        try:
            (n,) = struct.unpack(">I", payload[:4])
            header = orjson.loads(payload[4 : 4 + n])
            answer = cls(status=header["status"], headers=header["headers"], stored_at=header.get("stored_at", 0.0))
            sizes = header.get("events")
        except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"damaged entry header ({exc})") from exc
        body = payload[4 + n :]
        if sizes is not None:
            events, at = [], 0
            for size in sizes:
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


async def encode_answer(answer: StoredAnswer, dicts: codec.Dictionaries | None = None) -> bytes:
    """:meth:`StoredAnswer.encode` for a caller on the event loop: a large answer (the server's rule for large
    bodies, ``OFF_LOOP_BYTES``) is compressed in a thread, so that it never stalls the loop."""
    if answer.size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(answer.encode, dicts)
    return answer.encode(dicts)


async def decode_answer(blob: bytes, dicts: codec.Dictionaries | None = None) -> StoredAnswer:
    """:meth:`StoredAnswer.decode` for a caller on the event loop: a large entry is decoded in a thread."""
    if codec.payload_size(blob) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(StoredAnswer.decode, blob, dicts)
    return StoredAnswer.decode(blob, dicts)


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
    damaged: str | None = field(default=None, init=False, compare=False)
    """What was wrong with the stored record this pair was read from (its bad fields are replaced by neutral
    values); readers skip a damaged pair."""

    def __post_init__(self) -> None:
        self.damaged = _check_fields(self, _PAIR_TYPES, "saved pair")

    def record(self) -> bytes:
        """What a store keeps of the pair (the answer is stored on its own, under its key and slot)."""
        return orjson.dumps({k: getattr(self, k) for k in _PAIR_FIELDS})

    @property
    def sort_key(self) -> str:
        return pair_key(self.run_id, self.request_id)


@dataclass
class Failure:
    run_id: str
    request_id: int
    path: str
    request: dict[str, Any] | None
    status: int
    error: str
    received_at: float
    damaged: str | None = field(default=None, init=False, compare=False)
    """As :attr:`SavedPair.damaged`: readers skip a damaged failure."""

    def __post_init__(self) -> None:
        self.damaged = _check_fields(self, _FAILURE_TYPES, "failure")

    def record(self) -> bytes:
        return orjson.dumps({k: getattr(self, k) for k in _FAILURE_TYPES})

    @property
    def sort_key(self) -> str:
        return pair_key(self.run_id, self.request_id)


@dataclass
class Claim:
    """The outcome of claiming a request's slot."""

    slot: int
    answer: StoredAnswer | None = None
    """The stored answer of the slot, to replay."""
    leased: bool = False
    """No answer yet and this caller holds the lease: it calls upstream and then finishes or abandons the slot.
    Neither an answer nor the lease: another caller is filling the slot; wait for it (:meth:`Store.acquire`)."""


def answer_key(key: str, slot: int) -> str:
    return f"{key}:{slot}"


_PAIR_FIELDS = ("run_id", "request_id", "key", "occurrence", "path", "request", "status", "stream", "received_at")

_NONE = type(None)
# Each field of a stored record: the types it may have, and the neutral value that replaces a value of another type.
_PAIR_TYPES: dict[str, tuple[tuple[type, ...], Any]] = {
    "run_id": ((str,), ""), "request_id": ((int,), 0), "key": ((str,), ""), "occurrence": ((int,), 0),
    "path": ((str,), ""), "request": ((dict, _NONE), None), "status": ((int,), 0), "stream": ((bool,), False),
    "received_at": ((int, float), 0.0),
}
_FAILURE_TYPES: dict[str, tuple[tuple[type, ...], Any]] = {
    "run_id": ((str,), ""), "request_id": ((int,), 0), "path": ((str,), ""), "request": ((dict, _NONE), None),
    "status": ((int,), 0), "error": ((str,), ""), "received_at": ((int, float), 0.0),
}


def _check_fields(obj: object, types: dict[str, tuple[tuple[type, ...], Any]], what: str) -> str | None:
    """What is wrong with the fields of a record read back from a store (``None``: nothing); each bad field is
    replaced by its neutral value, so that a reader that shows the record anyway cannot trip on it."""
    problems = []
    ident = f"{getattr(obj, 'run_id', '?')}/{getattr(obj, 'request_id', '?')}"
    for name, (kinds, neutral) in types.items():
        value = getattr(obj, name)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            problems.append(f"'{name}' is {type(value).__name__}")
            setattr(obj, name, neutral)
    if not problems:
        return None
    text = ", ".join(problems)
    log.warning("stored %s %s is damaged (%s): skipped", what, ident, text)
    return text


def pair_key(run_id: str, request_id: int) -> str:
    return f"{run_id}/{request_id:010d}"


def now() -> float:
    return time.time()


class Store(Protocol):
    """The interface of every backend. ``owner`` identifies one caching interceptor (one process's claim holder)."""

    location: str
    lease_seconds: float
    """How long a lease lives without renewal, by the store's clock (LEASE_SECONDS unless set, before the first claim;
    every process sharing a store should use one value)."""

    async def claim(self, key: str, run_id: str, *, sampled: bool, reuse: bool, owner: str) -> Claim:
        """Map this request to its slot (the run's next free one for a sampled request, else 0), then look the slot
        up and, if it is empty and nobody fills it, lease it to ``owner``. With ``reuse`` false nothing is looked
        up: the caller always gets the lease."""
        ...

    async def acquire(self, key: str, slot: int, *, owner: str) -> Claim:
        """Look up a known slot again and lease it if it is empty and its lease is free or expired."""
        ...

    async def finish(self, key: str, slot: int, *, owner: str, answer: StoredAnswer | None,
                     pair: SavedPair | None) -> None:
        """Store the slot's answer and/or a saved pair, and release the lease, in one step."""
        ...

    async def abandon(self, key: str, slot: int, *, owner: str, run_id: str, sampled: bool) -> None:
        """The slot got no answer: release the lease and hand a sampled slot back to its run (the retry fills it)."""
        ...

    async def renew(self, slots: list[tuple[str, int]], *, owner: str) -> None:
        """Extend the leases ``owner`` holds on ``slots``."""
        ...

    async def save_pair(self, pair: SavedPair) -> None: ...

    async def record_failure(self, failure: Failure) -> bool:
        """Keep a failed request for the report; False once MAX_FAILURES are kept."""
        ...

    async def get_answers(self, slots: list[tuple[str, int]]) -> list[StoredAnswer | None]:
        """The stored answers of ``(key, slot)`` pairs, in order (None: none, or damaged), without any lease: for
        readers (compare)."""
        ...

    async def count_answers(self) -> int: ...

    async def count_pairs(self) -> int: ...

    async def saved_pairs(self, limit: int | None = None, *, with_responses: bool = True) -> list[SavedPair]: ...

    async def failures(self, limit: int | None = None) -> list[Failure]: ...

    def raw_answers(self, batch: int = 500) -> AsyncIterator[list[tuple[str, bytes]]]:
        """Every stored answer as ("<key>:<slot>", its encoded bytes), in batches (for copying a cache)."""
        ...

    async def put_raw_answers(self, items: list[tuple[str, bytes]]) -> None: ...

    async def dictionaries(self) -> list[bytes]:
        """The compression dictionaries the store holds (what its answers may need to be decoded; for copying)."""
        ...

    async def put_dictionaries(self, items: list[bytes]) -> None:
        """Hold these dictionaries too (a copy's source's); the one the store writes with does not change."""
        ...

    async def stats(self) -> dict[str, Any]:
        """What the store holds, in one shape for every backend: ``location``, ``backend``, ``answers``,
        ``saved_requests``, ``failures``, ``bytes`` (and what a backend adds, such as Redis's ``prefix``)."""
        ...

    async def clear(self) -> int:
        """Delete everything the store holds; how many answers, saved pairs and failures were deleted."""
        ...

    async def aclose(self) -> None: ...
