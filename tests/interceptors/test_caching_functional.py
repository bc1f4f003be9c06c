"""caching through the running proxy: hits, keys, streams, errors, repeats (pass@k) and resume."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import diskcache
import orjson
import pytest

from evalproxy.adapter.store import CacheStore, cache_key
from evalproxy.simulator import Fault, SimulatedModel

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
CHAIN = {"interceptors": [{"name": "caching", "config": {"save_requests": True}}, "endpoint"],
         "generate_html_report": False}


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MSGS, "temperature": 0, **extra}


async def post(proxy: Any, body: dict[str, Any], path: str = "/v1/chat/completions") -> tuple[int, bytes, Any]:
    resp = await proxy.post(path, json=body)
    return resp.status, await resp.read(), resp.headers


class TestHits:
    async def test_repeat_is_served_from_disk(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A repeated deterministic request is answered from the cache, upstream sees it once, usage is kept."""
        proxy = await make_proxy(CHAIN)
        s1, b1, h1 = await post(proxy, chat())
        s2, b2, h2 = await post(proxy, chat())
        assert (s1, s2) == (200, 200)
        assert b1 == b2 and orjson.loads(b2)["usage"]["completion_tokens"] > 0
        assert (h1["X-EvalProxy-Cache"], h2["X-EvalProxy-Cache"]) == ("miss", "hit")
        assert len(sim.requests_to("/chat/completions")) == 1

    async def test_headers_never_enter_the_key(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Per-request headers (x-stainless-retry-count, x-irid) do not make a new key."""
        proxy = await make_proxy(CHAIN)
        await proxy.post("/v1/chat/completions", json=chat(), headers={"x-irid": "a", "x-stainless-retry-count": "0"})
        resp = await proxy.post("/v1/chat/completions", json=chat(),
                                headers={"x-irid": "b", "x-stainless-retry-count": "1"})
        assert resp.headers["X-EvalProxy-Cache"] == "hit"

    async def test_stream_replay_is_byte_identical(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A replayed stream is byte for byte what the client received the first time."""
        proxy = await make_proxy(CHAIN)
        body = chat(stream=True, stream_options={"include_usage": True})
        _, first, h1 = await post(proxy, body)
        _, second, h2 = await post(proxy, body)
        assert first == second and first.endswith(b"data: [DONE]\n\n")
        assert (h1["X-EvalProxy-Cache"], h2["X-EvalProxy-Cache"]) == ("miss", "hit")
        assert len(sim.requests_to("/chat/completions")) == 1

    async def test_reuse_false_writes_but_never_reads(self, make_proxy: Any, sim: SimulatedModel,
                                                      tmp_path: Path) -> None:
        """reuse_cached_responses: false sends every request upstream and still stores the answers."""
        proxy = await make_proxy({"interceptors": [
            {"name": "caching", "config": {"reuse_cached_responses": False}}, "endpoint"],
            "generate_html_report": False})
        await post(proxy, chat())
        await post(proxy, chat())
        assert len(sim.requests_to("/chat/completions")) == 2
        store = CacheStore(tmp_path / "out" / "cache")
        assert store.get_answer(cache_key("/v1/chat/completions", chat())) is not None
        store.close()


class TestNotStored:
    async def test_errors_are_not_stored(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """An upstream error is passed through and not stored: the next identical request goes upstream."""
        sim.script(Fault(status=500))
        proxy = await make_proxy(CHAIN, max_retries=0)
        assert (await post(proxy, chat()))[0] == 500
        assert (await post(proxy, chat()))[0] == 200
        assert len(sim.requests_to("/chat/completions")) == 2

    async def test_broken_stream_is_not_stored(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A stream the upstream cut short is not stored; the retry goes upstream and is stored whole."""
        sim.script(Fault(drop_after_events=3))
        proxy = await make_proxy(CHAIN)
        _, broken, _ = await post(proxy, chat(stream=True))
        assert b'"error"' in broken
        _, whole, h = await post(proxy, chat(stream=True))
        assert h["X-EvalProxy-Cache"] == "miss" and whole.endswith(b"data: [DONE]\n\n")
        _, again, h = await post(proxy, chat(stream=True))
        assert h["X-EvalProxy-Cache"] == "hit" and again == whole

    async def test_non_json_answer_is_not_stored(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A 200 that is not JSON is passed through and not stored."""
        sim.script(Fault(body=b"<html>oops</html>"))
        proxy = await make_proxy(CHAIN)
        assert (await post(proxy, chat()))[1] == b"<html>oops</html>"
        _, _, h = await post(proxy, chat())
        assert h["X-EvalProxy-Cache"] == "miss"

    async def test_corrupted_entry_is_refetched(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
        """A damaged cache entry is never served: it is deleted and the request goes upstream again."""
        proxy = await make_proxy(CHAIN)
        _, good, _ = await post(proxy, chat())
        raw = diskcache.Cache(str(tmp_path / "out" / "cache" / "responses"))
        key = cache_key("/v1/chat/completions", chat()) + ":0"
        blob = raw.get(key)
        raw.set(key, blob[:-5] + b"XXXXX")
        raw.close()
        status, body, h = await post(proxy, chat())
        assert status == 200 and h["X-EvalProxy-Cache"] == "miss"
        assert orjson.loads(body)["choices"] == orjson.loads(good)["choices"]
        assert len(sim.requests_to("/chat/completions")) == 2

    async def test_client_leaving_still_stores_the_answer(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A client that disconnects mid-stream does not lose the answer: it is completed and stored."""
        import aiohttp
        sim.chunk_delay = 0.02
        proxy = await make_proxy(CHAIN)
        async with aiohttp.ClientSession() as session:
            resp = await session.post(proxy.make_url("/v1/chat/completions"), json=chat(stream=True))
            await resp.content.readline()
            resp.close()
        for _ in range(200):  # bounded: 4 s
            if sim.streams_finished:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        _, _, h = await post(proxy, chat(stream=True))
        assert h["X-EvalProxy-Cache"] == "hit"


class TestKeys:
    @pytest.mark.parametrize("change", [
        {"prompt": "other"}, {"n": 2}, {"stop": ["\n"]}, {"max_tokens": 5},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "json_object"}}, {"temperature": 0.5}, {"seed": 1},
    ])
    def test_fields_that_change_the_answer_change_the_key(self, change: dict[str, Any]) -> None:
        """Every field that can change the answer changes the key."""
        base = {"model": "m", "prompt": "x", "temperature": 0}
        assert cache_key("/v1/completions", base) != cache_key("/v1/completions", {**base, **change})

    def test_key_order_and_number_format_do_not_matter(self) -> None:
        """Key order never changes the key, and 0 and 0.0 are the same number; true is not 1."""
        a = {"model": "m", "temperature": 0, "top_p": 1.0, "messages": [{"role": "user", "content": "x"}]}
        b = {"messages": [{"content": "x", "role": "user"}], "top_p": 1, "temperature": 0.0, "model": "m"}
        assert cache_key("/v1/chat/completions", a) == cache_key("/v1/chat/completions", b)
        assert cache_key("/p", {"x": True}) != cache_key("/p", {"x": 1})
        assert cache_key("/p", {"x": 1.8446744073709552e19}) != cache_key("/p", {"x": 1e19})

    def test_path_is_part_of_the_key(self) -> None:
        """The same body sent to two paths has two keys."""
        assert cache_key("/v1/completions", {"prompt": "x"}) != cache_key("/v1/chat/completions", {"prompt": "x"})


class TestRepeats:
    async def test_pass_at_k_gets_k_samples_and_resume_replays_them(
        self, make_proxy: Any, sim: SimulatedModel
    ) -> None:
        """One prompt sent 5 times at temperature 0.8 gives 5 distinct answers; a rerun gives the same 5, no calls."""
        body = {"model": "m", "messages": MSGS, "temperature": 0.8}
        proxy = await make_proxy(CHAIN)
        first = [orjson.loads((await post(proxy, body))[1])["choices"][0]["message"]["content"] for _ in range(5)]
        assert len(set(first)) == 5
        await proxy.close()
        calls = len(sim.log)
        resumed = await make_proxy(CHAIN)  # a new run on the same cache
        again = [orjson.loads((await post(resumed, body))[1])["choices"][0]["message"]["content"] for _ in range(5)]
        assert again == first
        assert len(sim.log) == calls

    async def test_deterministic_repeats_share_one_answer(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A seeded request repeated 3 times reaches the upstream once."""
        proxy = await make_proxy(CHAIN)
        for _ in range(3):
            await post(proxy, chat(temperature=0.7, seed=42))
        assert len(sim.requests_to("/chat/completions")) == 1

    async def test_repeats_reuse_forces_sharing(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """repeats: reuse shares one answer even for sampled requests."""
        proxy = await make_proxy({"interceptors": [{"name": "caching", "config": {"repeats": "reuse"}}, "endpoint"],
                                  "generate_html_report": False})
        for _ in range(3):
            await post(proxy, {"model": "m", "messages": MSGS, "temperature": 1.0})
        assert len(sim.requests_to("/chat/completions")) == 1


class TestSavedPairs:
    async def test_pairs_in_arrival_order_and_bounded(self, make_proxy: Any, tmp_path: Path) -> None:
        """Saved pairs come back in the order requests arrived, at most max_saved_requests of them."""
        proxy = await make_proxy({"interceptors": [
            {"name": "caching", "config": {"save_requests": True, "max_saved_requests": 4}}, "endpoint"],
            "generate_html_report": False})
        prompts = [f"question number {i}" for i in range(6)]
        for p in prompts:
            await post(proxy, {"model": "m", "messages": [{"role": "user", "content": p}], "temperature": 0})
        await proxy.close()
        store = CacheStore(tmp_path / "out" / "cache")
        pairs = store.saved_pairs()
        store.close()
        assert [p.request["messages"][0]["content"] for p in pairs] == prompts[:4]  # type: ignore[index]
        assert all(p.response and p.response["choices"] for p in pairs)

    async def test_failures_are_kept_for_the_report(self, make_proxy: Any, sim: SimulatedModel,
                                                    tmp_path: Path) -> None:
        """Failed requests are listed apart with their status."""
        sim.script(Fault(status=503))
        proxy = await make_proxy(CHAIN, max_retries=0)
        await post(proxy, chat())
        await proxy.close()
        store = CacheStore(tmp_path / "out" / "cache")
        failures = store.failures()
        store.close()
        assert [f.status for f in failures] == [503]
