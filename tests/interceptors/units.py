"""Calling one interceptor directly, as its unit tests do: a context in, a fake ``call_next``, answers made by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from multidict import CIMultiDict

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import DONE_EVENT, Event, make_event


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


USAGE_AT_CAP = {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}
