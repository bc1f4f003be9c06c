"""caching through the running proxy: hits, keys, streams, errors, repeats (pass@k) and resume."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import diskcache
import orjson
import pytest

from evalproxy.simulator import Fault, SimulatedModel
from evalproxy.storage import cache_key
from evalproxy.storage.disk import CacheStore
from tests.waiting import wait_until

MSGS = [{"role": "user", "content": "What is the capital of France?"}]
CHAIN = {"interceptors": [{"name": "caching", "config": {"save_requests": True, "reuse_cached_responses": True}},
                          "endpoint"],
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

    @pytest.mark.parametrize(("fault", "reason"), [
        (Fault(drop_after_events=3), "stream broke off"),
        (Fault(end_after_events=3), "stream ended before the answer finished"),
        (Fault(error_event_after=2), "error event in stream: simulated failure mid-stream"),
    ], ids=["cut", "clean-eof-unfinished", "error-event"])
    async def test_unfinished_stream_is_not_stored(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path,
                                                   fault: Fault, reason: str) -> None:
        """A stream cut short, ended early or reporting an error is not stored but listed as a failure; the retry
        goes upstream and is stored whole."""
        sim.script(fault)
        proxy = await make_proxy(CHAIN)
        _, broken, _ = await post(proxy, chat(stream=True))
        assert not broken.endswith(b"data: [DONE]\n\n") or b'"error"' in broken
        _, whole, h = await post(proxy, chat(stream=True))
        assert h["X-EvalProxy-Cache"] == "miss" and whole.endswith(b"data: [DONE]\n\n")
        _, again, h = await post(proxy, chat(stream=True))
        assert h["X-EvalProxy-Cache"] == "hit" and again == whole
        await proxy.close()
        store = CacheStore(tmp_path / "out" / "cache")
        failures = store.failures()
        store.close()
        assert len(failures) == 1 and failures[0].error.startswith(reason)

    async def test_finished_stream_without_done_is_stored(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A stream whose answer finished (finish_reason sent) but that ends without [DONE] is stored."""
        sim.script(Fault(end_after_events=-1))
        proxy = await make_proxy(CHAIN)
        _, first, h1 = await post(proxy, chat(stream=True))
        _, second, h2 = await post(proxy, chat(stream=True))
        assert b"[DONE]" not in first and first == second
        assert (h1["X-EvalProxy-Cache"], h2["X-EvalProxy-Cache"]) == ("miss", "hit")

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
        async def stored() -> bool:  # the answer is stored before its request stops being in flight
            return bool(sim.streams_finished and (await (await proxy.get("/health")).json())["in_flight"] == 0)

        await wait_until(stored, what="the abandoned stream to be stored")
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

    @pytest.mark.parametrize("fault", [Fault(status=500), Fault(drop_after_events=2)], ids=["500", "broken-stream"])
    async def test_retried_failure_fills_its_own_slot(self, make_proxy: Any, sim: SimulatedModel,
                                                      fault: Fault) -> None:
        """A sample that failed and was retried by the harness takes the failed one's place, so a resumed pass@k
        run replays all k answers and pays for none."""
        body = {"model": "m", "messages": MSGS, "temperature": 0.8, "stream": True}
        proxy = await make_proxy(CHAIN, max_retries=0)
        first = []
        for i in range(4):
            if i == 1:
                sim.script(fault)
                status, broken, _ = await post(proxy, body)
                assert status != 200 or not broken.endswith(b"data: [DONE]\n\n")
            first.append((await post(proxy, body))[1])  # the harness retries
        assert len(set(first)) == 4
        await proxy.close()
        calls = len(sim.log)
        resumed = await make_proxy(CHAIN)
        assert [(await post(resumed, body))[1] for _ in range(4)] == first
        assert len(sim.log) == calls

    async def test_concurrent_identical_requests_store_one_whole_answer(
        self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path
    ) -> None:
        """Identical deterministic requests in flight together all get the answer and leave one readable entry."""
        sim.latency = 0.05
        proxy = await make_proxy(CHAIN)
        answers = await asyncio.gather(*(post(proxy, chat()) for _ in range(6)))
        assert {a[0] for a in answers} == {200}
        contents = {orjson.loads(a[1])["choices"][0]["message"]["content"] for a in answers}
        assert len(contents) == 1
        _, again, h = await post(proxy, chat())
        assert h["X-EvalProxy-Cache"] == "hit" and again in {a[1] for a in answers}  # one of them, whole
        await proxy.close()
        store = CacheStore(tmp_path / "out" / "cache")
        try:
            assert store.count_answers() == 1 and store.get_answer(cache_key("/v1/chat/completions", chat()))
        finally:
            store.close()

    async def test_deterministic_repeats_share_one_answer(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A seeded request repeated 3 times reaches the upstream once."""
        proxy = await make_proxy(CHAIN)
        for _ in range(3):
            await post(proxy, chat(temperature=0.7, seed=42))
        assert len(sim.requests_to("/chat/completions")) == 1

    async def test_repeats_reuse_forces_sharing(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """repeats: reuse shares one answer even for sampled requests."""
        proxy = await make_proxy({"interceptors": [
            {"name": "caching", "config": {"repeats": "reuse", "reuse_cached_responses": True}}, "endpoint"],
                                  "generate_html_report": False})
        for _ in range(3):
            await post(proxy, {"model": "m", "messages": MSGS, "temperature": 1.0})
        assert len(sim.requests_to("/chat/completions")) == 1


class TestParams:
    @pytest.mark.parametrize(("config", "stored"), [
        ({"reuse_cached_responses": True, "save_responses": False, "max_saved_responses": 1}, 3),
        ({"reuse_cached_responses": False, "max_saved_responses": 1}, 1),
        ({"reuse_cached_responses": False, "save_responses": False}, 0),
    ], ids=["reuse-overrides", "cap-without-reuse", "no-saving"])
    async def test_saving_follows_nemo_rules(self, make_proxy: Any, tmp_path: Path, config: dict[str, Any],
                                             stored: int) -> None:
        """As in NeMo Evaluator, reuse_cached_responses saves every answer whatever save_responses and
        max_saved_responses say; without reuse they apply."""
        proxy = await make_proxy({"interceptors": [{"name": "caching", "config": config}, "endpoint"],
                                  "generate_html_report": False})
        for i in range(3):
            assert (await post(proxy, chat(messages=[{"role": "user", "content": f"q{i}"}])))[0] == 200
        await proxy.close()
        store = CacheStore(tmp_path / "out" / "cache")
        assert store.count_answers() == stored
        store.close()

    async def test_metrics_file_has_the_caching_section(self, make_proxy: Any, tmp_path: Path) -> None:
        """eval_factory_metrics.json reports hits, misses, writes and errors under "caching"."""
        proxy = await make_proxy(CHAIN)
        for _ in range(3):
            await post(proxy, chat())
        await proxy.close()
        section = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())["caching"]
        assert {k: section[k] for k in ("hits", "misses", "writes", "errors")} == {
            "hits": 2, "misses": 1, "writes": 1, "errors": 0}


class TestUnusableCache:
    async def test_damaged_database_degrades_to_pass_through(
        self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A cache database that is not SQLite at all does not stop the run: requests go upstream, the failure is
        logged once and reported."""
        db = tmp_path / "out" / "cache" / "responses" / "cache.db"
        db.parent.mkdir(parents=True)
        db.write_bytes(b"this is not a database" * 100)
        proxy = await make_proxy(CHAIN)
        for _ in range(2):
            status, body, h = await post(proxy, chat())
            assert status == 200 and orjson.loads(body)["choices"] and h["X-EvalProxy-Cache"] == "miss"
        assert len(sim.requests_to("/chat/completions")) == 2
        await proxy.close()
        assert len([r for r in caplog.records if "cache read failed" in r.getMessage()]) == 1
        assert db.read_bytes() == b"this is not a database" * 100  # never "repaired" by deleting the user's data
        section = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())["caching"]
        assert section["available"] is False and section["errors"] == 1 and section["misses"] == 2


class TestSavedPairs:
    async def test_pairs_in_arrival_order_and_bounded(self, make_proxy: Any, tmp_path: Path) -> None:
        """Saved pairs come back in the order requests arrived, at most max_saved_requests of them."""
        proxy = await make_proxy({"interceptors": [
            {"name": "caching", "config": {"save_requests": True, "max_saved_requests": 4,
                                            "reuse_cached_responses": True}}, "endpoint"],
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

    async def test_pairs_follow_arrival_not_completion(self, make_proxy: Any, sim: SimulatedModel,
                                                       tmp_path: Path) -> None:
        """A slow request that arrived first is listed first even though later ones finished before it."""
        proxy = await make_proxy(CHAIN)
        sim.script(Fault(delay=0.3))
        slow = asyncio.create_task(post(proxy, chat(messages=[{"role": "user", "content": "slow"}])))
        for _ in range(400):  # bounded; once the slow one reached the upstream, it arrived at the proxy first
            if sim.log:
                break
            await asyncio.sleep(0.005)
        for name in ("fast 1", "fast 2"):
            await post(proxy, chat(messages=[{"role": "user", "content": name}]))
        await slow
        await proxy.close()
        store = CacheStore(tmp_path / "out" / "cache")
        pairs = store.saved_pairs()
        store.close()
        assert [p.request["messages"][0]["content"] for p in pairs] == ["slow", "fast 1", "fast 2"]  # type: ignore[index]
        assert [p.request_id for p in pairs] == sorted(p.request_id for p in pairs)

    @pytest.mark.parametrize(("settings", "status"), [
        ({}, 503), ({"upstream_url": "http://127.0.0.1:9/v1"}, 502),
    ], ids=["upstream-status", "unreachable"])
    async def test_failures_are_kept_for_the_report(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path,
                                                    settings: dict[str, Any], status: int) -> None:
        """Failed requests, answered with an error or not answered at all, are listed apart with their status."""
        sim.script(Fault(status=503))
        proxy = await make_proxy(CHAIN, max_retries=0, **settings)
        assert (await post(proxy, chat()))[0] == status
        await proxy.close()
        store = CacheStore(tmp_path / "out" / "cache")
        failures, pairs, answers = store.failures(), store.saved_pairs(), store.count_answers()
        store.close()
        assert [f.status for f in failures] == [status] and failures[0].request == chat()
        assert pairs == [] and answers == 0


async def test_caps_count_what_the_store_held_before_a_restart(make_proxy: Any, tmp_path: Path) -> None:
    """max_saved_requests counts the pairs already in the store: 2 saved by a first run, 1 more by the second."""
    config = {"interceptors": [{"name": "caching", "config": {"save_requests": True, "max_saved_requests": 3,
                                                              "reuse_cached_responses": True}}, "endpoint"],
              "generate_html_report": False}
    for run, prompts in enumerate((["a", "b"], ["c", "d", "e"])):
        proxy = await make_proxy(config)
        for p in prompts:
            assert (await post(proxy, chat(messages=[{"role": "user", "content": f"{run}-{p}"}])))[0] == 200
        await proxy.close()
    store = CacheStore(tmp_path / "out" / "cache")
    try:
        assert store.count_pairs() == 3
    finally:
        store.close()
