"""system_message: replace, prepend, append; developer roles, list content, completions."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
from pydantic import ValidationError

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.interceptors.system_message import SystemMessageInterceptor
from evalproxy.simulator import SimulatedModel

OURS = "Be precise."


def make(run: RunContext, **params: Any) -> SystemMessageInterceptor:
    return SystemMessageInterceptor(SystemMessageInterceptor.Params(system_message=OURS, **params), run)


async def apply(ic: SystemMessageInterceptor, body: dict[str, Any] | None, path: str = "/v1/chat/completions") -> Any:
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


    @pytest.mark.parametrize(("strategy", "expected"), [
        ("prepend", f"{OURS}\ndev"), ("append", f"dev\n{OURS}")])
    async def test_developer_role_is_merged_first_keeping_its_role(
        self, run: RunContext, strategy: str, expected: str
    ) -> None:
        """A developer message counts as a system message: merged to index 0 (as NeMo does), keeping its role."""
        first = {"role": "user", "content": "before"}
        seen = await apply(make(run, strategy=strategy), {"messages": [first, {"role": "developer", "content": "dev"},
                                                                        USER]})
        assert seen["body"]["messages"] == [{"role": "developer", "content": expected}, first, USER]

    async def test_list_content_prepend_puts_a_text_part_first(self, run: RunContext) -> None:
        """prepend on list content adds our text part before the existing parts."""
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}
        seen = await apply(make(run), {"messages": [{"role": "system", "content": [image]}, USER]})
        assert seen["body"]["messages"][0]["content"] == [{"type": "text", "text": OURS}, image]

    @pytest.mark.parametrize("content", [None, ""])
    async def test_empty_system_message_gets_ours_alone(self, run: RunContext, content: str | None) -> None:
        """An empty or null system content becomes our prompt, without a stray newline."""
        seen = await apply(make(run, strategy="append"), {"messages": [{"role": "system", "content": content}, USER]})
        assert seen["body"]["messages"][0] == {"role": "system", "content": OURS}

    @pytest.mark.parametrize(("strategy", "expected"), [
        ("prepend", f"{OURS}\nfirst\nsecond"), ("append", f"first\nsecond\n{OURS}"), ("replace", OURS)])
    async def test_all_system_messages_become_one_at_index_0(
        self, run: RunContext, strategy: str, expected: str
    ) -> None:
        """As NeMo Evaluator: every system message is joined into one, first; the others keep their order."""
        second = {"role": "system", "content": "second"}
        seen = await apply(make(run, strategy=strategy),
                           {"messages": [USER, {"role": "system", "content": "first"}, USER, second]})
        assert seen["body"]["messages"] == [{"role": "system", "content": expected}, USER, USER]

    @pytest.mark.parametrize("strategy", ["replace", "prepend", "append"])
    async def test_the_clients_body_is_not_mutated(self, run: RunContext, strategy: str) -> None:
        """The interceptor builds a new body; the parsed original is left as it was."""
        body = {"messages": [{"role": "system", "content": [{"type": "text", "text": "s"}]}, USER], "n": 2}
        before = copy.deepcopy(body)
        await apply(make(run, strategy=strategy), body)
        assert body == before

    def test_prepend_is_the_default(self) -> None:
        """The default strategy is NeMo Evaluator's (prepend, since 25.11)."""
        assert SystemMessageInterceptor.Params(system_message="x").strategy == "prepend"

    @pytest.mark.parametrize("params", [{}, {"system_message": "x", "strategy": "merge"}])
    def test_bad_params_are_refused(self, params: dict[str, Any]) -> None:
        """A missing system_message or an unknown strategy is a validation error, not a silent no-op."""
        with pytest.raises(ValidationError):
            SystemMessageInterceptor.Params(**params)


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

    @pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]]])
    async def test_token_id_prompts_are_left_alone(self, run: RunContext, prompt: Any) -> None:
        """Token-id prompts have no text to prefix: they go upstream as they came."""
        seen = await apply(make(run, apply_to_completions=True), {"prompt": prompt}, "/v1/completions")
        assert seen["bytes"] == b"original"

    async def test_left_alone_is_logged_once(self, run: RunContext, caplog: pytest.LogCaptureFixture) -> None:
        """Leaving completions alone is said once in the log, not per request."""
        ic = make(run)
        with caplog.at_level(logging.INFO, logger="evalproxy.system_message"):
            for _ in range(3):
                await apply(ic, {"prompt": "x"}, "/v1/completions")
        assert len([r for r in caplog.records if "completions" in r.getMessage()]) == 1

    @pytest.mark.parametrize(("path", "body"), [("/v1/embeddings", {"input": "x"}), ("/v1/models", None)])
    async def test_other_requests_pass_byte_for_byte(self, run: RunContext, path: str, body: Any) -> None:
        """Requests without messages or a prompt are not touched."""
        seen = await apply(make(run), body, path)
        assert seen["bytes"] == b"original"


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

    @pytest.mark.parametrize(("apply_to_completions", "expected"), [(False, "2+2="), (True, f"{OURS}\n2+2=")])
    async def test_completions_through_the_proxy(
        self, make_proxy: Any, sim: SimulatedModel, apply_to_completions: bool, expected: str
    ) -> None:
        """The upstream receives a completions prompt untouched, or prefixed when configured."""
        proxy = await make_proxy({"interceptors": [
            {"name": "system_message", "config": {"system_message": OURS,
                                                  "apply_to_completions": apply_to_completions}},
            "endpoint"], "generate_html_report": False})
        resp = await proxy.post("/v1/completions", json={"model": "m", "prompt": "2+2="})
        assert resp.status == 200
        assert sim.log[-1].body is not None and sim.log[-1].body["prompt"] == expected
