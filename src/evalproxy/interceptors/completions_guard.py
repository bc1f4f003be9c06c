"""completions_guard: chat-template controls sent to ``/v1/completions`` are an error or removed (NeMo 0.4's guard).

A request to a text completions path carrying ``chat_template_kwargs`` or ``chat_template`` (at any depth): a boolean
inside ``chat_template_kwargs`` (``enable_thinking: false``) fails the request with a 400 naming the field, since the
model would run in the wrong mode; any other such field is removed before the request goes on, with a warning (once
per distinct set of fields, and counted). ``allow: true``, or ``NEMO_EVALUATOR_ALLOW_COMPLETIONS_CHAT_TEMPLATE=1``
when ``allow`` is not set, removes toggles too. Chat requests pass untouched. 0.4 runs this check inside its endpoint
for every request and answers a toggle with a 500 (``Internal adapter proxy error``); here it is a layer a 0.4-shaped
config gets just before ``endpoint`` (so it sees what ``proxy.extra_body`` added) and any config may list, and a
toggle is the client's 400 with the reason.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.config.completions import allowed_by_env, explain, is_text_completions_path, scan, strip
from evalproxy.adapter.core.errors import ChatTemplateToggleError
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.completions_guard")


class CompletionsGuardParams(Params):
    allow: bool | None = Field(default=None, description="Remove boolean toggles with a warning instead of failing; "
                               "None: NEMO_EVALUATOR_ALLOW_COMPLETIONS_CHAT_TEMPLATE decides")


@register_for_adapter(name="completions_guard",
                      description="Refuses chat-template toggles sent to /v1/completions; removes inert fields.")
class CompletionsGuardInterceptor(BaseInterceptor[CompletionsGuardParams]):
    modifies_request = True

    Params = CompletionsGuardParams

    def __init__(self, params: CompletionsGuardParams, run: Any) -> None:
        super().__init__(params, run)
        self.allow = allowed_by_env() if params.allow is None else params.allow
        self.warned: set[str] = set()
        self.removed = 0
        self.refused = 0

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body = ctx.json
        if body is None or not is_text_completions_path(ctx.path):
            return await call_next(ctx)
        found = scan(body)
        if not found:
            return await call_next(ctx)
        where = f"a request to {ctx.path}"
        if found.toggles and not self.allow:
            self.refused += 1
            raise ChatTemplateToggleError(f"completions_guard: {explain(found, where, fatal=True)}",
                                          param=found.toggles[0])
        text = explain(found, where, fatal=False)
        if text not in self.warned:
            self.warned.add(text)
            log.warning("completions_guard: %s (said once)", text)
        self.removed += 1
        ctx.set_json(strip(body))  # plain dicts and lists: strip copies the frozen body
        return await call_next(ctx)

