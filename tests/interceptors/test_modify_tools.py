"""modify_tools: properties stripped from and added to the tools' parameter schemas."""

from __future__ import annotations

from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.modify_tools import ModifyToolsInterceptor
from tests.interceptors.units import call, make


class TestModifyTools:
    async def test_strip_and_add(self, run: RunContext) -> None:
        """Stripped properties leave properties and required; added ones fill gaps and never overwrite."""
        props = {"a": {"type": "string"}, "b": {"type": "integer"}}
        tool = {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": props, "required": ["a", "b"]}}}
        ic = make(ModifyToolsInterceptor, run, strip_properties=["b"],
                  add_properties={"a": {"type": "number"}, "c": {"type": "boolean"}})
        sent, _ = await call(ic, {"tools": [tool, {"type": "other"}]})
        params = sent["tools"][0]["function"]["parameters"]
        assert params["properties"] == {"a": {"type": "string"}, "c": {"type": "boolean"}}
        assert params["required"] == ["a"] and sent["tools"][1] == {"type": "other"}
        assert tool["function"]["parameters"]["required"] == ["a", "b"]  # the client's body is not changed
