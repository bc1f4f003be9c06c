"""modify_tools: edit the JSON schema of the tools a request offers (NeMo Evaluator 0.3+'s ``modify_tools``).

For each entry of ``tools`` (its ``function``, or the entry itself) whose ``parameters.properties`` is a mapping:
``strip_properties`` are deleted (and taken out of ``required``), ``add_properties`` that are missing are added
(existing ones are never overwritten). Requests without tools pass unchanged.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.modify_tools")


class ModifyToolsParams(Params):
    strip_properties: list[str] | None = None
    add_properties: dict[str, Any] | None = None
    """Property name -> its JSON schema."""


@register_for_adapter(name="modify_tools", description="Strips or adds properties of the tools' parameter schemas.")
class ModifyToolsInterceptor(BaseInterceptor[ModifyToolsParams]):
    modifies_request = True

    Params = ModifyToolsParams

    def __init__(self, params: ModifyToolsParams, run: RunContext) -> None:
        super().__init__(params, run)
        if not params.strip_properties and not params.add_properties:
            log.warning("modify_tools: neither strip_properties nor add_properties is set; it changes nothing")

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body: Any = ctx.json
        tools = body.get("tools") if isinstance(body, dict) else None
        if isinstance(tools, list) and (self.params.strip_properties or self.params.add_properties):
            new_tools = [self.tool(t) for t in tools]
            if new_tools != tools:
                ctx.set_json({**body, "tools": new_tools})
        return await call_next(ctx)

    def tool(self, tool: Any) -> Any:
        """A changed copy of one tool entry (the entry itself when there is nothing to change)."""
        if not isinstance(tool, dict):
            return tool
        inner = tool.get("function")
        fn: dict[str, Any] = inner if isinstance(inner, dict) else tool
        schema = fn.get("parameters")
        if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
            return tool
        strip = set(self.params.strip_properties or ())
        props = {k: v for k, v in schema["properties"].items() if k not in strip}
        for name, prop in (self.params.add_properties or {}).items():
            props.setdefault(name, copy.deepcopy(prop))
        new_schema = {**schema, "properties": props}
        if isinstance(schema.get("required"), list):
            new_schema["required"] = [r for r in schema["required"] if r not in strip]
        new_fn = {**fn, "parameters": new_schema}
        return {**tool, "function": new_fn} if fn is not tool else new_fn
