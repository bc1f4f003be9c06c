"""payload_modifier: add, remove or rename request fields and headers before the request goes on.

Runs before caching in the usual order, so the cache key covers the request as modified.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.registry import register_for_adapter


class PayloadModifierParams(BaseParams):
    params_to_remove: list[str] | None = Field(default=None, description="Top-level fields to drop")
    params_to_add: dict[str, Any] | None = Field(default=None, description="Top-level fields to set")
    params_to_rename: dict[str, str] | None = Field(default=None, description="old name -> new name")
    headers_to_add: dict[str, str] | None = None
    headers_to_remove: list[str] | None = None
    headers_to_rename: dict[str, str] | None = None


@register_for_adapter(name="payload_modifier", description="Adds, removes or renames request fields and headers.")
class PayloadModifierInterceptor(BaseInterceptor[PayloadModifierParams]):
    modifies_request = True

    Params = PayloadModifierParams

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        p = self.params
        body = ctx.json
        if body is not None and (p.params_to_remove or p.params_to_add or p.params_to_rename):
            ctx.set_json(self.modify(body))
        for name in p.headers_to_remove or ():
            ctx.headers.popall(name, None)
        for old, new in (p.headers_to_rename or {}).items():
            values = ctx.headers.popall(old, None)
            for v in values or ():
                ctx.headers.add(new, v)
        for name, value in (p.headers_to_add or {}).items():
            ctx.headers[name] = value
        return await call_next(ctx)

    def modify(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``body``: removals first, then renames, then additions (which win)."""
        p = self.params
        out = {k: v for k, v in body.items() if k not in set(p.params_to_remove or ())}
        for old, new in (p.params_to_rename or {}).items():
            if old in out:
                out[new] = out.pop(old)
        out.update(p.params_to_add or {})
        return out
