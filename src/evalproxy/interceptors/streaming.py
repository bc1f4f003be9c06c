"""streaming: a client that did not ask for a stream gets one JSON answer (NeMo Evaluator 0.3+'s ``streaming``).

Some servers stream whatever they are asked. When the request did not say ``stream: true`` and the answer is a
stream, its events are read to the end (``[DONE]``) and coalesced into one ``chat.completion`` by
:func:`~evalproxy.adapter.flow.shape.assemble_stream`, as every reader of a stream sees it: id, created and model
from the first event; per choice the content and the reasoning (``reasoning_content`` or ``reasoning``) joined,
tool calls merged by index (arguments joined, the name kept), the last finish reason; the last usage. An event
holding ``error`` becomes the answer itself, with its own status when that is a 4xx/5xx, else 502. A whole JSON
answer only has ``message.content: null`` made ``""``. Text-completion streams are coalesced into ``text`` the same way.
"""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.shape import assemble_stream, empty_answer
from evalproxy.adapter.registry import register_for_adapter


def _status_of(error: Any) -> int:
    code = error.get("status", error.get("status_code")) if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code < 600 else 502


class StreamingParams(Params):
    pass


@register_for_adapter(name="streaming", description="Coalesces a stream into one JSON answer for non-stream clients.")
class StreamingInterceptor(BaseInterceptor[StreamingParams]):
    Params = StreamingParams

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        body: Any = ctx.json
        wants_stream = isinstance(body, dict) and body.get("stream") is True
        if resp.stream is None:
            resp.null_content_to_empty()
            return resp
        if wants_stream:
            return resp
        objects: list[dict[str, Any]] = []
        async for event in resp.stream:
            if event.is_done:
                break
            obj = event.json
            if not isinstance(obj, dict):
                continue
            if "error" in obj:
                status = resp.status if resp.status >= 400 else _status_of(obj["error"])
                return ProxyResponse.from_json(obj, status=status, headers=_headers(resp))
            objects.append(obj)
        answer = assemble_stream(objects) or empty_answer()
        return ProxyResponse.from_json(answer, status=resp.status, headers=_headers(resp))


def _headers(resp: ProxyResponse) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in resp.headers.items()
                       if k.lower() not in ("content-type", "content-length", "transfer-encoding"))

