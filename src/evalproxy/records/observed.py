"""What the proxy saw in the traffic: generation parameters per run, and a compact ledger line per request.

``ObservedParams.observe(body)`` is cheap and runs on the event loop. ``RequestLedger.record(...)`` only queues; a
writer thread hashes the bodies and appends to ``<run_dir>/requests.jsonl`` in batches, so the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from evalproxy.storage.base import canonical_json

LEDGER_FILE = "requests.jsonl"
log = logging.getLogger("evalproxy.records")

GENERATION_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "n", "stop")
# Fields that steer sampling rather than say what is asked: left out of the input key so runs that differ only in
# these still pair their requests.
_SAMPLING_FIELDS = frozenset({*GENERATION_PARAMS, "model", "stream", "stream_options", "frequency_penalty",
                              "presence_penalty", "logprobs", "top_logprobs", "top_k", "min_p"})
ABSENT = "<absent>"


def prompt_key(body: Mapping[str, Any]) -> str:
    """sha256 of the canonical body without ``model``: the same request to another model has the same key."""
    return hashlib.sha256(canonical_json({k: v for k, v in body.items() if k != "model"})).hexdigest()


def input_key(body: Mapping[str, Any]) -> str:
    """sha256 of what is asked (messages, prompt, tools, ...) without model or sampling parameters."""
    return hashlib.sha256(canonical_json({k: v for k, v in body.items() if k not in _SAMPLING_FIELDS})).hexdigest()


_ENDPOINTS = (("/chat/completions", "chat"), ("/completions", "completions"), ("/embeddings", "embedding"),
              ("/responses", "responses"))


def endpoint_type_of(path: str) -> str | None:
    """The endpoint type a request path calls: ``/v1/completions`` is ``completions``; None for another path."""
    clean = path.split("?", 1)[0].rstrip("/")
    return next((kind for suffix, kind in _ENDPOINTS if clean.endswith(suffix)), None)


@dataclass
class _ParamCounts:
    counts: dict[bytes, list[Any]] = field(default_factory=dict)  # canonical value -> [value, requests]
    overflow: int = 0


class ObservedParams:
    """Distinct values of each generation parameter and how many requests had each; memory bounded per parameter.

    ``params()`` renders NeMo's ``config.params``: a parameter seen with one value on every request is that value;
    one that varied (or was absent on some requests) is ``{varied: true, values: [{value, requests}, ...]}``, where an
    absent parameter is ``value: null, absent: true``. Values past ``max_distinct`` are counted under ``other``.
    """

    def __init__(self, max_distinct: int = 32, names: tuple[str, ...] = GENERATION_PARAMS) -> None:
        self.max_distinct = max_distinct
        self.names = names
        self.total = 0
        self._seen: dict[str, _ParamCounts] = {n: _ParamCounts() for n in names}
        self.paths: dict[str, int] = {}

    def observe(self, body: Mapping[str, Any], path: str | None = None) -> None:
        self.total += 1
        if path is not None and (path in self.paths or len(self.paths) < self.max_distinct):
            self.paths[path] = self.paths.get(path, 0) + 1
        for name in self.names:
            pc = self._seen[name]
            if name not in body:
                key = b"\x00absent"
                value: Any = ABSENT
            else:
                value = body[name]
                key = canonical_json(value)
            slot = pc.counts.get(key)
            if slot is not None:
                slot[1] += 1
            elif len(pc.counts) < self.max_distinct:
                pc.counts[key] = [value, 1]
            else:
                pc.overflow += 1

    def endpoint_type(self) -> str | None:
        """NeMo's endpoint type of the requests sent (``chat``, ``completions``, ``embedding``; the most requests'
        when they were mixed), or None when none was sent to a known API path."""
        kinds: dict[str, int] = {}
        for path, n in self.paths.items():
            kind = endpoint_type_of(path)
            if kind is not None:
                kinds[kind] = kinds.get(kind, 0) + n
        return max(kinds, key=lambda k: kinds[k]) if kinds else None

    def counts(self, name: str) -> list[tuple[Any, int]]:
        """(value, requests) pairs for one parameter, most frequent first; the absent case is ``ABSENT``."""
        pc = self._seen[name]
        return sorted(((v, n) for v, n in pc.counts.values()), key=lambda t: -t[1])

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.names:
            pc = self._seen[name]
            pairs = self.counts(name)
            if not pairs or (len(pairs) == 1 and pairs[0][0] == ABSENT and not pc.overflow):
                continue
            if len(pairs) == 1 and not pc.overflow:
                out[name] = pairs[0][0]
                continue
            values: list[dict[str, Any]] = []
            for v, n in pairs:
                values.append({"value": None, "absent": True, "requests": n} if v == ABSENT
                              else {"value": v, "requests": n})
            entry: dict[str, Any] = {"varied": True, "values": values}
            if pc.overflow:
                entry["other"] = pc.overflow
            out[name] = entry
        return out


@dataclass(frozen=True)
class LedgerEntry:
    """One request as the ledger keeps it."""

    prompt_key: str
    input_key: str
    path: str = "/v1/chat/completions"
    cache_key: str | None = None
    slot: int | None = None
    status: int | None = None
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    cache_hit: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0

    def to_json(self) -> bytes:
        d = {k: v for k, v in self.__dict__.items() if v is not None}
        return orjson.dumps(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerEntry:
        """The entry a ledger line holds; a ``ValueError`` naming the field when one has the wrong type."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for name, value in known.items():
            kinds = _FIELD_TYPES[name]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"field '{name}' is {type(value).__name__}")
        return cls(**known)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "prompt_key": (str,), "input_key": (str,), "path": (str,), "cache_key": (str, type(None)),
    "slot": (int, type(None)), "status": (int, type(None)), "latency_ms": (int, float, type(None)),
    "prompt_tokens": (int, type(None)), "completion_tokens": (int, type(None)),
    "finish_reason": (str, type(None)), "cache_hit": (bool, type(None)), "params": (dict,), "ts": (int, float),
}


_STOP = object()


class RequestLedger:
    """Append-only ``requests.jsonl`` for one run, written by its own thread.

    ``record()`` never blocks: it puts the body and the fields on a queue. The thread takes up to ``batch`` items
    (or what arrived within ``interval`` seconds), computes the keys, and appends them with one write. ``close()``
    (or ``await aclose()``) flushes what is queued and stops the thread; a killed process loses at most one batch.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, batch: int = 256, interval: float = 0.5) -> None:
        self.path = Path(run_dir) / LEDGER_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.batch = batch
        self.interval = interval
        self.written = 0
        self.errors = 0
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="evalproxy-ledger", daemon=True)
        self._thread.start()

    def record(
        self,
        body: Mapping[str, Any],
        *,
        path: str = "/v1/chat/completions",
        cache_key: str | None = None,
        slot: int | None = None,
        status: int | None = None,
        latency_ms: float | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        finish_reason: str | None = None,
        cache_hit: bool | None = None,
    ) -> None:
        """Queue one request (its final body, as sent upstream) and what came of it. Never blocks.

        The body is hashed later, on the writer thread: it must not be changed after this call.
        """
        if self._closed:
            raise RuntimeError("ledger is closed")
        fields = {"path": path, "cache_key": cache_key, "slot": slot, "status": status, "latency_ms": latency_ms,
                  "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "finish_reason": finish_reason, "cache_hit": cache_hit, "ts": time.time()}
        self._q.put((body, fields))

    def _entry(self, body: Mapping[str, Any], fields: dict[str, Any]) -> LedgerEntry:
        params = {k: body[k] for k in GENERATION_PARAMS if k in body}
        return LedgerEntry(prompt_key=prompt_key(body), input_key=input_key(body), params=params, **fields)

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._q.get()
            items = [item]
            deadline = time.monotonic() + self.interval
            while item is not _STOP and len(items) < self.batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._q.get(timeout=left)
                except queue.Empty:
                    break
                items.append(item)
            stop = any(i is _STOP for i in items)
            lines = []
            for i in items:
                if i is _STOP:
                    continue
                try:
                    lines.append(self._entry(*i).to_json())
                except (TypeError, orjson.JSONEncodeError):  # a body that is not JSON-able: count it, go on
                    self.errors += 1
            if lines:
                try:
                    with open(self.path, "ab") as f:
                        f.write(b"\n".join(lines) + b"\n")
                    self.written += len(lines)
                except OSError:
                    self.errors += len(lines)

    def close(self) -> None:
        """Flush and stop the writer thread (blocking; idempotent)."""
        if not self._closed:
            self._closed = True
            self._q.put(_STOP)
        self._thread.join()

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.to_thread(self.close)


def read_ledger(run_dir: str | os.PathLike[str]) -> Iterator[LedgerEntry]:
    """The ledger entries of a run directory, in arrival order; a torn last line (killed process) is skipped."""
    p = Path(run_dir)
    p = p / LEDGER_FILE if p.is_dir() else p
    if not p.exists():
        return
    skipped = 0
    with open(p, "rb") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError:
                skipped += 1  # a torn last line, or a line that is not JSON (or too deep for it)
                continue
            if not (isinstance(d, dict) and "prompt_key" in d):
                skipped += 1
                continue
            try:
                yield LedgerEntry.from_dict(d)
            except ValueError as exc:
                skipped += 1
                log.warning("%s line %d skipped: %s", p, n, exc)
    if skipped > 1:  # one is a killed process's torn last line
        log.warning("%s: %d lines skipped (not ledger entries)", p, skipped)
