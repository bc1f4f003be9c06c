"""reasoning_replay: give the model back its own reasoning on later turns (NeMo Evaluator 0.3+'s).

Agent harnesses often drop ``reasoning_content`` from the assistant messages they send back, and some models reason
worse without it. When an answer carries reasoning (``reasoning_content`` or ``reasoning``), it is remembered under
the session (``X-Session-Id`` header, else none) and each tool call id, or, with no tool call ids, a hash of the
first 256 characters of the answer's text. When a later request holds that assistant message, the reasoning is put
back: ``think_tags`` prefixes the content with ``<think>R</think>`` (unless it already opens with the tag),
``native`` sets ``reasoning_content`` and ``reasoning`` (unless set), ``both`` does both. The memory is an LRU of
``cache_max_entries``. List ``caching`` after it, so the cache key covers the request as sent.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any, Literal

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.answers import AnswerHandler, handle
from evalproxy.adapter.flow.request import SESSION_HEADER, RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.shape import assemble_stream, content_text
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.reasoning_replay")

HASHED_CHARS = 256


def message_keys(msg: dict[str, Any], session: str) -> list[str]:
    """Where an assistant message's reasoning is remembered: its tool call ids, else a hash of its text."""
    ids = [tc["id"] for tc in msg.get("tool_calls") or () if isinstance(tc, dict) and isinstance(tc.get("id"), str)
           and tc["id"]]
    if ids:
        return [f"{session}|c:{i}" for i in ids]
    head = content_text(msg.get("content"))[:HASHED_CHARS]
    if not head.strip():
        return []
    return [f"{session}|h:{hashlib.sha256(head.encode()).hexdigest()[:16]}"]


def _reasoning(msg: dict[str, Any]) -> str | None:
    r = msg.get("reasoning_content") or msg.get("reasoning")
    return r if isinstance(r, str) and r.strip() else None


class ReasoningReplayParams(Params):
    mode: Literal["think_tags", "native", "both"] = "think_tags"
    tag_open: str = Field(default="<think>", min_length=1)
    tag_close: str = Field(default="</think>", min_length=1)
    cache_max_entries: int = Field(default=10_000, ge=1)
    log_misses: bool = False


@register_for_adapter(name="reasoning_replay", description="Re-injects a model's earlier reasoning into its turns.")
class ReasoningReplayInterceptor(BaseInterceptor[ReasoningReplayParams]):
    modifies_request = True
    best_effort = True

    Params = ReasoningReplayParams

    def __init__(self, params: ReasoningReplayParams, run: RunContext) -> None:
        super().__init__(params, run)
        self.memory: OrderedDict[str, str] = OrderedDict()

    def remember(self, key: str, reasoning: str) -> None:
        self.memory[key] = reasoning
        self.memory.move_to_end(key)
        while len(self.memory) > self.params.cache_max_entries:
            self.memory.popitem(last=False)

    def recall(self, key: str) -> str | None:
        found = self.memory.get(key)
        if found is not None:
            self.memory.move_to_end(key)
        return found

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        session = ctx.headers.get(SESSION_HEADER, "")
        body: Any = ctx.json
        if isinstance(body, dict) and isinstance(body.get("messages"), list) and self.memory:
            messages = self.restored(body["messages"], session, ctx.request_id)
            if messages is not None:
                ctx.set_json({**body, "messages": messages})
        resp = await call_next(ctx)
        if not resp.ok:
            return resp
        return await handle(resp, _Remember(self, session))

    def restored(self, messages: list[Any], session: str, request_id: int) -> list[Any] | None:
        """The messages with remembered reasoning put back (new objects only for the messages that change), or None
        when none changes."""
        p = self.params
        hits = misses = 0
        out = [*messages]
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") != "assistant":
                continue
            has_native = _reasoning(m) is not None
            if p.mode == "native" and has_native:
                continue
            found = next((r for r in map(self.recall, message_keys(m, session)) if r), None)
            if found is None:
                misses += bool(m.get("tool_calls") or content_text(m.get("content")))
                continue
            changed = False
            m = dict(m)
            if p.mode in ("native", "both") and not has_native:
                m["reasoning_content"] = m["reasoning"] = found
                changed = True
            if p.mode in ("think_tags", "both") and not content_text(m.get("content")).lstrip().startswith(p.tag_open):
                tag = f"{p.tag_open}{found}{p.tag_close}\n"
                content = m.get("content")
                m["content"] = ([{"type": "text", "text": tag}, *content] if isinstance(content, list)
                                else tag + content if isinstance(content, str) else tag)
                changed = True
            if changed:
                out[i] = m
            hits += changed
        if p.log_misses and misses:
            log.info("reasoning_replay: request #%s: %d assistant message(s) without remembered reasoning",
                     request_id, misses)
        if hits:
            log.debug("reasoning_replay: request #%s: reasoning put back into %d message(s)", request_id, hits)
        return out if hits else None


class _Remember(AnswerHandler):
    keep_events = True

    def __init__(self, ic: ReasoningReplayInterceptor, session: str) -> None:
        self.ic, self.session = ic, session
        self.whole: dict[str, Any] | None = None
        self.streamed_reasoning: dict[int, str] = {}  # a stream's ``reasoning`` deltas, which assembly ignores

    def on_object(self, obj: dict[str, Any], whole: bool) -> bool:
        if whole:
            self.whole = obj
            return False
        for ch in obj.get("choices") or ():
            delta = ch.get("delta") if isinstance(ch, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("reasoning"), str):
                i = ch.get("index", 0)
                self.streamed_reasoning[i] = self.streamed_reasoning.get(i, "") + delta["reasoning"]
        return False

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        answer = self.whole if events is None else assemble_stream(events)
        for ch in (answer or {}).get("choices") or ():
            msg = ch.get("message") if isinstance(ch, dict) else None
            if isinstance(msg, dict):
                if ch.get("index", 0) in self.streamed_reasoning and not msg.get("reasoning_content"):
                    msg["reasoning"] = self.streamed_reasoning[ch.get("index", 0)]
                reasoning = _reasoning(msg)
                if reasoning is not None:
                    for key in message_keys(msg, self.session):
                        self.ic.remember(key, reasoning)
        return []
