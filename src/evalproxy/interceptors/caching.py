"""caching: every answer the model gave is stored on disk, so a resumed run never pays for it twice.

The key is the sha256 of the request path and the canonical JSON of the body as the interceptors before this one
left it (a system prompt injected earlier is part of the key; headers never are). The model's raw answer is stored:
status, safe headers and body, or for a stream its whole event sequence, written only once the stream completed (the
final ``[DONE]`` is held back until the answer is on disk). Errors are never stored, nor are streams that broke off,
ended before the answer finished, or reported an error inside a 200 (vLLM does); they are kept in the store's list of
failures for the report instead.

Repeats: a request that samples (temperature absent or above 0, and no ``seed``) may be sent k times on purpose
(pass@k). Within one run, the k-th occurrence of its key maps to the k-th stored answer, so a pass@k run gets k real
samples and its resumed run replays the same k in the same order. A deterministic request shares one answer however
often it repeats. ``repeats: sample`` or ``reuse`` forces either behaviour. A sampled request that got no stored
answer (an upstream error, a broken stream, a client that gave up) hands its occurrence back, so the harness's retry
fills that slot and a resumed run finds the k answers at occurrences 0..k-1.

As in NeMo Evaluator, ``reuse_cached_responses: true`` implies ``save_responses: true`` and no
``max_saved_responses`` cap: a cache that is read must be written.

A cache directory that cannot be opened (read-only, damaged database) is logged once and the proxy answers without
the cache: a run is never stopped by its cache.
"""

from __future__ import annotations

import heapq
import logging
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from multidict import CIMultiDict
from pydantic import Field

from evalproxy.adapter.chain import BaseInterceptor, Next
from evalproxy.adapter.chain import Params as BaseParams
from evalproxy.adapter.context import CACHE_HIT, CACHE_KEY, ProxyResponse, RequestContext, RunContext
from evalproxy.adapter.errors import ProxyError
from evalproxy.adapter.redact import redact_obj, safe_headers
from evalproxy.adapter.registry import register_for_adapter
from evalproxy.adapter.sse import DONE_EVENT, assemble_stream, event_json
from evalproxy.adapter.store import CacheStore, Failure, SavedPair, StoredAnswer, StoreWorker, cache_key

log = logging.getLogger("evalproxy.caching")

CACHE_HEADER = "X-EvalProxy-Cache"
_PLURAL = {"hit": "hits", "miss": "misses", "write": "writes"}
T = TypeVar("T")


def is_deterministic(body: dict[str, Any]) -> bool:
    """temperature 0 or a seed: the same request gives the same answer, so one stored answer serves every repeat."""
    if body.get("seed") is not None:
        return True
    t = body.get("temperature")
    return isinstance(t, int | float) and not isinstance(t, bool) and t == 0


@register_for_adapter(name="caching", description="Stores answers on disk and replays them on repeats and resume.")
class CachingInterceptor(BaseInterceptor):
    class Params(BaseParams):
        cache_dir: str | None = Field(default=None, description="Default: caching_dir, else <output_dir>/cache")
        reuse_cached_responses: bool = True
        save_requests: bool = False
        save_responses: bool = True
        max_saved_requests: int | None = Field(default=None, ge=0)
        max_saved_responses: int | None = Field(default=None, ge=0)
        repeats: Literal["auto", "sample", "reuse"] = "auto"

    def __init__(self, params: CachingInterceptor.Params, run: RunContext) -> None:
        super().__init__(params, run)
        self.cache_dir = Path(params.cache_dir or run.config.caching_dir or run.output_dir / "cache")
        self.save_responses = params.save_responses
        self.max_saved_responses = params.max_saved_responses
        if params.reuse_cached_responses and (not params.save_responses or params.max_saved_responses is not None):
            # NeMo Evaluator's rule: reading a cache that is not fully written would make a resumed run pay again.
            log.warning("caching: reuse_cached_responses is on, so every answer is saved (save_responses=%s and "
                        "max_saved_responses=%s are ignored)", params.save_responses, params.max_saved_responses)
            self.save_responses, self.max_saved_responses = True, None
        self._occurrences: Counter[str] = Counter()
        self._free: dict[str, list[int]] = {}
        self.counts: Counter[str] = Counter()
        self._warned: set[str] = set()
        self.store: CacheStore | None = None
        self.worker: StoreWorker | None = None
        self._answers = self._pairs = 0
        try:
            self.store = CacheStore(self.cache_dir)
            self._answers = self.store.count_answers()
            self._pairs = self.store.count_pairs()
            self.worker = StoreWorker(self.store)
        except (OSError, sqlite3.Error) as exc:
            self._failed("read", exc)
            if self.store is not None:
                self.store.close()
                self.store = None
        run.metrics_file.register("caching", self.snapshot)

    def snapshot(self) -> dict[str, Any]:
        c = self.counts
        lookups = c["hits"] + c["misses"]
        return {
            "cache_dir": str(self.cache_dir),
            "hits": c["hits"],
            "misses": c["misses"],
            "hit_ratio": c["hits"] / lookups if lookups else 0.0,
            "writes": c["writes"],
            "not_stored": c["not_stored"],
            "errors": c["read_errors"] + c["write_errors"],
            "read_errors": c["read_errors"],
            "write_errors": c["write_errors"],
            "stored_answers": self._answers,
            "available": self.store is not None,
        }

    def _sampled(self, body: dict[str, Any]) -> bool:
        """Whether repeats of this request each get their own stored answer."""
        mode = self.params.repeats
        return mode == "sample" or (mode == "auto" and not is_deterministic(body))

    def occurrence(self, key: str, body: dict[str, Any]) -> int:
        """Which stored answer of ``key`` this request maps to: 0 for shared answers, else the lowest free slot."""
        if not self._sampled(body):
            return 0
        free = self._free.get(key)
        if free:
            k = heapq.heappop(free)
            if not free:
                del self._free[key]
            return k
        k = self._occurrences[key]
        self._occurrences[key] = k + 1
        return k

    def release(self, key: str, occurrence: int, body: dict[str, Any]) -> None:
        """Hand back the occurrence of a request that got no stored answer, so the next repeat fills that slot."""
        if self._sampled(body):
            heapq.heappush(self._free.setdefault(key, []), occurrence)

    def _failed(self, what: str, exc: BaseException) -> None:
        """A failing disk (full, read-only, damaged) is logged once, counted, and never fails the request."""
        self.counts[f"{what}_errors"] += 1
        self.run.metrics.cache.labels(f"{what}_error").inc()
        self.run.metrics_file.touch()
        if what not in self._warned:
            self._warned.add(what)
            log.error("cache %s failed in %s (%s: %s); requests are still answered, without the cache. "
                      "Further %s errors are counted, not logged.", what, self.cache_dir, type(exc).__name__,
                      exc, what)

    async def _io(self, what: str, fn: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
        """Run a store call on the store thread: (ok, result)."""
        assert self.worker is not None  # only called once the store opened
        try:
            return True, await self.worker.call(fn, *args)
        except Exception as exc:
            self._failed(what, exc)
            return False, None

    def _count(self, what: Literal["hit", "miss", "write"]) -> None:
        self.counts[_PLURAL[what]] += 1
        self.run.metrics.child(self.run.metrics.cache, what).inc()
        self.run.metrics_file.touch()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body = ctx.json
        store = self.store
        if body is None or ctx.method != "POST":
            return await call_next(ctx)
        key = cache_key(ctx.path, body)
        ctx.state[CACHE_KEY] = key
        if store is None:  # the cache could not be opened: pass through
            self._count("miss")
            resp = await call_next(ctx)
            resp.headers[CACHE_HEADER] = "miss"
            return resp
        occurrence = self.occurrence(key, body)
        if self.params.reuse_cached_responses:
            _, stored = await self._io("read", store.get_answer, key, occurrence)
            if stored is not None:
                self._count("hit")
                ctx.state[CACHE_HIT] = True
                return _replay(stored)
        self._count("miss")
        try:
            resp = await call_next(ctx)
        except ProxyError as exc:  # upstream unreachable, timed out, or a failing inner interceptor
            self.release(key, occurrence, body)
            self.counts["not_stored"] += 1
            await self._record_failure(ctx, exc.status, exc.message)
            raise
        except BaseException:  # the client gave up (cancelled)
            self.release(key, occurrence, body)
            raise
        resp.headers[CACHE_HEADER] = "miss"
        if not resp.ok:
            self.release(key, occurrence, body)
            await self._record_failure(ctx, resp.status, (resp.body or b"")[:2000].decode("utf-8", "replace"))
            self.counts["not_stored"] += 1
        elif resp.stream is not None:
            resp.stream = self._store_stream(ctx, key, occurrence, resp.status, safe_headers(resp.headers.items()),
                                             resp.stream)
        elif resp.json is None:
            # A 2xx that is not JSON (a gateway's HTML page): passed through, never stored.
            self.release(key, occurrence, body)
            self.counts["not_stored"] += 1
            await self._record_failure(ctx, resp.status, "answer is not JSON: " +
                                       (resp.body or b"")[:200].decode("utf-8", "replace"))
        else:
            answer = StoredAnswer(resp.status, safe_headers(resp.headers.items()), body=resp.body)
            if not await self._store(ctx, key, occurrence, answer):
                self.release(key, occurrence, body)
        return resp

    async def _store(self, ctx: RequestContext, key: str, occurrence: int, answer: StoredAnswer) -> bool:
        """Save the answer and/or its pair as configured; False if the answer should have been saved and was not."""
        assert self.store is not None
        p = self.params
        save_answer = self.save_responses and (self.max_saved_responses is None
                                               or self._answers < self.max_saved_responses)
        pair = None
        if p.save_requests and (p.max_saved_requests is None or self._pairs < p.max_saved_requests):
            self._pairs += 1
            pair = SavedPair(
                run_id=self.run.run_id, request_id=ctx.request_id, key=key, occurrence=occurrence, path=ctx.path,
                request=redact_obj(ctx.json), status=answer.status, stream=answer.is_stream,
                received_at=ctx.received_at,
            )
        if not save_answer and pair is None:
            return True
        ok, _ = await self._io("write", self.store.put, key, occurrence, answer if save_answer else None, pair)
        if ok and save_answer:
            self._answers += 1
            self._count("write")
        return ok

    async def _record_failure(self, ctx: RequestContext, status: int, error: str) -> None:
        assert self.store is not None
        failure = Failure(run_id=self.run.run_id, request_id=ctx.request_id, path=ctx.path,
                          request=redact_obj(ctx.json), status=status, error=error, received_at=ctx.received_at)
        await self._io("write", self.store.record_failure, failure)

    async def _store_stream(
        self, ctx: RequestContext, key: str, occurrence: int, status: int, headers: dict[str, str],
        stream: AsyncIterator[bytes],
    ) -> AsyncIterator[bytes]:
        events: list[bytes] = []
        stored = done = False
        error: str | None = None
        body = ctx.json or {}
        try:
            async for event in stream:
                if error is None and (b"error" in event or b"response.failed" in event):
                    error = _error_event(event)
                if event == DONE_EVENT and error is None:
                    # Hold the end back until the answer is on disk: a client that saw [DONE] can count on resume.
                    done = True
                    events.append(event)
                    stored = await self._store(ctx, key, occurrence, StoredAnswer(status, headers,
                                                                                  events=list(events)))
                    yield event
                    continue
                events.append(event)
                yield event
        except ProxyError as exc:
            self.release(key, occurrence, body)
            self.counts["not_stored"] += 1
            await self._record_failure(ctx, exc.status, f"stream broke off: {exc.message}")
            raise
        except BaseException:  # cancelled or closed before the end: the answer never completed
            if not stored:
                self.release(key, occurrence, body)
            raise
        if stored:
            return
        if error is not None:
            # The upstream reported a failure inside a 200 stream (vLLM does): passed on, never stored.
            self.counts["not_stored"] += 1
            await self._record_failure(ctx, status, f"error event in stream: {error}")
        elif not done:
            if _stream_finished(ctx.kind, events):
                # Ended cleanly without [DONE] (some servers do), with the answer finished: stored all the same.
                if await self._store(ctx, key, occurrence, StoredAnswer(status, headers, events=events)):
                    return
            else:
                self.counts["not_stored"] += 1
                await self._record_failure(ctx, status, "stream ended before the answer finished "
                                                        "(no finish_reason, no [DONE])")
        self.release(key, occurrence, body)

    async def aclose(self) -> None:
        if self.worker is not None:
            await self.worker.aclose()


def _replay(stored: StoredAnswer) -> ProxyResponse:
    headers: CIMultiDict[str] = CIMultiDict(stored.headers)
    headers[CACHE_HEADER] = "hit"
    if stored.events is not None:
        return ProxyResponse(stored.status, headers, stream=_events(stored.events))
    return ProxyResponse(stored.status, headers, body=stored.body)


async def _events(events: list[bytes]) -> AsyncIterator[bytes]:
    for e in events:
        yield e


def _error_event(event: bytes) -> str | None:
    """The message of an event that reports a failure (``{"error": {...}}``, Responses' ``error`` and
    ``response.failed``), else None."""
    obj = event_json(event)
    if not isinstance(obj, dict):
        return None
    if obj.get("error"):
        err = obj["error"]
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    if obj.get("type") in ("error", "response.failed"):
        return str(obj.get("message") or obj.get("type"))
    return None


def _stream_finished(kind: str, events: list[bytes]) -> bool:
    """Whether a stream that ended without ``[DONE]`` still holds a whole answer.

    Chat and completions streams are whole when every choice has a finish_reason; a Responses stream when it sent
    ``response.completed``. Other streams give no sign either way and are taken as whole.
    """
    if kind == "responses":
        return any(isinstance(o := event_json(e), dict) and o.get("type") == "response.completed" for e in events)
    if kind in ("chat", "completions"):
        assembled = assemble_stream(events)
        choices: list[dict[str, Any]] = assembled["choices"] if assembled else []
        return bool(choices) and all(c.get("finish_reason") for c in choices)
    return True
