"""caching, called directly: determinism, occurrences, short-circuit on a hit."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.context import CACHE_HIT, ProxyResponse, RequestContext, RunContext
from evalproxy.interceptors.caching import CachingInterceptor, is_deterministic


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
        ic = CachingInterceptor(CachingInterceptor.Params(cache_dir=str(run.output_dir / "c")), run)
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
    def test_occurrences(self, run: RunContext, repeats: str, temperature: float, expected: list[int]) -> None:
        """Sampled repeats count up per key; deterministic or reused ones share occurrence 0."""
        ic = CachingInterceptor(CachingInterceptor.Params(cache_dir=str(run.output_dir / "c"),
                                                          repeats=repeats), run)  # type: ignore[arg-type]
        body = {"temperature": temperature}
        assert [ic.occurrence("k", body) for _ in range(3)] == expected
        ic.store.close()
