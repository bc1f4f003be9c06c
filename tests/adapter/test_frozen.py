"""An immutable request body: what is keyed is what is sent (issue 9, "a request body that cannot drift")."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from evalproxy import BaseInterceptor, Next, Params, ProxyResponse, RequestContext, register_for_adapter
from evalproxy.adapter.flow.frozen import FrozenDict, FrozenList, NestingError, freeze
from evalproxy.adapter.registry.registry import Registry, resolve
from evalproxy.adapter.server.app import create_app
from evalproxy.simulator import SimulatedModel
from evalproxy.storage import cache_key
from tests.conftest import ProxyServer, make_loaded

PATH = "/v1/chat/completions"
# Odd spacing and key order: an untouched request must go upstream exactly like this, not re-serialised.
RAW = b'{ "model": "m",  "messages": [{"role": "user", "content": "hi"}], "temperature": 0,\n "meta": {"tags": ["a"]} }'


def context(raw: bytes = RAW) -> RequestContext:
    return RequestContext(method="POST", path=PATH, raw=raw, json=orjson.loads(raw))


class TestFrozenBody:
    @pytest.mark.parametrize(
        "change",
        [
            pytest.param(lambda b: b.__setitem__("temperature", 1), id="set-top-level"),
            pytest.param(lambda b: b.__delitem__("model"), id="del-top-level"),
            pytest.param(lambda b: b.update(seed=1), id="update"),
            pytest.param(lambda b: b.setdefault("seed", 1), id="setdefault"),
            pytest.param(lambda b: b.pop("model"), id="pop"),
            pytest.param(lambda b: b["messages"].append({"role": "user", "content": "more"}), id="append-list"),
            pytest.param(lambda b: b["messages"].__setitem__(0, {}), id="set-list-item"),
            pytest.param(lambda b: b["messages"][0].__setitem__("content", "changed"), id="set-nested-dict"),
            pytest.param(lambda b: b["meta"]["tags"].extend(["b"]), id="extend-nested-list"),
        ],
    )
    def test_in_place_change_raises(self, change: Callable[[Any], Any]) -> None:
        """Changing ctx.json in place, at the top or nested in a list or dict, raises TypeError."""
        ctx = context()
        with pytest.raises(TypeError, match="set_json"):
            change(ctx.json)
        assert ctx.body_bytes() == RAW

    def test_freezing_copies_every_level_and_leaves_the_input_alone(self) -> None:
        """Every dict and list, at any depth and beside already frozen ones, comes back as its frozen twin with the
        same values; the plain input stays plain and changeable; nesting past the limit is refused."""
        inner = freeze({"x": [1, {"y": None}]})
        plain = {"a": [{"b": [[1, 2.5], {"c": "d"}]}, inner, "s"], "e": {"f": {}}, "g": 0}
        frozen = freeze(plain)
        assert frozen == plain and frozen["a"][1] is inner
        stack: list[Any] = [frozen]
        while stack:
            v = stack.pop()
            assert type(v) in (FrozenDict, FrozenList)
            stack += [x for x in (v.values() if isinstance(v, dict) else v) if isinstance(x, dict | list)]
        plain["a"][0]["b"][0].append(3)  # the input was copied, not frozen in place
        assert frozen["a"][0]["b"][0] == [1, 2.5]
        with pytest.raises(NestingError):
            freeze({"a": [{"b": [1]}]}, depth=3)
        assert freeze({"a": [{"b": [1]}]}, depth=4) == {"a": [{"b": [1]}]}

    def test_untouched_body_is_sent_byte_for_byte(self) -> None:
        """A request no interceptor replaced goes upstream as the client's own bytes."""
        assert context().body_bytes() == RAW

    def test_set_json_changes_the_bytes_sent(self) -> None:
        """A body replaced with set_json is what body_bytes() sends, and is frozen again."""
        ctx = context()
        assert ctx.json is not None
        ctx.set_json({**ctx.json, "temperature": 0.5})
        assert orjson.loads(ctx.body_bytes())["temperature"] == 0.5
        with pytest.raises(TypeError):
            ctx.json["temperature"] = 1

    def test_deepcopy_is_mutable(self) -> None:
        """copy.deepcopy of ctx.json gives plain containers that can be changed without touching the request."""
        ctx = context()
        body = copy.deepcopy(ctx.json)
        assert body is not None
        body["messages"].append({"role": "user", "content": "more"})
        body["messages"][0]["content"] = "changed"
        body["temperature"] = 1
        assert type(body) is dict and type(body["messages"]) is list
        assert ctx.body_bytes() == RAW

    @pytest.mark.parametrize(
        "replace",
        [
            pytest.param(None, id="untouched"),
            pytest.param(lambda b: {**b, "temperature": 0.7}, id="top-level"),
            pytest.param(lambda b: {**b, "messages": [{"role": "system", "content": "x"}, *b["messages"]]},
                         id="nested"),
        ],
    )
    def test_cache_key_matches_the_bytes_sent(self, replace: Callable[[Any], Any] | None) -> None:
        """The cache key computed from ctx.json equals the key of the body that really goes upstream."""
        ctx = context()
        if replace is not None:
            ctx.set_json(replace(ctx.json))
        sent = orjson.loads(ctx.body_bytes())
        assert cache_key(PATH, ctx.json, "a=1") == cache_key(PATH, sent, "a=1")


@register_for_adapter(name="test_in_place_changer", description="Changes the body in place (forbidden).")
class InPlaceChanger(BaseInterceptor[Params]):
    modifies_request = True

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        assert ctx.json is not None
        ctx.json["temperature"] = 0.9
        return await call_next(ctx)


@register_for_adapter(name="test_set_json_changer", description="Replaces the body with set_json.")
class SetJsonChanger(BaseInterceptor[Params]):
    modifies_request = True

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        assert ctx.json is not None
        ctx.set_json({**ctx.json, "temperature": 0.9, "user_field": "added"})
        return await call_next(ctx)


class TestUserInterceptorFunctional:
    async def serve(self, name: str, tmp_path: Path, upstream: TestServer) -> TestClient[Any, Any]:
        loaded = make_loaded({"interceptors": [name, "endpoint"]}, tmp_path, str(upstream.make_url("/v1")),
                             max_retries=0)
        registry = Registry.default()
        registry.add(InPlaceChanger)
        registry.add(SetJsonChanger)
        client: TestClient[Any, Any] = TestClient(
            ProxyServer(create_app(loaded, resolved=resolve(loaded, registry)), host="127.0.0.1"))
        await client.start_server()
        return client

    async def test_in_place_change_is_a_named_500(
        self, tmp_path: Path, upstream: TestServer, sim: SimulatedModel
    ) -> None:
        """A user interceptor that changes ctx.json in place fails its request with an OpenAI-shaped 500 naming it."""
        client = await self.serve("test_in_place_changer", tmp_path, upstream)
        try:
            resp = await client.post(PATH, data=RAW, headers={"Content-Type": "application/json"})
            assert resp.status == 500
            error = (await resp.json())["error"]
        finally:
            await client.close()
        assert error["type"] == "interceptor_error" and error["code"] == "interceptor_failed"
        assert "'test_in_place_changer'" in error["message"] and "TypeError" in error["message"]
        assert sim.log == []

    async def test_set_json_reaches_upstream(self, tmp_path: Path, upstream: TestServer, sim: SimulatedModel) -> None:
        """A user interceptor that replaces the body with set_json sends the changed body upstream."""
        client = await self.serve("test_set_json_changer", tmp_path, upstream)
        try:
            resp = await client.post(PATH, data=RAW, headers={"Content-Type": "application/json"})
            assert resp.status == 200
            await resp.read()
        finally:
            await client.close()
        (seen,) = sim.log
        assert seen.body is not None
        assert seen.body["temperature"] == 0.9 and seen.body["user_field"] == "added"
        assert seen.body["messages"] == [{"role": "user", "content": "hi"}]
