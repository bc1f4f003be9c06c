"""system_message: put a custom system prompt into every chat request (replace, prepend or append).

``strategy`` defaults to ``prepend``, as in NeMo Evaluator since 25.11; earlier NeMo Evaluator versions replaced the
system message, which ``strategy: replace`` restores. As in NeMo Evaluator, the request leaves with exactly one system
message, at index 0: the contents of all its system messages are joined with newlines, and prepend/append put our
prompt before/after that (replace drops them); the other messages keep their order. The merged message keeps the
first system message's role and other fields. A ``developer`` message counts as a system message (inspect-ai and
newer OpenAI clients send one; NeMo Evaluator leaves it alone).
Content given as a list of parts keeps its parts: the prompt is added as a text part, images and other parts are left
as they are. Every other message and request field goes upstream unchanged.

Completions requests have no messages; they are left alone unless ``apply_to_completions`` is set (then each string
prompt is prefixed), and the log says so once.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.flow.frozen import FrozenDict
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.system_message")

_SYSTEM_ROLES = ("system", "developer")


def _join(first: Any, second: Any) -> Any:
    """``first`` then ``second`` as one content: strings joined by a newline, list content keeps its parts."""
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n{second}" if first and second else first or second
    parts: list[Any] = []
    for c in (first, second):
        if isinstance(c, list):
            parts.extend(c)
        elif isinstance(c, str) and c:
            parts.append({"type": "text", "text": c})
    return parts


class SystemMessageParams(BaseParams):
    system_message: str = Field(description="The system prompt to inject")
    strategy: Literal["replace", "prepend", "append"] = Field(
        default="prepend",
        description="replace: drop existing system and developer messages, ours goes first; prepend/append: ours "
        "before/after the existing system message's content (prepend is NeMo Evaluator's default since 25.11)",
    )
    apply_to_completions: bool = Field(
        default=False, description="Also prefix the prompt of completions requests (off: they are left alone)"
    )


@register_for_adapter(name="system_message", description="Injects a custom system prompt into chat requests.")
class SystemMessageInterceptor(BaseInterceptor[SystemMessageParams]):
    modifies_request = True

    Params = SystemMessageParams

    def __init__(self, params: SystemMessageParams, run: RunContext) -> None:
        super().__init__(params, run)
        self._told_about_completions = False
        # Built once and frozen: every request shares it, and set_json has nothing left to freeze in it.
        self._ours = FrozenDict(role="system", content=params.system_message)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body = ctx.json
        if body is not None:
            if isinstance(body.get("messages"), list):
                ctx.set_json(self.apply_chat(body))
            elif "prompt" in body:
                self._completions(ctx, body)
        return await call_next(ctx)

    def apply_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``body`` with the system prompt applied by ``strategy``; other fields untouched."""
        ours = self.params.system_message
        systems: list[Any] = []
        rest: list[Any] = []
        for m in body["messages"]:
            (systems if isinstance(m, dict) and m.get("role") in _SYSTEM_ROLES else rest).append(m)
        if self.params.strategy == "replace" or not systems:
            return {**body, "messages": [self._ours, *rest]}
        existing: Any = ""
        for m in systems:
            content = m.get("content")
            existing = _join(existing, "" if content is None else content)
        merged = _join(ours, existing) if self.params.strategy == "prepend" else _join(existing, ours)
        return {**body, "messages": [{**systems[0], "content": merged}, *rest]}

    def _completions(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        if not self.params.apply_to_completions:
            if not self._told_about_completions:
                self._told_about_completions = True
                log.info("system_message: completions requests are left alone (set apply_to_completions to "
                         "prefix their prompt)")
            return
        prompt = body["prompt"]
        prefix = self.params.system_message + "\n"
        if isinstance(prompt, str):
            new_prompt: Any = prefix + prompt
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            new_prompt = [prefix + p for p in prompt]
        else:
            return  # token-id prompts: nothing sensible to prefix
        ctx.set_json({**body, "prompt": new_prompt})
