"""caching: every answer the model gave is stored on disk, so a resumed run never pays for it twice.

The key is the sha256 of the request path and the canonical JSON of the body as the interceptors before this one
left it (a system prompt injected earlier is part of the key; headers never are). The model's raw answer is stored:
status, safe headers and body, or for a stream its whole event sequence, written only once the stream completed (the
final ``[DONE]`` is held back until the answer is on disk). Errors and broken streams are never stored.

Repeats: a request that samples (temperature absent or above 0, and no ``seed``) may be sent k times on purpose
(pass@k). Within one run, the k-th occurrence of its key maps to the k-th stored answer, so a pass@k run gets k real
samples and its resumed run replays the same k in the same order. A deterministic request shares one answer however
often it repeats. ``repeats: sample`` or ``reuse`` forces either behaviour.
"""

from __future__ import annotations

import logging
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
from evalproxy.adapter.sse import DONE_EVENT
from evalproxy.adapter.store import CacheStore, Failure, SavedPair, StoredAnswer, StoreWorker, cache_key

log = logging.getLogger("evalproxy.caching")

CACHE_HEADER = "X-EvalProxy-Cache"
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
        self.store = CacheStore(self.cache_dir)
        self.worker = StoreWorker(self.store)
        self._occurrences: Counter[str] = Counter()
        self._answers = self.store.count_answers()
        self._pairs = self.store.count_pairs()
        self.counts: Counter[str] = Counter()
        self._warned: set[str] = set()
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
            "read_errors": c["read_errors"],
            "write_errors": c["write_errors"],
            "stored_answers": self._answers,
        }

    def occurrence(self, key: str, body: dict[str, Any]) -> int:
        mode = self.params.repeats
        if mode == "reuse" or (mode == "auto" and is_deterministic(body)):
            return 0
        k = self._occurrences[key]
        self._occurrences[key] = k + 1
        return k

    async def _io(self, what: str, fn: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
        """Run a store call in a thread: (ok, result). A failing disk (full, read-only, damaged) is logged once,
        counted in statistics and metrics, and never fails the request."""
        try:
            return True, await self.worker.call(fn, *args)
        except Exception as exc:
            self.counts[f"{what}_errors"] += 1
            self.run.metrics.cache.labels(f"{what}_error").inc()
            self.run.metrics_file.touch()
            if what not in self._warned:
                self._warned.add(what)
                log.error("cache %s failed in %s (%s: %s); requests are still answered, without the cache. "
                          "Further %s errors are counted, not logged.", what, self.cache_dir, type(exc).__name__,
                          exc, what)
            return False, None

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body = ctx.json
        if body is None or ctx.method != "POST":
            return await call_next(ctx)
        key = cache_key(ctx.path, body)
        occurrence = self.occurrence(key, body)
        ctx.state[CACHE_KEY] = key
        if self.params.reuse_cached_responses:
            _, stored = await self._io("read", self.store.get_answer, key, occurrence)
            if stored is not None:
                self.counts["hits"] += 1
                self.run.metrics.child(self.run.metrics.cache, "hit").inc()
                self.run.metrics_file.touch()
                ctx.state[CACHE_HIT] = True
                return _replay(stored)
        self.counts["misses"] += 1
        self.run.metrics.child(self.run.metrics.cache, "miss").inc()
        self.run.metrics_file.touch()
        resp = await call_next(ctx)
        resp.headers[CACHE_HEADER] = "miss"
        if not resp.ok:
            await self._record_failure(ctx, resp.status, (resp.body or b"")[:2000].decode("utf-8", "replace"))
            self.counts["not_stored"] += 1
        elif resp.stream is not None:
            resp.stream = self._store_stream(ctx, key, occurrence, resp.status, safe_headers(resp.headers.items()),
                                             resp.stream)
        elif resp.json is None:
            # A 2xx that is not JSON (a gateway's HTML page): passed through, never stored.
            self.counts["not_stored"] += 1
            await self._record_failure(ctx, resp.status, "answer is not JSON: " +
                                       (resp.body or b"")[:200].decode("utf-8", "replace"))
        else:
            answer = StoredAnswer(resp.status, safe_headers(resp.headers.items()), body=resp.body)
            await self._store(ctx, key, occurrence, answer)
        return resp

    async def _store(self, ctx: RequestContext, key: str, occurrence: int, answer: StoredAnswer) -> None:
        p = self.params
        save_answer = p.save_responses and (p.max_saved_responses is None or self._answers < p.max_saved_responses)
        pair = None
        if p.save_requests and (p.max_saved_requests is None or self._pairs < p.max_saved_requests):
            self._pairs += 1
            pair = SavedPair(
                run_id=self.run.run_id, request_id=ctx.request_id, key=key, occurrence=occurrence, path=ctx.path,
                request=redact_obj(ctx.json), status=answer.status, stream=answer.is_stream,
                received_at=ctx.received_at,
            )
        if not save_answer and pair is None:
            return
        ok, _ = await self._io("write", self.store.put, key, occurrence, answer if save_answer else None, pair)
        if ok and save_answer:
            self._answers += 1
            self.counts["writes"] += 1
            self.run.metrics.child(self.run.metrics.cache, "write").inc()

    async def _record_failure(self, ctx: RequestContext, status: int, error: str) -> None:
        failure = Failure(run_id=self.run.run_id, request_id=ctx.request_id, path=ctx.path,
                          request=redact_obj(ctx.json), status=status, error=error, received_at=ctx.received_at)
        await self._io("write", self.store.record_failure, failure)

    async def _store_stream(
        self, ctx: RequestContext, key: str, occurrence: int, status: int, headers: dict[str, str],
        stream: AsyncIterator[bytes],
    ) -> AsyncIterator[bytes]:
        events: list[bytes] = []
        stored = False
        try:
            async for event in stream:
                if event == DONE_EVENT:
                    # Hold the end back until the answer is on disk: a client that saw [DONE] can count on resume.
                    events.append(event)
                    await self._store(ctx, key, occurrence, StoredAnswer(status, headers, events=list(events)))
                    stored = True
                    yield event
                    continue
                events.append(event)
                yield event
        except ProxyError as exc:
            self.counts["not_stored"] += 1
            await self._record_failure(ctx, exc.status, f"stream broke off: {exc.message}")
            raise
        if not stored:
            # Ended cleanly without [DONE] (some servers do): complete all the same.
            await self._store(ctx, key, occurrence, StoredAnswer(status, headers, events=events))

    async def aclose(self) -> None:
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
