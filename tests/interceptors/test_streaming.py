"""streaming: a stream coalesced into one answer for a client that did not ask for one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from multidict import CIMultiDict

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import DONE, Event
from evalproxy.interceptors.streaming import StreamingInterceptor
from tests.interceptors.units import USAGE_AT_CAP, call, chat, chunk, make, stream


def delta(**delta: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


async def coalesced(run: RunContext, objects: list[dict[str, Any]]) -> Any:
    """The JSON answer the interceptor gives a non-streaming client for a stream of ``objects``."""
    async def events() -> AsyncIterator[Event]:
        for o in objects:
            yield Event.of(o)
        yield DONE

    async def call_next(ctx: RequestContext) -> ProxyResponse:
        return ProxyResponse(200, CIMultiDict({"Content-Type": "text/event-stream"}), stream=events())

    ic = StreamingInterceptor(StreamingInterceptor.Params(), run)
    out = await ic(RequestContext(method="POST", path="/v1/chat/completions", json={"messages": []}), call_next)
    assert out.stream is None
    return out.json


class TestStreamingInterceptor:
    async def test_tool_calls_come_whole(self, run: RunContext) -> None:
        """Tool-call deltas are merged by index: name kept, arguments joined (as every reader of a stream sees it)."""
        args = '{"city": "Paris", "days": 3}'
        objects = [delta(role="assistant", tool_calls=[{"index": 0, "id": "t1", "type": "function",
                                                        "function": {"name": "f", "arguments": ""}}])]
        objects += [delta(tool_calls=[{"index": 0, "function": {"arguments": c}}]) for c in args]
        message = (await coalesced(run, objects))["choices"][0]["message"]
        assert message["tool_calls"] == [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": args}}]

    async def test_text_completion_stream(self, run: RunContext) -> None:
        """A text-completion stream's texts are joined, with its last finish reason."""
        objects = [{"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": t}]} for t in "ab"]
        objects.append({"id": "t", "object": "text_completion",
                        "choices": [{"index": 0, "text": "c", "finish_reason": "length"}]})
        assert (await coalesced(run, objects))["choices"] == [{"index": 0, "text": "abc", "finish_reason": "length"}]

    async def test_empty_stream(self, run: RunContext) -> None:
        """A stream with no JSON object in it becomes an answer without choices."""
        assert await coalesced(run, []) == {"id": None, "object": "chat.completion", "created": None, "model": None,
                                            "choices": []}


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
