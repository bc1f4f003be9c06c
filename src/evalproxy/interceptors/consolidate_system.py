"""consolidate_system: one system message, first (NeMo Evaluator 0.3+'s ``consolidate_system``).

Some chat templates accept a single system message and only at index 0. When a request has more than one, or one
that is not first, their texts (a string, or the text parts of a list joined by newlines; empty ones left out) are
joined with ``separator`` into one system message at index 0; the other messages keep their order. A request that
already has at most one system message, first, goes on unchanged. Each fix is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.shape import content_text
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.consolidate_system")


def consolidate(messages: list[Any], separator: str) -> list[Any] | None:
    """The messages with their system messages merged into one at index 0, or None when nothing needs fixing."""
    where = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "system"]
    if not where or where == [0]:
        return None
    texts = [t for t in (content_text(messages[i].get("content"), "\n") for i in where) if t]
    rest = [m for i, m in enumerate(messages) if i not in set(where)]
    return [{"role": "system", "content": separator.join(texts)}, *rest]


class ConsolidateSystemParams(Params):
    separator: str = "\n\n"


@register_for_adapter(name="consolidate_system", description="Merges all system messages into one, first.")
class ConsolidateSystemInterceptor(BaseInterceptor[ConsolidateSystemParams]):
    modifies_request = True

    Params = ConsolidateSystemParams

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body: Any = ctx.json
        messages = body.get("messages") if isinstance(body, dict) else None
        if isinstance(messages, list):
            fixed = consolidate(messages, self.params.separator)
            if fixed is not None:
                count = len(messages) - len(fixed) + 1
                log.warning("consolidate_system: request #%s had %d system message(s) not all first; merged into "
                            "one at index 0", ctx.request_id, count)
                ctx.set_json({**body, "messages": fixed})
        return await call_next(ctx)
