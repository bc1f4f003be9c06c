"""streaming: a stream coalesced into one answer for a client that did not ask for one."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.streaming import StreamingInterceptor, coalesce
from tests.interceptors.units import USAGE_AT_CAP, call, chat, chunk, make, stream


class TestCoalesce:
    # 80 000 events of 100 characters: joined once, a fraction of a second; appended to a growing string, a minute.
    @pytest.mark.timeout(10)  # a hang guard, not a timing assertion
    def test_long_stream_is_coalesced_in_linear_time(self) -> None:
        """Content, reasoning and tool-call arguments of 80 000 events are joined exactly."""
        piece = "abcdefghij" * 10
        call = {"index": 0, "id": "t1", "type": "function", "function": {"name": "f", "arguments": piece}}
        objects = [chunk(role="assistant", content="", tool_calls=[{**call, "function": {"name": "f"}}])]
        objects += [chunk(content=piece, reasoning=piece,
                          tool_calls=[{"index": 0, "function": {"arguments": piece}}]) for _ in range(80_000)]
        message = coalesce(objects)["choices"][0]["message"]
        assert message["content"] == piece * 80_000 and message["reasoning_content"] == piece * 80_000
        assert message["tool_calls"] == [{"id": "t1", "type": "function",
                                          "function": {"name": "f", "arguments": piece * 80_000}}]

    def test_text_completion_stream(self) -> None:
        """A text-completion stream's texts are joined, with its last finish reason."""
        objects = [{"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": t}]} for t in "ab"]
        objects.append({"id": "t", "object": "text_completion",
                        "choices": [{"index": 0, "text": "c", "finish_reason": "length"}]})
        assert coalesce(objects)["choices"] == [{"index": 0, "text": "abc", "finish_reason": "length"}]


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
