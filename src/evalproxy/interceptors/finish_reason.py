"""finish_reason: ``stop`` becomes ``length`` when the answer used its whole token budget (NeMo 0.3+'s).

Some servers report ``finish_reason: "stop"`` for an answer cut off by ``max_tokens`` (a reasoning model that spent
the budget thinking, for instance), which hides a truncated answer from the harness. The request's cap
(``max_completion_tokens``, else ``max_tokens``) is compared with each choice's generated tokens (the larger of
``completion_tokens`` and ``completion_tokens_details.reasoning_tokens``, from the choice's own usage, or the
answer's when it has one choice); at or over the cap, ``stop`` is relabelled ``length`` with a warning. Empty
answers (no text, no tool calls) are logged. Token counts are never changed. Whole answers only: a stream's finish
reason has gone to the client before its usage arrives, so streams pass unchanged (NeMo skips them too).
"""

from __future__ import annotations

import logging
from typing import Any

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.answers import AnswerHandler, handle
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse, reasoning_tokens
from evalproxy.adapter.flow.shape import content_text
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.finish_reason")


def token_cap(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    for key in ("max_completion_tokens", "max_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def generated_tokens(usage: Any) -> int | None:
    if not isinstance(usage, dict):
        return None
    counts = [v for v in (usage.get("completion_tokens"), reasoning_tokens(usage))
              if isinstance(v, int) and not isinstance(v, bool)]
    return max(counts) if counts else None


def _empty(choice: dict[str, Any]) -> bool:
    msg = choice.get("message")
    if isinstance(msg, dict):
        if msg.get("tool_calls"):
            return False
        content = msg.get("content")
    else:
        content = choice.get("text")
    return not content_text(content).strip()


class FinishReasonParams(Params):
    pass


@register_for_adapter(name="finish_reason", description="Relabels stop as length when the token cap was reached.")
class FinishReasonInterceptor(BaseInterceptor[FinishReasonParams]):
    best_effort = True

    Params = FinishReasonParams

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        cap = token_cap(ctx.json)
        resp = await call_next(ctx)
        if not resp.ok or resp.stream is not None:
            return resp
        return await handle(resp, _Relabel(cap, ctx.request_id))


class _Relabel(AnswerHandler):
    def __init__(self, cap: int | None, request_id: int) -> None:
        self.cap, self.request_id = cap, request_id

    def on_object(self, obj: dict[str, Any], whole: bool) -> bool:
        choices = obj.get("choices")
        if not whole or not isinstance(choices, list):
            return False
        changed = False
        answer_tokens = generated_tokens(obj.get("usage"))
        for ch in choices:
            if not isinstance(ch, dict):
                continue
            n = generated_tokens(ch.get("usage"))
            if n is None and len(choices) == 1:
                n = answer_tokens
            if self.cap is not None and n is not None and n >= self.cap and ch.get("finish_reason") == "stop":
                ch["finish_reason"] = "length"
                changed = True
                log.warning("finish_reason: request #%s: stop relabelled length (%s generated tokens, cap %s)",
                            self.request_id, n, self.cap)
            if _empty(ch):
                log.warning("finish_reason: request #%s: empty answer (finish_reason=%s, generated tokens %s)",
                            self.request_id, ch.get("finish_reason"), n)
        return changed
