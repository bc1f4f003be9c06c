"""reasoning: stripping whole answers and streams split anywhere, unfinished blocks, statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from evalproxy.adapter.context import ProxyResponse, RequestContext, RunContext
from evalproxy.adapter.sse import DONE_EVENT, event_json, make_event
from evalproxy.adapter.thinking import split_reasoning
from evalproxy.interceptors.reasoning import ReasoningInterceptor, StreamSplitter
from evalproxy.simulator import SimulatedModel

THINK = "<think>let me add two and two</think>\n\nThe answer is 4."


class TestSplit:
    @pytest.mark.parametrize(("content", "answer", "reasoning", "finished"), [
        (THINK, "The answer is 4.", "let me add two and two", True),
        ("no start token</think> 4", "4", "no start token", True),
        ("  <think>x</think>y", "y", "x", True),
        ("plain answer", "plain answer", None, False),
        ("", "", None, False),
    ])
    def test_whole_content(self, content: str, answer: str, reasoning: str | None, finished: bool) -> None:
        """Reasoning up to the end token is taken out; the start token is optional."""
        s = split_reasoning(content, "<think>", "</think>")
        assert (s.answer, s.reasoning, s.finished) == (answer, reasoning, finished)

    @pytest.mark.parametrize(("include", "answer"), [(True, "<think>still thinking"), (False, "")])
    def test_unfinished(self, include: bool, answer: str) -> None:
        """An unfinished block is kept as it is, or blanked when include_if_not_finished is off."""
        s = split_reasoning("<think>still thinking", "<think>", "</think>", include)
        assert (s.answer, s.started, s.finished) == (answer, True, False)

    def test_never_blanks_an_answer_without_reasoning(self) -> None:
        """Without any token the answer is untouched even when unfinished blocks are dropped."""
        assert split_reasoning("just 4", "<think>", "</think>", False).answer == "just 4"


def stream_of(pieces: list[str]) -> str:
    s = StreamSplitter("<think>", "</think>", True)
    return "".join(s.feed(p)[0] for p in pieces) + s.close()


class TestStreamSplitter:
    @pytest.mark.parametrize("cut", range(len(THINK) + 1))
    def test_any_split_point(self, cut: int) -> None:
        """Wherever the text is cut in two events, the client gets exactly the stripped answer."""
        assert stream_of([THINK[:cut], THINK[cut:]]) == "The answer is 4."

    def test_character_by_character(self) -> None:
        """One character per event still strips exactly."""
        assert stream_of(list(THINK)) == "The answer is 4."

    def test_no_reasoning_is_passed_at_once(self) -> None:
        """An answer without reasoning is emitted as it arrives, not held back."""
        s = StreamSplitter("<think>", "</think>", True)
        assert s.feed("Hello") == ("Hello", "")
        assert s.feed(" world") == (" world", "")

    def test_unfinished_stream_is_given_back_when_included(self) -> None:
        """A stream that ends inside the block gives its text back on close (include_if_not_finished)."""
        assert stream_of(["<think>never ", "ends"]) == "<think>never ends"

    def test_start_none_with_no_end_token_is_not_blanked(self) -> None:
        """With start_reasoning_token null, a stream without an end token is an answer, not reasoning."""
        s = StreamSplitter(None, "</think>", False)
        out = s.feed("just the answer")[0] + s.close()
        assert out == "just the answer"


def chat_chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}


async def run_stream(ic: ReasoningInterceptor, pieces: list[str]) -> tuple[str, list[bytes]]:
    events = [make_event(chat_chunk(p)) for p in pieces] + [make_event(chat_chunk(None, "stop")), DONE_EVENT]

    async def gen() -> Any:
        for e in events:
            yield e

    async def call_next(ctx: RequestContext) -> ProxyResponse:
        return ProxyResponse(200, stream=gen())

    resp = await ic(RequestContext(method="POST", path="/v1/chat/completions", json={}), call_next)
    assert resp.stream is not None
    out = [e async for e in resp.stream]
    text = ""
    for e in out:
        obj = event_json(e)
        if obj:
            for ch in obj["choices"]:
                text += ch["delta"].get("content") or ""
    return text, out


class TestInterceptor:
    async def test_stream_events_split_tokens(self, run: RunContext) -> None:
        """Tokens split across SSE events are stripped; the stream keeps its end and [DONE]."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(), run)
        text, out = await run_stream(ic, ["<thi", "nk>abc</th", "ink>\n", "Answer", " here"])
        assert text == "Answer here"
        assert out[-1] == DONE_EVENT

    async def test_untouched_events_are_byte_identical(self, run: RunContext) -> None:
        """A stream without reasoning leaves every event byte for byte as it was."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(), run)
        pieces = ["Plain ", "answer."]
        _, out = await run_stream(ic, pieces)
        assert out == [make_event(chat_chunk(p)) for p in pieces] + [make_event(chat_chunk(None, "stop")),
                                                                      DONE_EVENT]

    async def test_migrate_moves_reasoning(self, run: RunContext) -> None:
        """migrate_reasoning_content puts the stripped text in reasoning_content."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(migrate_reasoning_content=True), run)

        async def call_next(ctx: RequestContext) -> ProxyResponse:
            return ProxyResponse.from_json({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                                  "content": THINK}}]})

        resp = await ic(RequestContext(method="POST", path="/v1/chat/completions", json={}), call_next)
        msg = resp.json["choices"][0]["message"]
        assert msg == {"role": "assistant", "content": "The answer is 4.",
                       "reasoning_content": "let me add two and two"}

    async def test_existing_reasoning_content_is_untouched(self, run: RunContext) -> None:
        """A server-provided reasoning_content stays as it is, and counts as reasoning."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(), run)
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "4",
                                                     "reasoning_content": "two plus two"}}]}

        async def call_next(ctx: RequestContext) -> ProxyResponse:
            return ProxyResponse.from_json(body)

        resp = await ic(RequestContext(method="POST", path="/v1/chat/completions", json={}), call_next)
        assert resp.json["choices"][0]["message"]["reasoning_content"] == "two plus two"
        assert ic.stats.section()["responses_with_reasoning"] == 1

    async def test_statistics_match_a_hand_count(self, run: RunContext) -> None:
        """Counts and word sums equal a hand count over three answers."""
        ic = ReasoningInterceptor(ReasoningInterceptor.Params(), run)
        contents = [THINK, "<think>unfinished thought", "no reasoning here"]
        for c in contents:
            async def call_next(ctx: RequestContext, c: str = c) -> ProxyResponse:
                return ProxyResponse.from_json({"choices": [{"index": 0, "message": {"content": c}}],
                                                "usage": {"completion_tokens": 10,
                                                          "completion_tokens_details": {"reasoning_tokens": 6}}})
            await ic(RequestContext(method="POST", path="/v1/chat/completions", json={}), call_next)
        s = ic.stats.section()
        assert (s["total_responses"], s["responses_with_reasoning"], s["reasoning_finished_count"],
                s["reasoning_unfinished_count"]) == (3, 2, 1, 1)
        assert s["reasoning_finished_ratio"] == 0.5
        assert s["total_reasoning_words"] == len("let me add two and two".split()) + len("unfinished thought".split())
        assert s["total_original_content_words"] == sum(len(c.split()) for c in contents)
        assert s["total_updated_content_words"] == 4 + 2 + 3
        assert s["total_reasoning_tokens"] == 18 and s["total_updated_content_tokens"] == 12


class TestThroughTheProxy:
    @pytest.mark.parametrize("stream", [False, True])
    async def test_client_never_sees_reasoning(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path,
                                               stream: bool) -> None:
        """JSON and streamed answers from a thinking model reach the client without reasoning; stats are written."""
        sim.reasoning = True
        sim.chunk_chars = 3  # tokens get split across events
        proxy = await make_proxy({"interceptors": ["reasoning", "caching", "endpoint"],
                                  "generate_html_report": False})
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 0, "stream": stream}
        expected_full, thought = sim.make_content({"temperature": 0}, "q")
        expected = expected_full.split("</think>", 1)[1]
        for _ in range(2):  # the second answer is a cache replay: stripped again
            resp = await proxy.post("/v1/chat/completions", json=body)
            raw = await resp.read()
            if stream:
                text = "".join((orjson.loads(e[6:])["choices"][0]["delta"].get("content") or "")
                               for e in raw.split(b"\n\n") if e.startswith(b"data: {"))
            else:
                text = orjson.loads(raw)["choices"][0]["message"]["content"]
            assert text == expected
            assert "<think>" not in text and thought is not None and thought not in text
        await proxy.close()
        metrics = orjson.loads((tmp_path / "out" / "eval_factory_metrics.json").read_bytes())
        assert metrics["reasoning"]["reasoning_finished_count"] == 2
        assert metrics["reasoning"]["total_reasoning_words"] == 2 * len(thought.split())
