"""streaming: a stream coalesced into one answer for a client that did not ask for one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from multidict import CIMultiDict

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import DONE, Event
from evalproxy.interceptors.streaming import StreamingInterceptor


def chunk(**delta: Any) -> dict[str, Any]:
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
        objects = [chunk(role="assistant", tool_calls=[{"index": 0, "id": "t1", "type": "function",
                                                        "function": {"name": "f", "arguments": ""}}])]
        objects += [chunk(tool_calls=[{"index": 0, "function": {"arguments": c}}]) for c in args]
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
