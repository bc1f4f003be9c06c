"""streaming: a client that did not ask for a stream gets one JSON answer (NeMo Evaluator 0.3+'s ``streaming``).

Some servers stream whatever they are asked. When the request did not say ``stream: true`` and the answer is a
stream, its events are read to the end (``[DONE]``) and coalesced into one ``chat.completion``: id, created and model
from the first event; per choice the content and the reasoning (``reasoning_content`` or ``reasoning``) joined,
tool calls merged by index (arguments joined), the last finish reason; the last usage. An event holding ``error``
becomes the answer itself, with its own status when that is a 4xx/5xx, else 502. A whole JSON answer only has
``message.content: null`` made ``""``. Text-completion streams are coalesced into ``text`` the same way.
"""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.registry import register_for_adapter


def _status_of(error: Any) -> int:
    code = error.get("status", error.get("status_code")) if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code < 600 else 502


def coalesce(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer object from a stream's event objects.

    Texts are kept in pieces and joined once at the end: time linear in the stream's length."""
    first = objects[0] if objects else {}
    text_kind = first.get("object") == "text_completion"
    out: dict[str, Any] = {"id": first.get("id"), "object": "text_completion" if text_kind else "chat.completion",
                           "created": first.get("created"), "model": first.get("model")}
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    # Where each text goes (a dict and its key) and its pieces so far.
    texts: dict[tuple[int, ...], tuple[dict[str, Any], str, list[str]]] = {}

    def add(key: tuple[int, ...], holder: dict[str, Any], name: str, text: str) -> None:
        entry = texts.get(key)
        if entry is None:
            holder.setdefault(name, "")  # its place among the keys, filled at the end
            texts[key] = (holder, name, [text])
        else:
            entry[2].append(text)

    for obj in objects:
        if obj.get("usage"):
            out["usage"] = obj["usage"]
        for ch in obj.get("choices") or ():
            if not isinstance(ch, dict):
                continue
            i = ch.get("index", 0)
            delta = ch.get("delta")
            if text_kind or not isinstance(delta, dict):
                c = choices.setdefault(i, {"index": i, "text": "", "finish_reason": None})
                if isinstance(ch.get("text"), str):
                    add((i, 0), c, "text", ch["text"])
            else:
                c = choices.setdefault(i, {"index": i, "message": {"role": "assistant", "content": ""},
                                           "finish_reason": None})
                msg = c["message"]
                if isinstance(delta.get("content"), str):
                    add((i, 1), msg, "content", delta["content"])
                thought = delta.get("reasoning_content", delta.get("reasoning"))
                if isinstance(thought, str):
                    add((i, 2), msg, "reasoning_content", thought)
                for tc in delta.get("tool_calls") or ():
                    if not isinstance(tc, dict):
                        continue
                    k = tc.get("index", 0)
                    slot = calls.setdefault(i, {}).setdefault(k, {
                        "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                    if tc.get("id"):
                        slot["id"] = tc["id"]
                    if tc.get("type"):
                        slot["type"] = tc["type"]
                    given = tc.get("function")
                    fn: dict[str, Any] = given if isinstance(given, dict) else {}
                    if isinstance(fn.get("name"), str):
                        add((i, 3, k), slot["function"], "name", fn["name"])
                    if isinstance(fn.get("arguments"), str):
                        add((i, 4, k), slot["function"], "arguments", fn["arguments"])
            if ch.get("finish_reason"):
                c["finish_reason"] = ch["finish_reason"]
    for holder, name, pieces in texts.values():
        holder[name] = "".join(pieces)
    for i, by_index in calls.items():
        choices[i]["message"]["tool_calls"] = [by_index[k] for k in sorted(by_index)]
    out["choices"] = [choices[i] for i in sorted(choices)]
    return out


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
        return ProxyResponse.from_json(coalesce(objects), status=resp.status, headers=_headers(resp))


def _headers(resp: ProxyResponse) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in resp.headers.items()
                       if k.lower() not in ("content-type", "content-length", "transfer-encoding"))

