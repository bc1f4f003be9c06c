"""caching: every answer the model gave is stored, so a resumed run never pays for it twice.

The key is the sha256 of the request path (with its query string) and the canonical JSON of the body as the
interceptors before this one left it (a system prompt injected earlier is part of the key; headers never are). The
model's raw answer is stored: status, safe headers and body, or for a stream its whole event sequence, written only
once the stream completed (the final ``[DONE]`` is held back until the answer is in the store). Errors are never
stored, nor are streams that broke off, ended before the answer finished, or reported an error inside a 200 (vLLM
does); they are kept in the store's list of failures for the report instead.

Repeats: a request that samples (temperature absent or above 0, and no ``seed``) may be sent k times on purpose
(pass@k). Within one run (one proxy start, or every proxy started with one ``--run-id``), the k-th occurrence of its
key is claimed atomically in the store as slot k, so a pass@k run gets k real samples, however many processes serve
it. Another run on the same cache (a resume, or a second run at the same time) maps its k-th occurrence to slot k
too: it replays a filled slot and waits for one being filled (a lease says who fills it), never paying twice. A
deterministic request shares slot 0 however often it repeats, and identical requests in flight at once share one
upstream call. ``repeats: sample`` or ``reuse`` forces either behaviour. A sampled request that got no stored answer
(an upstream error, a broken stream, a client that gave up) hands its slot back, so the harness's retry fills it.

Waits are bounded. A slot another process fills is leased until a deadline by the store's clock
(``lease_seconds``), which its holder moves forward while it works; a lease whose holder died, hangs, or that was
left without an expiry is taken over once its deadline passed, and the waiter asks upstream itself. A request
waiting for another request's answer (in this process or another) stops waiting when its client disconnects: it
ends with a 499 (``client_closed_request``) and pays for nothing. A request that holds a lease finishes its answer
and stores it even when its client left.

NeMo Evaluator 0.4's two settings: ``bypass: true`` turns the cache off for the run (no lookup, nothing stored, the
request passes through as if caching were not listed), and ``session_prefix: true`` puts the request's session
(its ``X-Session-Id`` header) in front of the key, so repeats of one problem in different sessions never share an
answer. 0.4 always prefixes by session; here it is off unless asked for (or the config file is 0.4-shaped), since
evalproxy's pass@k slots already give repeats within a run their own samples. 0.4's key covers only ``model``,
``messages``, ``tools``, ``temperature``, ``max_tokens``, ``top_p``, ``seed`` and ``extra_body``; evalproxy's covers
the whole body and the path, which is stricter (a changed ``stop`` or ``n``, or ``stream``, is another request), and
stays the key in every shape.

As in NeMo Evaluator, ``reuse_cached_responses: true`` implies ``save_responses: true`` and no
``max_saved_responses`` cap: a cache that is read must be written.

The store is a directory (``cache_dir``, the default: diskcache) or a Redis/Valkey server (``cache_url:
redis://host:6379/0``, shared by proxies on many machines). A store that cannot be opened or fails (read-only,
damaged database, full disk, a server down or slow) is logged once, counted (``evalproxy_store_up`` drops to 0,
``evalproxy_answers_not_stored`` counts what went by), and the proxy answers without it: a run is never stopped by
its cache. The next request tries the store again; when it answers, caching resumes and that is logged too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Literal, TypeVar

from multidict import CIMultiDict
from pydantic import Field, field_validator

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.errors import ProxyError, StoreError, StoreFullError, StoreReadOnlyError
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.core.redact import redact_obj, safe_headers
from evalproxy.adapter.flow.answers import AnswerHandler, handle
from evalproxy.adapter.flow.request import SESSION_HEADER, RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.shape import assemble_stream
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.flow.state import CACHE_HIT, CACHE_KEY, CACHE_SLOT
from evalproxy.adapter.registry import register_for_adapter
from evalproxy.storage import Claim, Failure, SavedPair, Store, StoredAnswer, cache_key, is_url, open_store
from evalproxy.storage.base import LEASE_SECONDS

log = logging.getLogger("evalproxy.caching")

CACHE_HEADER = "X-EvalProxy-Cache"
WAIT_POLL_SECONDS = 0.05
"""How often a request waiting for a slot another request fills looks again (and whether its client is still there)."""
_PLURAL = {"hit": "hits", "miss": "misses", "write": "writes"}
T = TypeVar("T")


def session_key(session: str, key: str) -> str:
    """``key`` for one session only: the session id in front, hashed again (NeMo 0.4's ``session|key`` rule)."""
    return hashlib.sha256(f"{session}|{key}".encode()).hexdigest()


def is_deterministic(body: dict[str, Any]) -> bool:
    """temperature 0 or a seed: the same request gives the same answer, so one stored answer serves every repeat."""
    if body.get("seed") is not None:
        return True
    t = body.get("temperature")
    return isinstance(t, int | float) and not isinstance(t, bool) and t == 0


class ClientGoneError(ProxyError):
    """The client disconnected while its request waited for another request's answer: the wait ends, nothing is paid
    for. (Nobody reads the answer; it is counted and logged like any error.)"""

    status = 499
    type = "client_gone"
    code = "client_closed_request"


class CachingParams(Params):
    """The caching interceptor's settings (NeMo Evaluator's, plus ``cache_url``, ``repeats`` and ``lease_seconds``).

    ``lease_seconds``: how long the lease on a slot being filled lives without renewal, by the store's clock (a
    holder renews it every third of that while it works). A request waiting for a slot whose holder died or hangs
    asks upstream itself once that time has passed. Every proxy sharing a store must use the same value (a lease
    whose deadline lies further ahead than one lease is not believed); the default suits every run, tests shorten it.
    """

    field_versions: ClassVar[dict[str, str]] = {"bypass": "0.4", "session_prefix": "0.4"}
    """NeMo Evaluator 0.4's caching fields (``--strict-config`` names the version when a 0.2.8 file uses them)."""
    cache_dir: str | None = Field(default=None, description="Default: caching_dir, else <output_dir>/cache")
    cache_url: str | None = Field(default=None, description="A shared store in place of cache_dir: redis://, "
                                  "rediss:// or unix:// (Redis 6+ or Valkey); ?prefix=NAME: keeps projects apart")
    reuse_cached_responses: bool = False  # NeMo Evaluator's default; the default chains set it true
    save_requests: bool = False
    save_responses: bool = True
    max_saved_requests: int | None = Field(default=None, ge=0)
    max_saved_responses: int | None = Field(default=None, ge=0)
    repeats: Literal["auto", "sample", "reuse"] = "auto"
    lease_seconds: float = Field(default=LEASE_SECONDS, gt=0, le=3600,
                                 description="How long a slot's lease lives without renewal, by the store's clock")
    bypass: bool = Field(default=False, description="NeMo 0.4: the cache is off (no lookup, nothing stored)")
    session_prefix: bool = Field(default=False, description="NeMo 0.4: the X-Session-Id header prefixes the key, "
                                 "so sessions never share an answer")

    @field_validator("cache_url")
    @classmethod
    def _a_store_url(cls, v: str | None) -> str | None:
        if v is not None and not is_url(v):
            raise ValueError("cache_url must start with redis://, rediss:// or unix:// (use cache_dir for a directory)")
        return v


@register_for_adapter(name="caching", description="Stores answers and replays them on repeats and resume.")
class CachingInterceptor(BaseInterceptor[CachingParams]):
    Params = CachingParams

    def __init__(self, params: CachingParams, run: RunContext) -> None:
        super().__init__(params, run)
        self.cache_dir = run.resolve(run.config.cache_dir(run.output_dir, params.cache_dir))
        self.where = params.cache_url or self.cache_dir
        self.secrets = run.server.secrets()
        """The run's own key: redacted wherever it shows in a saved request, whatever the field is called."""
        self.save_responses = params.save_responses
        self.max_saved_responses = params.max_saved_responses
        if params.reuse_cached_responses and (not params.save_responses or params.max_saved_responses is not None):
            # NeMo Evaluator's rule: reading a cache that is not fully written would make a resumed run pay again.
            log.warning("caching: reuse_cached_responses is on, so every answer is saved (save_responses=%s and "
                        "max_saved_responses=%s are ignored)", params.save_responses, params.max_saved_responses)
            self.save_responses, self.max_saved_responses = True, None
        self.owner = f"{run.run_id}:{secrets.token_hex(4)}"
        self.counts: Counter[str] = Counter()
        prom = run.prometheus
        self._counters = {what: prom.child(prom.cache, what) for what in _PLURAL}
        """The Prometheus counter of each result, bound once (a label look-up per request is not free)."""
        self.guard = _StoreGuard(run, self.counts, self._where_label, server=bool(params.cache_url))
        self._filling: dict[tuple[str, int], asyncio.Future[StoredAnswer | None]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self.store: Store | None = None
        self._answers = self._pairs = 0
        self._counted: asyncio.Future[None] | None = None
        """What the store held when this run started (for the caps and the section), asked once, by any backend."""
        try:
            self.store = open_store(self.where)
            self.store.lease_seconds = params.lease_seconds
        except StoreError as exc:  # a directory that cannot be opened (a server store connects on its first call)
            self.guard.failed("read", exc)
            self.store = None
        run.prometheus.store_up.set(1 if self.store is not None else 0)
        run.statistics.register("caching", self.section)

    def section(self) -> dict[str, Any]:
        c = self.counts
        lookups = c["hits"] + c["misses"]
        return {
            "cache_dir": self._where_label(),
            "hits": c["hits"],
            "misses": c["misses"],
            "hit_ratio": c["hits"] / lookups if lookups else 0.0,
            "writes": c["writes"],
            "shared_in_flight": c["shared"],
            "not_stored": c["not_stored"],
            "errors": c["read_errors"] + c["write_errors"],
            "read_errors": c["read_errors"],
            "write_errors": c["write_errors"],
            "stored_answers": self._answers,
            "available": self.store is not None,
        }

    def sampled(self, body: dict[str, Any]) -> bool:
        """Whether repeats of this request each get their own stored answer."""
        mode = self.params.repeats
        return mode == "sample" or (mode == "auto" and not is_deterministic(body))

    def _where_label(self) -> str:
        return self.store.location if self.store is not None and self.params.cache_url else str(self.where)

    def _count(self, what: Literal["hit", "miss", "write"]) -> None:
        self.counts[_PLURAL[what]] += 1
        self._counters[what].inc()
        self.run.statistics.touch()

    def _hit(self, ctx: RequestContext, stored: StoredAnswer) -> ProxyResponse:
        self._count("hit")
        ctx.state[CACHE_HIT] = True
        return replay(stored)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body = ctx.json
        store = self.store
        if body is None or ctx.method != "POST" or self.params.bypass:
            return await call_next(ctx)
        if store is None:  # the cache could not be opened: pass through
            return await self._without_store(ctx, call_next)
        if ctx.is_large:  # keying a 60 MiB body takes seconds: not on the event loop
            key = await asyncio.to_thread(cache_key, ctx.path, body, ctx.query)
        else:
            key = cache_key(ctx.path, body, ctx.query)
        if self.params.session_prefix and (session := ctx.headers.get(SESSION_HEADER)):
            key = session_key(session, key)
        ctx.state[CACHE_KEY] = key
        sampled = self.sampled(body)
        reuse = self.params.reuse_cached_responses
        if reuse and not sampled:
            shared = self._filling.get((key, 0))
            if shared is not None:  # the same request is being answered right now: share its answer
                if not await _done_unless_gone(ctx, shared):
                    raise self._client_gone()
                stored = shared.result()
                if stored is not None:
                    self.counts["shared"] += 1
                    ctx.state[CACHE_SLOT] = 0
                    return self._hit(ctx, stored)
        ok, claim = await self.guard.io("read", store.claim(key, self.run.run_id, sampled=sampled, reuse=reuse,
                                                        owner=self.owner))
        if not ok or claim is None:
            return await self._without_store(ctx, call_next)
        if claim.answer is None and not claim.leased:  # another request fills the slot
            waited = await self._wait_for_slot(ctx, key, claim)
            if waited is None:
                raise self._client_gone()
            claim = waited
        ctx.state[CACHE_SLOT] = claim.slot
        if claim.answer is not None:
            return self._hit(ctx, claim.answer)
        if not claim.leased:  # the store failed while waiting: answer without it
            return await self._without_store(ctx, call_next)
        return await self._fill(ctx, call_next, key, claim.slot, sampled)

    async def _without_store(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        """The store failed for this request: pass it through, counted as an answer not stored."""
        self._count("miss")
        resp = await call_next(ctx)
        resp.headers[CACHE_HEADER] = "miss"
        if resp.ok:
            self.run.prometheus.answers_not_stored.inc()
        return resp

    def _client_gone(self) -> ClientGoneError:
        self.counts["client_gone"] += 1
        return ClientGoneError("the client disconnected while its request waited for another request's answer")

    async def _wait_for_slot(self, ctx: RequestContext, key: str, claim: Claim) -> Claim | None:
        """Wait while another request (here or in another process) fills the slot; then its answer or the lease,
        or None once the client disconnected (the slot is left to its holder).

        Bounded: a local filler ends with its upstream call; another process's lease ends at its deadline by the
        store's clock unless its holder renews it, and the store hands an expired lease to the next look."""
        assert self.store is not None
        while claim.answer is None and not claim.leased:
            local = self._filling.get((key, claim.slot))
            if local is not None:
                if not await _done_unless_gone(ctx, local):
                    return None
                stored = local.result()
                if stored is not None:
                    self.counts["shared"] += 1
                    return Claim(claim.slot, stored)
            else:
                await asyncio.sleep(WAIT_POLL_SECONDS)
            if ctx.client_gone():  # before looking again: a look may lease the slot, and then it must be paid
                return None
            ok, again = await self.guard.io("read", self.store.acquire(key, claim.slot, owner=self.owner))
            if not ok or again is None:
                return Claim(claim.slot)
            claim = again
        return claim

    async def _fill(self, ctx: RequestContext, call_next: Next, key: str, slot: int, sampled: bool) -> ProxyResponse:
        """Ask upstream for the slot this request leased, and store the answer (or give the slot back)."""
        filled: asyncio.Future[StoredAnswer | None] = asyncio.get_running_loop().create_future()
        self._filling[(key, slot)] = filled
        self._start_renewing()
        fill = _Fill(self, ctx, key, slot, sampled, filled)
        self._count("miss")
        try:
            resp = await call_next(ctx)
        except ProxyError as exc:  # upstream unreachable, timed out, or a failing inner interceptor
            await fill.give_back(exc.status, exc.message)
            raise
        except BaseException:  # the client gave up (cancelled)
            await fill.give_back(None, None)
            raise
        resp.headers[CACHE_HEADER] = "miss"
        if not resp.ok:
            await fill.give_back(resp.status, (resp.body or b"")[:2000].decode("utf-8", "replace"))
            return resp
        fill.resp, fill.headers = resp, safe_headers(resp.headers.items())
        if resp.stream is None and resp.json is None:
            # A 2xx that is not JSON (a gateway's HTML page): passed through, never stored.
            await fill.give_back(resp.status, "answer is not JSON: " +
                                 (resp.body or b"")[:200].decode("utf-8", "replace"))
            return resp
        return await handle(resp, fill)

    def _start_renewing(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew(), name="evalproxy-lease-renewer")

    async def _renew(self) -> None:
        """Keep the leases of slots this interceptor is filling alive (a long stream outlives one lease)."""
        while self._filling:
            await asyncio.sleep(self.params.lease_seconds / 3)
            if self.store is not None and self._filling:
                await self.guard.io("write", self.store.renew(list(self._filling), owner=self.owner))

    async def _know_what_is_stored(self) -> None:
        """Once per run: how many answers and pairs the store already holds (the caps count from there). The count
        runs in a task of its own: a caller that is cancelled meanwhile leaves it to finish for the others."""
        if self._counted is None:
            self._counted = asyncio.ensure_future(self._read_stored_counts())
        await asyncio.shield(self._counted)

    async def _read_stored_counts(self) -> None:
        assert self.store is not None
        ok, answers = await self.guard.io("read", self.store.count_answers())
        ok2, pairs = await self.guard.io("read", self.store.count_pairs())
        self._answers += answers if ok and answers is not None else 0
        self._pairs += pairs if ok2 and pairs is not None else 0

    async def store_answer(self, ctx: RequestContext, key: str, slot: int, answer: StoredAnswer) -> bool:
        """Save the answer and/or its pair as configured; False if the answer should have been saved and was not."""
        assert self.store is not None
        p = self.params
        if self._counted is None or not self._counted.done():
            await self._know_what_is_stored()
        save_answer = self.save_responses and (self.max_saved_responses is None
                                               or self._answers < self.max_saved_responses)
        pair = None
        if p.save_requests and (p.max_saved_requests is None or self._pairs < p.max_saved_requests):
            self._pairs += 1
            pair = SavedPair(
                run_id=self.run.run_id, request_id=ctx.request_id, key=key, occurrence=slot, path=ctx.path,
                request=redact_obj(ctx.json, self.secrets), status=answer.status, stream=answer.is_stream,
                received_at=ctx.received_at,
            )
        ok, _ = await self.guard.io("write", self.store.finish(key, slot, owner=self.owner,
                                                           answer=answer if save_answer else None, pair=pair))
        if ok and save_answer:
            self._answers += 1
            self._count("write")
        elif save_answer:
            self.run.prometheus.answers_not_stored.inc()
        return ok or not save_answer

    async def record_failure(self, ctx: RequestContext, status: int, error: str) -> None:
        assert self.store is not None
        self.counts["not_stored"] += 1
        failure = Failure(run_id=self.run.run_id, request_id=ctx.request_id, path=ctx.path,
                          request=redact_obj(ctx.json, self.secrets), status=status, error=error,
                          received_at=ctx.received_at)
        await self.guard.io("write", self.store.record_failure(failure))

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self.store is not None:
            await self.store.aclose()


class _StoreGuard:
    """The store's calls, guarded: a failing store (full, read-only, damaged, down) is logged once, counted, and never
    fails the request."""

    def __init__(self, run: RunContext, counts: Counter[str], where: Callable[[], str], server: bool) -> None:
        self.run, self.counts, self.where, self.server = run, counts, where, server
        self._warned: set[str] = set()
        self._down = False

    async def io(self, what: str, call: Awaitable[T]) -> tuple[bool, T | None]:
        """Await a store call: (ok, result); a failure is counted and logged once, never raised."""
        try:
            result = await call
        except (StoreFullError, StoreReadOnlyError) as exc:
            # A claim writes its lease: a store that is full or read-only fails it as a write, not a read.
            self.failed("write", exc)
            return False, None
        except Exception as exc:  # any other StoreError (down, slow, damaged), or a backend's bug: never the request's
            self.failed(what, exc)
            return False, None
        if self._down:
            self._back()
        return True, result

    def failed(self, what: str, exc: BaseException) -> None:
        """A store call failed (``what``: read or write): counted, and logged the first time."""
        self.counts[f"{what}_errors"] += 1
        self.run.prometheus.cache.labels(f"{what}_error").inc()
        self.run.prometheus.store_up.set(0)
        self._down = True
        self.run.statistics.touch()
        if what not in self._warned:
            self._warned.add(what)
            log.error("cache %s failed in %s (%s: %s); requests are still answered, without the cache. "
                      "Further %s errors are counted, not logged.", what, self.where(), type(exc).__name__,
                      exc, what)

    def _back(self) -> None:
        """A store call succeeded after failures. A server store was down and is back: caching resumes, said
        loudly, and its next outage is logged again (a directory that failed one write, full or read-only, is not
        "back": its errors stay logged once)."""
        self._down = False
        self.run.prometheus.store_up.set(1)
        if self.server:
            self._warned.clear()
            log.warning("cache store %s answers again: caching resumed", self.where())


class _Fill(AnswerHandler):
    """One answer on its way to the store: stored once complete, else its slot handed back (exactly one of them)."""

    keep_events = True

    def __init__(self, cache: CachingInterceptor, ctx: RequestContext, key: str, slot: int, sampled: bool,
                 filled: asyncio.Future[StoredAnswer | None]) -> None:
        self.cache, self.ctx, self.key, self.slot, self.sampled, self.filled = cache, ctx, key, slot, sampled, filled
        self.resp = ProxyResponse()
        self.headers: dict[str, str] = {}
        self.error: str | None = None
        self.done = False

    def _settle(self, stored: StoredAnswer | None) -> None:
        self.done = True
        self.cache._filling.pop((self.key, self.slot), None)
        if not self.filled.done():
            self.filled.set_result(stored)

    async def give_back(self, status: int | None, error: str | None) -> None:
        """No answer for this slot: record why (if known), release the lease, hand a sampled slot back."""
        if self.done:
            return
        self._settle(None)
        cache = self.cache
        if status is not None and error is not None:
            await cache.record_failure(self.ctx, status, error)
        if cache.store is not None:
            await cache.guard.io("write", cache.store.abandon(self.key, self.slot, owner=cache.owner,
                                                          run_id=cache.run.run_id, sampled=self.sampled))

    def on_object(self, obj: dict[str, Any], whole: bool) -> bool:
        if not whole and self.error is None:
            self.error = _error_in(obj)
        return False

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        status = self.resp.status
        if events is None:
            answer = StoredAnswer(status, self.headers, body=self.resp.body)
        elif self.error is not None:
            # The upstream reported a failure inside a 200 stream (vLLM does): passed on, never stored.
            await self.give_back(status, f"error event in stream: {self.error}")
            return []
        elif not events[-1].is_done and not _stream_finished(self.ctx.kind, events):
            await self.give_back(status, "stream ended before the answer finished (no finish_reason, no [DONE])")
            return []
        else:
            answer = StoredAnswer(status, self.headers, events=[e.raw for e in events])
        if await self.cache.store_answer(self.ctx, self.key, self.slot, answer):
            self._settle(answer)
        else:
            await self.give_back(None, None)
        return []

    async def on_error(self, exc: BaseException) -> None:
        if self.done:
            return  # stored already: the slot stays filled (an upstream that breaks off after [DONE])
        if isinstance(exc, ProxyError):
            await self.give_back(exc.status, f"stream broke off: {exc.message}")
        else:  # cancelled or closed before the end: the answer never completed
            await self.give_back(None, None)


async def _done_unless_gone(ctx: RequestContext, fut: asyncio.Future[Any]) -> bool:
    """Wait for another request's ``fut`` (never cancelling it); False as soon as this request's client is gone."""
    while not fut.done():
        if ctx.client_gone():
            return False
        await asyncio.wait((fut,), timeout=WAIT_POLL_SECONDS)
    return True


def replay(stored: StoredAnswer) -> ProxyResponse:
    headers: CIMultiDict[str] = CIMultiDict(stored.headers)
    headers[CACHE_HEADER] = "hit"
    if stored.events is not None:
        return ProxyResponse(stored.status, headers, stream=_events(stored.events))
    return ProxyResponse(stored.status, headers, body=stored.body)


async def _events(events: list[bytes]) -> AsyncIterator[Event]:
    for e in events:
        yield Event(e)


def _error_in(obj: dict[str, Any]) -> str | None:
    """The message of an event that reports a failure (``{"error": {...}}``, Responses' ``error`` and
    ``response.failed``), else None."""
    if obj.get("error"):
        err = obj["error"]
        return str(err.get("message", err)) if isinstance(err, dict) else str(err)
    if obj.get("type") in ("error", "response.failed"):
        return str(obj.get("message") or obj.get("type"))
    return None


def _stream_finished(kind: str, events: list[Event]) -> bool:
    """Whether a stream that ended without ``[DONE]`` still holds a whole answer.

    Chat and completions streams are whole when every choice has a finish_reason; a Responses stream when it sent
    ``response.completed``. Other streams give no sign either way and are taken as whole.
    """
    if kind == "responses":
        return any(isinstance(o := e.json, dict) and o.get("type") == "response.completed" for e in events)
    if kind in ("chat", "completions"):
        assembled = assemble_stream(events)
        choices: list[dict[str, Any]] = assembled["choices"] if assembled else []
        return bool(choices) and all(c.get("finish_reason") for c in choices)
    return True


