"""reasoning through the proxy: a thinking model's answers, JSON and streamed, replayed, and its statistics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI

from evalproxy.adapter.config import parse_config
from evalproxy.adapter.server.app import create_app
from evalproxy.interceptors.reasoning import ReasoningStats
from evalproxy.simulator import Fault, SimulatedModel
from tests.conftest import ProxyServer

REUSE = {"name": "caching", "config": {"reuse_cached_responses": True}}
CHAIN = {"interceptors": ["reasoning", REUSE, "endpoint"], "generate_html_report": False}


def streamed_text(raw: bytes) -> str:
    text = ""
    for e in raw.split(b"\n\n"):
        if e.startswith(b"data: {"):
            for ch in orjson.loads(e[6:])["choices"]:
                text += ch.get("delta", {}).get("content") or ch.get("text") or ""
    return text


def metrics(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())
    return data


async def ask(proxy: Any, stream: bool, prompt: str = "q") -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "stream": stream}
    resp = await proxy.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    raw = await resp.read()
    return streamed_text(raw) if stream else str(orjson.loads(raw)["choices"][0]["message"]["content"])


class TestThinkingModel:
    @pytest.mark.parametrize("stream", [False, True])
    async def test_client_never_sees_reasoning_and_replays_are_stripped_again(
        self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path, stream: bool
    ) -> None:
        """Fresh and replayed answers reach the client without reasoning; both are counted in the metrics file."""
        sim.reasoning = True
        sim.chunk_chars = 3
        proxy = await make_proxy(CHAIN)
        full, thought = sim.make_content({"temperature": 0}, "q")
        assert thought is not None
        expected = full.split("</think>", 1)[1]
        assert [await ask(proxy, stream) for _ in range(2)] == [expected, expected]
        assert len(sim.log) == 1  # the second answer was a replay
        await proxy.close()
        section = metrics(tmp_path)["reasoning"]
        assert (section["total_responses"], section["reasoning_finished_count"]) == (2, 2)
        assert section["total_reasoning_words"] == 2 * len(thought.split())
        assert section["total_updated_content_words"] == 2 * len(expected.split())

    async def test_plain_stream_tokens_come_from_the_usage_the_endpoint_asked_for(
        self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path
    ) -> None:
        """A stream whose client asked for no usage still has its reasoning tokens counted."""
        sim.reasoning = True
        proxy = await make_proxy(CHAIN)
        _, thought = sim.make_content({"temperature": 0}, "q")
        assert thought is not None
        await ask(proxy, True)
        await proxy.close()
        assert metrics(tmp_path)["reasoning"]["total_reasoning_tokens"] == len(thought.split())

    @pytest.mark.parametrize("chunk_chars", [1, 2, 4, 5, 6, 9])
    async def test_tokens_split_by_the_upstream_anywhere(
        self, make_proxy: Any, sim: SimulatedModel, chunk_chars: int
    ) -> None:
        """Whatever size the upstream's chunks are (so wherever the tokens are cut), the stream is stripped exactly."""
        sim.reasoning = True
        sim.chunk_chars = chunk_chars
        proxy = await make_proxy(CHAIN)
        full, _ = sim.make_content({"temperature": 0}, "q")
        assert await ask(proxy, True) == full.split("</think>", 1)[1]

    @pytest.mark.parametrize("stream", [False, True])
    async def test_block_opened_by_the_template(self, make_proxy: Any, sim: SimulatedModel, stream: bool) -> None:
        """An answer that only closes the block (its template opened it) is stripped up to the end token."""
        sim.chunk_chars = 4
        sim.faults.append(Fault(content="the prompt opened this block</think>\n42"))
        proxy = await make_proxy(CHAIN)
        assert await ask(proxy, stream) == "42"

    async def test_completions_answers_are_stripped(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Every choice of a completions answer loses its reasoning."""
        sim.reasoning = True
        proxy = await make_proxy(CHAIN)
        resp = await proxy.post("/v1/completions", json={"model": "m", "prompt": ["a", "b"], "temperature": 0})
        texts = [c["text"] for c in (await resp.json())["choices"]]
        assert texts == [sim.make_content({"temperature": 0}, p)[0].split("</think>", 1)[1] for p in ("a", "b")]


class TestOpenAIClient:
    async def test_sdk_stream_with_usage(
        self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path
    ) -> None:
        """The openai SDK streams a stripped answer and gets the usage chunk; its reasoning tokens are counted."""
        sim.reasoning = True
        sim.chunk_chars = 2
        proxy = await make_proxy(CHAIN)
        full, thought = sim.make_content({"temperature": 0}, "q")
        assert thought is not None
        async with AsyncOpenAI(base_url=str(proxy.make_url("/v1")), api_key="sk-test", max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "q"}], temperature=0, stream=True,
                stream_options={"include_usage": True})
            chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == full.split("</think>", 1)[1]
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens_details is not None
        assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == len(thought.split())
        await proxy.close()
        section = metrics(tmp_path)["reasoning"]
        assert (section["total_responses"], section["total_reasoning_tokens"]) == (1, len(thought.split()))


class TestResumedRun:
    @pytest.mark.parametrize("chain", [
        ["reasoning", REUSE, "endpoint"],  # evalproxy's order: reasoning sees replays
        [REUSE, "endpoint", "reasoning"],  # NeMo's usual order: reasoning sits inside the cache, sees misses
    ])
    async def test_reasoning_section_covers_the_whole_resumed_run(
        self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path, chain: list[str]
    ) -> None:
        """A run stopped after 3 answers and resumed with all 5 counts each of the 5 answers once, in either order."""
        sim.reasoning = True
        config = {"interceptors": chain, "generate_html_report": False}
        first = await make_proxy(config)
        for i in range(3):
            await ask(first, False, f"q{i}")
        await first.close()
        assert metrics(tmp_path)["reasoning"]["total_responses"] == 3
        second = await make_proxy(config)
        for i in range(5):
            await ask(second, False, f"q{i}")
        await second.close()
        assert len(sim.log) == 5
        section = metrics(tmp_path)["reasoning"]
        assert (section["total_responses"], section["reasoning_finished_count"]) == (5, 5)


class TestStreamingDecision:
    """With evalproxy's default chain, ``stream_unmarked: auto`` holds a stream only while the model is undecided."""

    @staticmethod
    async def default_chain_proxy(tmp_path: Path, upstream: Any) -> TestClient[Any, Any]:
        loaded = parse_config({"server": {"upstream_url": str(upstream.make_url("/v1")),
                                          "output_dir": str(tmp_path / "out")}}, default_chain="evalproxy")
        assert [i.name for i in loaded.adapter.interceptors][:2] == ["reasoning", "caching"]
        client: TestClient[Any, Any] = TestClient(ProxyServer(create_app(loaded), host="127.0.0.1"))
        await client.start_server()
        return client

    @staticmethod
    async def text_of(proxy: Any, prompt: str, gate: asyncio.Event | None = None) -> str:
        """The streamed answer's text; ``gate`` (the simulator's finish gate) is opened on its first piece."""
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "stream": True}
        resp = await proxy.post("/v1/chat/completions", json=body)
        text = ""
        async for line in resp.content:
            if line.startswith(b"data: {"):
                for ch in orjson.loads(line[6:])["choices"]:
                    piece = (ch.get("delta") or {}).get("content") or ""
                    if piece and gate is not None:
                        gate.set()
                    text += piece
        return text


    async def test_template_opened_reasoning_never_reaches_the_client(
        self, sim: SimulatedModel, upstream: Any, tmp_path: Path
    ) -> None:
        """A model whose chat template opens <think> (its answers only close it) streams no reasoning, first answer
        or tenth, whatever it answered before."""
        sim.chunk_chars = 3
        proxy = await self.default_chain_proxy(tmp_path, upstream)
        try:
            for i in range(10):
                sim.faults.append(Fault(content=f"secret thoughts number {i} about it</think>\nanswer {i}"))
                text = await self.text_of(proxy, f"q{i}")
                assert text == f"answer {i}" and "secret" not in text
        finally:
            await proxy.close()

    async def test_plain_model_streams_event_by_event_once_known(
        self, sim: SimulatedModel, upstream: Any, tmp_path: Path
    ) -> None:
        """A model whose answers show no reasoning at all streams event by event once a few answers said so: the
        first answer text reaches the client while the model is still sending."""
        proxy = await self.default_chain_proxy(tmp_path, upstream)
        try:
            for i in range(3):  # what the model is, from its answers
                await self.text_of(proxy, f"warm-up {i}")
            sim.finish_gate = gate = asyncio.Event()
            text = await self.text_of(proxy, "the real question", gate)
            expected, _ = sim.make_content({"temperature": 0}, "the real question")
            assert text == expected
            assert sim.gate_opened == [True]  # its text reached the client before the model sent its finish
        finally:
            await proxy.close()

    async def test_a_resumed_run_streams_a_known_model_at_once(
        self, sim: SimulatedModel, upstream: Any, tmp_path: Path
    ) -> None:
        """What a run learned of a model outlives it: the next run on the same output dir streams that model's first
        answer event by event, with no warm-up."""
        proxy = await self.default_chain_proxy(tmp_path, upstream)
        for i in range(3):
            await self.text_of(proxy, f"warm-up {i}")
        await proxy.close()  # the run ends: its statistics, with what its answers showed, are written
        proxy = await self.default_chain_proxy(tmp_path, upstream)
        try:
            sim.finish_gate = gate = asyncio.Event()
            text = await self.text_of(proxy, "after the restart", gate)
            assert text == sim.make_content({"temperature": 0}, "after the restart")[0]
            assert sim.gate_opened == [True]  # its text reached the client before the model sent its finish
        finally:
            await proxy.close()

    async def test_a_template_seen_once_holds_the_model_for_good(
        self, sim: SimulatedModel, upstream: Any, tmp_path: Path
    ) -> None:
        """Decided plain after 3 plain answers, a model that then closes a template-opened block is held from then
        on: its next reasoning never reaches the client, however many plain answers came before."""
        sim.chunk_chars = 3
        proxy = await self.default_chain_proxy(tmp_path, upstream)
        try:
            for i in range(3):
                await self.text_of(proxy, f"plain {i}")
            sim.faults.append(Fault(content="first thoughts</think>\nanswer a"))
            await self.text_of(proxy, "the template shows")  # decided plain: this one is not held
            sim.faults.append(Fault(content="secret thoughts</think>\nanswer b"))
            text = await self.text_of(proxy, "held from now on")
            assert text == "answer b"
        finally:
            await proxy.close()

    async def test_answers_cut_off_do_not_decide_a_model_plain(
        self, sim: SimulatedModel, upstream: Any, tmp_path: Path
    ) -> None:
        """Answers cut off by max_tokens may be all reasoning: three of them do not decide the model plain, so its
        next template-opened answer is still held."""
        sim.chunk_chars = 3
        proxy = await self.default_chain_proxy(tmp_path, upstream)
        try:
            for i in range(3):
                sim.faults.append(Fault(content=f"thinking and thinking {i}", finish_reason="length"))
                await self.text_of(proxy, f"cut {i}")
            sim.faults.append(Fault(content="secret thoughts</think>\nanswer"))
            text = await self.text_of(proxy, "after the cut-off ones")
            assert text == "answer"
        finally:
            await proxy.close()

    async def test_a_template_in_any_earlier_run_outweighs_plain_in_another(
        self, sim: SimulatedModel, upstream: Any, tmp_path: Path
    ) -> None:
        """Earlier runs that disagree about a model (one saw a template, a later one only plain answers) leave it
        held: a resumed run never streams its reasoning."""
        stats = tmp_path / "out" / "reasoning_stats"
        stats.mkdir(parents=True)
        empty = ReasoningStats().dump()
        (stats / "run-a.json").write_bytes(orjson.dumps({**empty, "models": {"m": "template"}}))
        (stats / "run-b.json").write_bytes(orjson.dumps({**empty, "models": {"m": "plain"}}))
        sim.chunk_chars = 3
        proxy = await self.default_chain_proxy(tmp_path, upstream)
        try:
            sim.faults.append(Fault(content="secret thoughts</think>\nanswer"))
            text = await self.text_of(proxy, "resumed")
            assert text == "answer"
        finally:
            await proxy.close()
