"""payload_modifier: add, remove or rename request fields and headers before the request goes on.

In NeMo Evaluator's order and reach: ``params_to_remove`` removes the named keys at every depth (``name`` leaves
``messages[].name`` and ``tools[].function.name`` too), then ``params_to_add`` sets top-level keys (a whole
``extra_body`` replaced, never merged), then ``params_to_rename`` renames top-level keys that are present. Headers:
remove, rename, then add, names matched case-insensitively; adding a hop-by-hop or framing header is refused with a
warning, as there. Runs before caching in the usual order, so the cache key covers the request as modified.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.payload_modifier")

# Headers the proxy itself must set: an added value would break the framing of the request.
_PROTECTED_HEADERS = frozenset({"host", "content-length", "connection", "transfer-encoding"})


def remove_keys(value: Any, names: frozenset[str]) -> Any:
    """``value`` without the keys ``names`` in any mapping at any depth (lists are walked too)."""
    if isinstance(value, dict):
        return {k: remove_keys(v, names) for k, v in value.items() if k not in names}
    if isinstance(value, list):
        return [remove_keys(v, names) for v in value]
    return value


class PayloadModifierParams(BaseParams):
    params_to_remove: list[str] | None = Field(default=None, description="Fields to drop, at any depth")
    params_to_add: dict[str, Any] | None = Field(default=None, description="Top-level fields to set")
    params_to_rename: dict[str, str] | None = Field(default=None, description="old name -> new name")
    headers_to_add: dict[str, str] | None = None
    headers_to_remove: list[str] | None = None
    headers_to_rename: dict[str, str] | None = None


@register_for_adapter(name="payload_modifier", description="Adds, removes or renames request fields and headers.")
class PayloadModifierInterceptor(BaseInterceptor[PayloadModifierParams]):
    modifies_request = True

    Params = PayloadModifierParams

    def __init__(self, params: PayloadModifierParams, run: Any) -> None:
        super().__init__(params, run)
        self.headers_to_add: dict[str, str] = {}
        for name, value in (params.headers_to_add or {}).items():
            if name.lower() in _PROTECTED_HEADERS:
                log.warning("payload_modifier: not adding header '%s': the proxy sets it itself", name)
            else:
                self.headers_to_add[name] = value
        self.remove = frozenset(params.params_to_remove or ())

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
        for name, value in self.headers_to_add.items():
            ctx.headers[name] = value
        return await call_next(ctx)

    def modify(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``body``: removals at every depth, then top-level additions, then top-level renames."""
        p = self.params
        out: dict[str, Any] = remove_keys(body, self.remove) if self.remove else dict(body)
        out.update(p.params_to_add or {})
        for old, new in (p.params_to_rename or {}).items():
            if old in out:
                out[new] = out.pop(old)
        return out
