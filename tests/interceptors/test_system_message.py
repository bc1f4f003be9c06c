"""system_message: replace, prepend, append; developer roles, list content, completions."""

from __future__ import annotations

from typing import Any

import pytest

from evalproxy.adapter.context import ProxyResponse, RequestContext, RunContext
from evalproxy.interceptors.system_message import SystemMessageInterceptor
from evalproxy.simulator import SimulatedModel

OURS = "Be precise."


def make(run: RunContext, **params: Any) -> SystemMessageInterceptor:
    return SystemMessageInterceptor(SystemMessageInterceptor.Params(system_message=OURS, **params), run)


async def apply(ic: SystemMessageInterceptor, body: dict[str, Any], path: str = "/v1/chat/completions") -> Any:
    seen: dict[str, Any] = {}

    async def call_next(ctx: RequestContext) -> ProxyResponse:
        seen["body"] = ctx.json
        seen["bytes"] = ctx.body_bytes()
        return ProxyResponse.from_json({})

    ctx = RequestContext(method="POST", path=path, json=body, raw=b"original")
    await ic(ctx, call_next)
    return seen


USER = {"role": "user", "content": "hi"}


class TestChat:
    @pytest.mark.parametrize(("strategy", "expected"), [
        ("replace", [{"role": "system", "content": OURS}, USER]),
        ("prepend", [{"role": "system", "content": f"{OURS}\nYou are terse."}, USER]),
        ("append", [{"role": "system", "content": f"You are terse.\n{OURS}"}, USER]),
    ])
    async def test_strategies_with_an_existing_system_message(
        self, run: RunContext, strategy: str, expected: list[Any]
    ) -> None:
        """Each strategy puts our prompt where it says, keeping one system message."""
        seen = await apply(make(run, strategy=strategy), {
            "model": "m", "messages": [{"role": "system", "content": "You are terse."}, USER], "temperature": 0})
        assert seen["body"] == {"model": "m", "messages": expected, "temperature": 0}

    @pytest.mark.parametrize("strategy", ["replace", "prepend", "append"])
    async def test_no_system_message_inserts_one_first(self, run: RunContext, strategy: str) -> None:
        """Without a system message, every strategy inserts ours as the first message."""
        seen = await apply(make(run, strategy=strategy), {"messages": [USER]})
        assert seen["body"]["messages"] == [{"role": "system", "content": OURS}, USER]

    async def test_developer_role_counts_as_system(self, run: RunContext) -> None:
        """A developer message is the system message for prepend (and is kept with its role)."""
        seen = await apply(make(run, strategy="prepend"), {"messages": [
            {"role": "developer", "content": "dev"}, USER]})
        assert seen["body"]["messages"][0] == {"role": "developer", "content": f"{OURS}\ndev"}

    async def test_replace_drops_system_and_developer(self, run: RunContext) -> None:
        """replace removes every system and developer message."""
        seen = await apply(make(run, strategy="replace"), {"messages": [
            {"role": "developer", "content": "a"}, USER, {"role": "system", "content": "b"}]})
        assert seen["body"]["messages"] == [{"role": "system", "content": OURS}, USER]

    async def test_list_content_keeps_its_parts(self, run: RunContext) -> None:
        """List-typed content gets a text part; other parts (images) are untouched."""
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}
        seen = await apply(make(run, strategy="append"), {"messages": [
            {"role": "system", "content": [{"type": "text", "text": "sys"}, image]}, USER]})
        assert seen["body"]["messages"][0]["content"] == [
            {"type": "text", "text": "sys"}, image, {"type": "text", "text": OURS}]

    async def test_extra_fields_survive(self, run: RunContext) -> None:
        """Other message and request fields are preserved."""
        seen = await apply(make(run, strategy="prepend"), {
            "messages": [{"role": "system", "content": "s", "name": "boss"}, USER],
            "tools": [{"type": "function"}], "x_vendor": {"a": 1}})
        assert seen["body"]["messages"][0]["name"] == "boss"
        assert seen["body"]["tools"] == [{"type": "function"}] and seen["body"]["x_vendor"] == {"a": 1}


class TestCompletions:
    async def test_left_alone_by_default(self, run: RunContext) -> None:
        """A completions request goes upstream byte for byte as it came."""
        seen = await apply(make(run), {"prompt": "2+2="}, path="/v1/completions")
        assert seen["bytes"] == b"original"

    async def test_prefixed_when_configured(self, run: RunContext) -> None:
        """apply_to_completions prefixes string and list prompts."""
        ic = make(run, apply_to_completions=True)
        assert (await apply(ic, {"prompt": "2+2="}, "/v1/completions"))["body"]["prompt"] == f"{OURS}\n2+2="
        assert (await apply(ic, {"prompt": ["a", "b"]}, "/v1/completions"))["body"]["prompt"] == [
            f"{OURS}\na", f"{OURS}\nb"]


class TestThroughTheProxy:
    async def test_upstream_sees_the_prompt_and_the_cache_key_covers_it(
        self, make_proxy: Any, sim: SimulatedModel
    ) -> None:
        """The upstream receives the injected prompt; the cache keys the request as changed."""
        proxy = await make_proxy({"interceptors": [
            {"name": "system_message", "config": {"system_message": OURS, "strategy": "replace"}},
            "caching", "endpoint"], "generate_html_report": False})
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": [USER], "temperature": 0})
        assert resp.status == 200
        assert sim.log[-1].body is not None
        assert sim.log[-1].body["messages"][0] == {"role": "system", "content": OURS}
