"""NeMo Evaluator 0.3+'s interceptors under our config format: drop_params, consolidate_system, modify_tools,
turn_counter, finish_reason, log_tokens, streaming, reasoning_replay, http_pairs_dump."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import DONE_EVENT, Event, make_event
from evalproxy.interceptors.consolidate_system import ConsolidateSystemInterceptor
from evalproxy.interceptors.drop_params import DropParamsInterceptor
from evalproxy.interceptors.finish_reason import FinishReasonInterceptor
from evalproxy.interceptors.log_tokens import LogTokensInterceptor
from evalproxy.interceptors.modify_tools import ModifyToolsInterceptor
from evalproxy.interceptors.reasoning_replay import ReasoningReplayInterceptor
from evalproxy.interceptors.streaming import StreamingInterceptor
from evalproxy.interceptors.turn_counter import SessionBudgetExhausted, TurnCounterInterceptor
from evalproxy.simulator import SimulatedModel


def make(cls: Any, run: RunContext, **params: Any) -> Any:
    return cls(cls.Params(**params), run)


async def call(ic: Any, body: dict[str, Any], answer: ProxyResponse | None = None,
               headers: dict[str, str] | None = None) -> tuple[Any, ProxyResponse]:
    """(the body ``ic`` sent on, the answer it returned) for ``body`` and an upstream ``answer``."""
    seen: dict[str, Any] = {}

    async def call_next(ctx: RequestContext) -> ProxyResponse:
        seen["body"] = ctx.json
        return answer if answer is not None else ProxyResponse.from_json({})

    ctx = RequestContext(method="POST", path="/v1/chat/completions", json=body, headers=CIMultiDict(headers or {}))
    out = await ic(ctx, call_next)
    return seen.get("body"), out


def chat(content: Any, finish: str = "stop", usage: dict[str, Any] | None = None, **msg: Any) -> ProxyResponse:
    body: dict[str, Any] = {"id": "x", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content, **msg}, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return ProxyResponse.from_json(body)


def stream(*objs: dict[str, Any]) -> ProxyResponse:
    async def gen() -> AsyncIterator[Event]:
        for o in objs:
            yield Event(make_event(o))
        yield Event(DONE_EVENT)

    return ProxyResponse(200, CIMultiDict({"Content-Type": "text/event-stream"}), stream=gen())


def chunk(index: int = 0, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


class TestDropParams:
    async def test_top_level_only(self, run: RunContext) -> None:
        """The named keys go from the top level; the same name deeper stays (as NeMo)."""
        sent, _ = await call(make(DropParamsInterceptor, run, params=["logprobs", "top_k"]),
                             {"logprobs": True, "top_k": 3, "messages": [{"role": "user", "top_k": 1}]})
        assert sent == {"messages": [{"role": "user", "top_k": 1}]}

    def test_params_required(self) -> None:
        """params is required, as in NeMo."""
        with pytest.raises(ValueError, match="params"):
            DropParamsInterceptor.Params()


class TestConsolidateSystem:
    @pytest.mark.parametrize("messages", [
        [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        [{"role": "user", "content": "q"}],
    ], ids=["single-first", "none"])
    async def test_unchanged(self, run: RunContext, messages: list[Any]) -> None:
        """One system message first, or none: the request is left alone."""
        sent, _ = await call(make(ConsolidateSystemInterceptor, run), {"messages": messages})
        assert sent == {"messages": messages}

    async def test_merged_first(self, run: RunContext) -> None:
        """Several system messages (list parts too, empty ones dropped) become one at index 0, joined by the
        separator; the others keep their order."""
        sent, _ = await call(make(ConsolidateSystemInterceptor, run), {"messages": [
            {"role": "user", "content": "q"}, {"role": "system", "content": "a"},
            {"role": "system", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
            {"role": "system", "content": ""}, {"role": "assistant", "content": "r"}]})
        assert sent["messages"] == [{"role": "system", "content": "a\n\nb\nc"}, {"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "r"}]


class TestModifyTools:
    async def test_strip_and_add(self, run: RunContext) -> None:
        """Stripped properties leave properties and required; added ones fill gaps and never overwrite."""
        props = {"a": {"type": "string"}, "b": {"type": "integer"}}
        tool = {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": props, "required": ["a", "b"]}}}
        ic = make(ModifyToolsInterceptor, run, strip_properties=["b"],
                  add_properties={"a": {"type": "number"}, "c": {"type": "boolean"}})
        sent, _ = await call(ic, {"tools": [tool, {"type": "other"}]})
        params = sent["tools"][0]["function"]["parameters"]
        assert params["properties"] == {"a": {"type": "string"}, "c": {"type": "boolean"}}
        assert params["required"] == ["a"] and sent["tools"][1] == {"type": "other"}
        assert tool["function"]["parameters"]["required"] == ["a", "b"]  # the client's body is not changed


class TestTurnCounter:
    async def test_threshold_notices_and_budget(self, run: RunContext) -> None:
        """With max_turns 10: turns 8-9 get a notice as a last system message, 10 an urgent one, 11 is a 429."""
        ic = make(TurnCounterInterceptor, run, max_turns=10)
        body = {"messages": [{"role": "user", "content": "task A"}]}
        sent = [(await call(ic, body))[0] for _ in range(10)]
        assert sent[6] == body
        assert sent[7]["messages"][-1]["role"] == "system" and "Turn 8 of 10" in sent[7]["messages"][-1]["content"]
        assert "URGENT" in sent[9]["messages"][-1]["content"]
        with pytest.raises(SessionBudgetExhausted) as info:
            await call(ic, body)
        assert info.value.status == 429 and info.value.code == "session_budget_exhausted"
        other, _ = await call(ic, {"messages": [{"role": "user", "content": "task B"}]})
        assert other == {"messages": [{"role": "user", "content": "task B"}]}  # another session, its own count

    async def test_content_parts_without_string_text_are_skipped(self, run: RunContext) -> None:
        """A content part whose text is null (an image part, a client's placeholder) does not fail the request: the
        session is told by the parts that have text."""
        ic = make(TurnCounterInterceptor, run, max_turns=10)
        parts = [{"type": "image_url", "text": None}, {"type": "text", "text": "task A"}]
        sent, _ = await call(ic, {"messages": [{"role": "user", "content": parts}]})
        assert sent["messages"][0]["content"] == parts

    async def test_periodic_in_user_message(self, run: RunContext) -> None:
        """periodic + user_message: every interval turns the last user text gets the reminder after a blank line."""
        ic = make(TurnCounterInterceptor, run, max_turns=100, trigger="periodic", interval=2,
                  position="user_message")
        body = {"messages": [{"role": "user", "content": "go"}]}
        first, _ = await call(ic, body, headers={"X-Session-Id": "s1"})
        second, _ = await call(ic, body, headers={"X-Session-Id": "s1"})
        assert first == body
        assert second["messages"][0]["content"] == "go\n\nENVIRONMENT REMINDER: 98 turns left to complete the task."

    async def test_over_budget_is_a_429_through_the_proxy(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """The client gets an OpenAI-shaped 429 with code session_budget_exhausted; the model is not called."""
        proxy = await make_proxy({"interceptors": [{"name": "turn_counter", "config": {"max_turns": 1}}, "endpoint"]})
        body = {"messages": [{"role": "user", "content": "task"}]}
        assert (await proxy.post("/v1/chat/completions", json=body)).status == 200
        r = await proxy.post("/v1/chat/completions", json=body)
        assert r.status == 429 and (await r.json())["error"]["code"] == "session_budget_exhausted"
        assert len(sim.log) == 1

    async def test_without_budget_only_logs(self, run: RunContext) -> None:
        """No max_turns: requests pass unchanged however many turns."""
        ic = make(TurnCounterInterceptor, run)
        body = {"messages": [{"role": "user", "content": "x"}]}
        for _ in range(5):
            assert (await call(ic, body))[0] == body


USAGE_AT_CAP = {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}


class TestFinishReason:
    @pytest.mark.parametrize(("body", "usage", "expected"), [
        ({"max_tokens": 16}, USAGE_AT_CAP, "length"),
        ({"max_completion_tokens": 16, "max_tokens": 99}, USAGE_AT_CAP, "length"),
        ({"max_tokens": 17}, USAGE_AT_CAP, "stop"),
        ({}, USAGE_AT_CAP, "stop"),
        ({"max_tokens": 16}, {"completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 16}},
         "length"),
    ], ids=["at-cap", "completion-cap-first", "under-cap", "no-cap", "reasoning-tokens"])
    async def test_relabel(self, run: RunContext, body: dict[str, Any], usage: dict[str, Any],
                           expected: str) -> None:
        """stop becomes length when the generated tokens reach the request's cap."""
        _, out = await call(make(FinishReasonInterceptor, run), body, chat("", usage=usage))
        assert out.json["choices"][0]["finish_reason"] == expected

    async def test_empty_answer_is_logged(self, run: RunContext, caplog: pytest.LogCaptureFixture) -> None:
        """An answer without text or tool calls is logged as empty."""
        await call(make(FinishReasonInterceptor, run), {}, chat("  "))
        assert "empty answer" in caplog.text


class TestLogTokens:
    async def test_logs_usage(self, run: RunContext, caplog: pytest.LogCaptureFixture) -> None:
        """One line with prompt, completion and total tokens."""
        caplog.set_level(logging.INFO, logger="evalproxy.log_tokens")
        await call(make(LogTokensInterceptor, run), {}, chat("a", usage=USAGE_AT_CAP))
        assert "prompt=3 completion=16 total=19" in caplog.text


class TestStreaming:
    async def test_stream_coalesced_for_a_non_streaming_client(self, run: RunContext) -> None:
        """Content and reasoning joined, tool calls merged by index, last finish reason, last usage."""
        upstream = stream(
            chunk(role="assistant", content=""), chunk(reasoning="th"), chunk(reasoning_content="ink"),
            chunk(content="Hel"), chunk(content="lo"),
            chunk(tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "add", "arguments": "{\"a\""}}]),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": ": 1}"}}]),
            chunk(finish="tool_calls"),
            {"id": "c1", "choices": [], "usage": USAGE_AT_CAP})
        _, out = await call(make(StreamingInterceptor, run), {"messages": []}, upstream)
        assert out.stream is None and out.headers["Content-Type"] == "application/json"
        assert out.json == {"id": "c1", "object": "chat.completion", "created": 5, "model": "m", "usage": USAGE_AT_CAP,
                            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                                "role": "assistant", "content": "Hello", "reasoning_content": "think",
                                "tool_calls": [{"id": "call_1", "type": "function",
                                                "function": {"name": "add", "arguments": "{\"a\": 1}"}}]}}]}

    async def test_streaming_client_gets_the_stream(self, run: RunContext) -> None:
        """A client that asked for a stream gets it unchanged."""
        _, out = await call(make(StreamingInterceptor, run), {"stream": True}, stream(chunk(content="a")))
        assert out.stream is not None

    @pytest.mark.parametrize(("error", "status"), [({"message": "bad", "status": 400}, 400), ({"message": "x"}, 502)])
    async def test_error_event(self, run: RunContext, error: dict[str, Any], status: int) -> None:
        """An error event is the answer, with its own 4xx/5xx status or 502."""
        _, out = await call(make(StreamingInterceptor, run), {}, stream(chunk(content="a"), {"error": error}))
        assert out.status == status and out.json == {"error": error}

    async def test_null_content(self, run: RunContext) -> None:
        """A whole answer's null content becomes ""."""
        _, out = await call(make(StreamingInterceptor, run), {}, chat(None))
        assert out.json["choices"][0]["message"]["content"] == ""


class TestReasoningReplay:
    async def test_think_tags_by_content_hash(self, run: RunContext) -> None:
        """The answer's reasoning comes back as <think>R</think> before the same assistant text on the next turn."""
        ic = make(ReasoningReplayInterceptor, run)
        await call(ic, {"messages": []}, chat("The answer is 4.", reasoning_content="2+2"))
        sent, _ = await call(ic, {"messages": [{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "The answer is 4."}]})
        assert sent["messages"][1]["content"] == "<think>2+2</think>\nThe answer is 4."

    async def test_native_by_tool_call_id_and_session(self, run: RunContext) -> None:
        """native mode sets reasoning_content and reasoning, keyed by tool call id within the session."""
        ic = make(ReasoningReplayInterceptor, run, mode="native")
        call_msg = {"tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
        await call(ic, {}, chat(None, reasoning="plan", **call_msg), headers={"X-Session-Id": "s"})
        later = {"messages": [{"role": "assistant", "content": None, **call_msg}]}
        sent, _ = await call(ic, later, headers={"X-Session-Id": "s"})
        assert sent["messages"][0]["reasoning_content"] == "plan" == sent["messages"][0]["reasoning"]
        other, _ = await call(ic, later, headers={"X-Session-Id": "t"})
        assert other == later

    async def test_streamed_reasoning_is_remembered(self, run: RunContext) -> None:
        """A streamed answer's reasoning (reasoning or reasoning_content deltas) is remembered once it completes."""
        ic = make(ReasoningReplayInterceptor, run)
        _, out = await call(ic, {"stream": True}, stream(chunk(role="assistant", content=""), chunk(reasoning="abc"),
                                                         chunk(content="Final."), chunk(finish="stop")))
        assert out.stream is not None
        async for _ in out.stream:
            pass
        sent, _ = await call(ic, {"messages": [{"role": "assistant", "content": "Final."}]})
        assert sent["messages"][0]["content"] == "<think>abc</think>\nFinal."

    async def test_lru_bound(self, run: RunContext) -> None:
        """At most cache_max_entries reasonings are remembered."""
        ic = make(ReasoningReplayInterceptor, run, cache_max_entries=2)
        for i in range(3):
            await call(ic, {}, chat(f"answer {i}", reasoning_content=f"r{i}"))
        assert len(ic.memory) == 2


class TestHttpPairsDump:
    async def test_first_n_and_failures(self, make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
        """The first first_n pairs and every non-200 one are kept; metrics count every status; keys are redacted."""
        from evalproxy.simulator import Fault

        dump = tmp_path / "pairs.json"
        proxy = await make_proxy({"interceptors": [
            {"name": "http_pairs_dump", "config": {"dump_path": str(dump), "first_n": 1}}, "endpoint"]},
            max_retries=0, retry_on_status=[])
        for i in range(3):
            if i == 2:
                sim.script(Fault(status=500))
            await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}]},
                             headers={"Authorization": "Bearer sk-secret-dump"})
        await proxy.close()
        data = orjson.loads(dump.read_bytes())
        assert data["metrics"] == {"200": 2, "500": 1}
        assert [p["response"]["status"] for p in data["pairs"]] == [200, 500]
        assert data["pairs"][0]["request"]["body"]["messages"][0]["content"] == "q0"
        assert "sk-secret-dump" not in dump.read_text()
