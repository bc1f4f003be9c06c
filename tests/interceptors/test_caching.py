"""caching, called directly: determinism, occurrences, short-circuit on a hit."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from evalproxy.adapter.core.errors import UpstreamProtocolError, UpstreamUnreachableError
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import DONE, Event, make_event
from evalproxy.adapter.flow.state import CACHE_HIT
from evalproxy.interceptors.caching import CachingInterceptor, is_deterministic
from evalproxy.storage import StoreClosedError, cache_key

SAMPLED = {"messages": [{"role": "user", "content": "x"}], "temperature": 0.9}


def make(run: RunContext, **params: Any) -> CachingInterceptor:
    params.setdefault("reuse_cached_responses", True)
    return CachingInterceptor(CachingInterceptor.Params(cache_dir=str(run.output_dir / "c"), **params), run)


async def slot(ic: CachingInterceptor, key: str, body: dict[str, Any]) -> int:
    """The slot the next request with ``key`` and ``body`` claims (another owner each time: no lease is shared)."""
    assert ic.store is not None
    claim = await ic.store.claim(key, ic.run.run_id, sampled=ic.sampled(body), reuse=True,
                                 owner=f"probe-{secrets.token_hex(4)}")
    return claim.slot


def request(run: RunContext, body: dict[str, Any]) -> RequestContext:
    return RequestContext(method="POST", path="/v1/chat/completions", json=dict(body), run=run)


async def chunks() -> AsyncIterator[Event]:
    yield Event(make_event({"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}))
    yield Event(make_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    yield DONE


@pytest.mark.parametrize(("body", "expected"), [
    ({"temperature": 0}, True), ({"temperature": 0.0}, True), ({"seed": 7, "temperature": 1.0}, True),
    ({}, False), ({"temperature": 0.7}, False), ({"temperature": False}, False), ({"seed": None}, False),
])
def test_is_deterministic(body: dict[str, Any], expected: bool) -> None:
    """temperature 0 or a seed makes a request deterministic; absent temperature samples (OpenAI's default is 1)."""
    assert is_deterministic(body) is expected


class TestCachingDirect:
    async def test_hit_short_circuits(self, run: RunContext) -> None:
        """The second identical request is answered without calling the rest of the chain."""
        ic = make(run)
        calls = 0

        async def call_next(ctx: RequestContext) -> ProxyResponse:
            nonlocal calls
            calls += 1
            return ProxyResponse.from_json({"choices": [{"message": {"content": "hi"}}]})

        body = {"messages": [{"role": "user", "content": "x"}], "temperature": 0}
        first = RequestContext(method="POST", path="/v1/chat/completions", json=dict(body), run=run)
        second = RequestContext(method="POST", path="/v1/chat/completions", json=dict(body), run=run)
        r1 = await ic(first, call_next)
        r2 = await ic(second, call_next)
        await ic.aclose()
        assert calls == 1 and r2.body == r1.body
        assert second.state.get(CACHE_HIT) is True and first.state.get(CACHE_HIT) is None

    @pytest.mark.parametrize(("repeats", "temperature", "expected"), [
        ("auto", 0.8, [0, 1, 2]), ("auto", 0, [0, 0, 0]), ("sample", 0, [0, 1, 2]), ("reuse", 0.8, [0, 0, 0]),
    ])
    async def test_slots(self, run: RunContext, repeats: str, temperature: float, expected: list[int]) -> None:
        """Sampled repeats claim slots counting up per key; deterministic or reused ones share slot 0."""
        ic = make(run, repeats=repeats)
        body = {"temperature": temperature}
        assert [await slot(ic, "k", body) for _ in range(3)] == expected
        await ic.aclose()

    async def test_released_slot_is_taken_first(self, run: RunContext) -> None:
        """A slot handed back is the next one given out, lowest first, before new ones."""
        ic = make(run)
        assert ic.store is not None
        assert [await slot(ic, "k", SAMPLED) for _ in range(4)] == [0, 1, 2, 3]
        for k in (2, 1):
            await ic.store.abandon("k", k, owner=ic.owner, run_id=run.run_id, sampled=True)
        assert [await slot(ic, "k", SAMPLED) for _ in range(3)] == [1, 2, 4]
        await ic.aclose()

    async def test_upstream_error_hands_back_its_slot(self, run: RunContext) -> None:
        """A sampled request whose upstream call raised leaves its slot to the retry."""
        ic = make(run)

        async def unreachable(ctx: RequestContext) -> ProxyResponse:
            raise UpstreamUnreachableError("down")

        with pytest.raises(UpstreamUnreachableError):
            await ic(request(run, SAMPLED), unreachable)
        assert await slot(ic, cache_key("/v1/chat/completions", SAMPLED), SAMPLED) == 0
        await ic.aclose()

    @pytest.mark.parametrize("read", [1, 2])
    async def test_stream_closed_early_is_not_stored(self, run: RunContext, read: int) -> None:
        """A stream its consumer closed before [DONE] (the server shutting down) is not stored; its slot is free."""
        ic = make(run)

        async def streaming(ctx: RequestContext) -> ProxyResponse:
            return ProxyResponse(200, stream=chunks())

        resp = await ic(request(run, SAMPLED), streaming)
        assert resp.stream is not None
        it = aiter(resp.stream)
        for _ in range(read):
            await anext(it)
        await it.aclose()  # type: ignore[attr-defined]
        key = cache_key("/v1/chat/completions", SAMPLED)
        assert await slot(ic, key, SAMPLED) == 0
        assert ic.store is not None and await ic.store.count_answers() == 0
        await ic.aclose()

    async def test_whole_stream_is_stored_before_done_is_passed_on(self, run: RunContext) -> None:
        """[DONE] reaches the consumer only after the answer is on disk."""
        ic = make(run)

        async def streaming(ctx: RequestContext) -> ProxyResponse:
            return ProxyResponse(200, stream=chunks())

        resp = await ic(request(run, SAMPLED), streaming)
        assert resp.stream is not None
        seen = []
        async for event in resp.stream:
            if event.is_done:
                assert ic.store is not None and await ic.store.count_answers() == 1
            seen.append(event.raw)
        assert seen == [e.raw async for e in chunks()]
        await ic.aclose()

    async def test_break_after_done_keeps_the_stored_slot(self, run: RunContext) -> None:
        """An upstream that breaks off after [DONE] leaves the stored answer in its slot: the next repeat of the
        sampled request takes a new slot instead of replaying the same sample."""
        ic = make(run)

        async def breaks_after_done() -> AsyncIterator[Event]:
            async for event in chunks():
                yield event
            raise UpstreamProtocolError("connection reset after the end")

        async def streaming(ctx: RequestContext) -> ProxyResponse:
            return ProxyResponse(200, stream=breaks_after_done())

        resp = await ic(request(run, SAMPLED), streaming)
        assert resp.stream is not None
        with pytest.raises(UpstreamProtocolError):
            async for _ in resp.stream:
                pass
        assert ic.store is not None and await ic.store.count_answers() == 1
        assert await slot(ic, cache_key("/v1/chat/completions", SAMPLED), SAMPLED) == 1
        await ic.aclose()

    async def test_store_refuses_calls_after_close(self, run: RunContext) -> None:
        """A closed store raises StoreClosedError instead of starting a new thread."""
        ic = make(run)
        store = ic.store
        assert store is not None
        await ic.aclose()
        with pytest.raises(StoreClosedError):
            await store.count_answers()
