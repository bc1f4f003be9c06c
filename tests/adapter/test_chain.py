"""build_chain: order, short-circuit, failures named, best-effort layers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from evalproxy.adapter.chain.interceptor import BaseInterceptor, build_chain, check_order
from evalproxy.adapter.core.errors import ConfigError, InterceptorError, UpstreamTimeoutError
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.sse import DONE, Event
from evalproxy.adapter.registry.registry import plugin_kind as kind
from evalproxy.interceptors.endpoint import EndpointInterceptor

ENDS: dict[str, type[Any]] = {"endpoint": EndpointInterceptor}


class Recorder(BaseInterceptor):
    def __init__(self, name: str, log: list[str], *, answer: bool = False, fail: bool = False,
                 best_effort: bool = False) -> None:
        self.name = name  # type: ignore[misc]
        self.log = log
        self.answer = answer
        self.fail = fail
        self.best_effort = best_effort  # type: ignore[misc]

    async def __call__(self, ctx: RequestContext, call_next: Any) -> ProxyResponse:
        self.log.append(f"{self.name}:in")
        if self.fail:
            raise ValueError("boom")
        if self.answer:
            return ProxyResponse.from_json({"from": self.name})
        resp = await call_next(ctx)
        self.log.append(f"{self.name}:out")
        return resp


def terminal(log: list[str]) -> Any:
    async def call(ctx: RequestContext) -> ProxyResponse:
        log.append("upstream")
        return ProxyResponse.from_json({"from": "upstream"})

    return call


def ctx() -> RequestContext:
    return RequestContext(method="POST", path="/v1/chat/completions", json={}, raw=b"{}")


class TestBuildChain:
    async def test_order_is_outer_to_inner(self) -> None:
        """The first configured interceptor sees the request first and the response last."""
        log: list[str] = []
        chain = build_chain([Recorder("a", log), Recorder("b", log)], terminal(log))
        await chain(ctx())
        assert log == ["a:in", "b:in", "upstream", "b:out", "a:out"]

    async def test_short_circuit_skips_inner_layers(self) -> None:
        """An interceptor that returns a response stops the chain: nothing inside it runs."""
        log: list[str] = []
        chain = build_chain([Recorder("a", log), Recorder("hit", log, answer=True), Recorder("c", log)],
                            terminal(log))
        resp = await chain(ctx())
        assert resp.json == {"from": "hit"}
        assert log == ["a:in", "hit:in", "a:out"]

    async def test_failure_names_the_interceptor(self) -> None:
        """A failing interceptor fails the request with an error that names it."""
        log: list[str] = []
        chain = build_chain([Recorder("a", log), Recorder("broken", log, fail=True)], terminal(log))
        with pytest.raises(InterceptorError, match=r"'broken'") as info:
            await chain(ctx())
        assert info.value.status == 500

    async def test_best_effort_failure_is_skipped(self) -> None:
        """A best-effort interceptor that fails is logged and the request continues without it."""
        log: list[str] = []
        chain = build_chain([Recorder("stats", log, fail=True, best_effort=True)], terminal(log))
        resp = await chain(ctx())
        assert resp.json == {"from": "upstream"}

    async def test_typed_errors_pass_through_unchanged(self) -> None:
        """A typed error from further down (an upstream timeout) reaches the server as it was raised."""
        async def slow(c: RequestContext) -> ProxyResponse:
            raise UpstreamTimeoutError("too slow")

        chain = build_chain([Recorder("a", [])], slow)
        with pytest.raises(UpstreamTimeoutError):
            await chain(ctx())


class Changer(BaseInterceptor):
    name = "changer"
    modifies_request = True


class Observer(BaseInterceptor):
    name = "observer"


class TestCheckOrder:
    def test_endpoint_twice_is_rejected(self) -> None:
        """Listing endpoint twice is a config error naming the interceptors field."""
        with pytest.raises(ConfigError, match="more than once") as info:
            check_order(["endpoint", "endpoint"], ENDS, kind)
        assert info.value.field == "interceptors"

    def test_request_changer_after_endpoint_is_rejected(self) -> None:
        """A request-changing interceptor after endpoint is an error naming it and endpoint."""
        with pytest.raises(ConfigError, match=r"'changer'.*after 'endpoint'"):
            check_order(["endpoint", "changer"], {**ENDS, "changer": Changer}, kind)

    def test_observers_after_endpoint_are_fine(self) -> None:
        """Response-side interceptors may follow endpoint."""
        check_order(["changer", "endpoint", "observer"], {**ENDS, "changer": Changer, "observer": Observer}, kind)

    def test_two_different_terminals_are_rejected(self) -> None:
        """Two chain ends of different names are a config error naming both."""
        with pytest.raises(ConfigError, match="'endpoint' and 'other_end' are both chain ends"):
            check_order(["endpoint", "other_end"], {**ENDS, "other_end": EndpointInterceptor}, kind)


class _BreaksMidStream(BaseInterceptor):
    """Passes two events of a stream on, then fails while reading the third."""

    def __init__(self, best_effort: bool) -> None:
        self.name = "breaker"  # type: ignore[misc]
        self.best_effort = best_effort  # type: ignore[misc]

    async def __call__(self, ctx: RequestContext, call_next: Any) -> ProxyResponse:
        resp = await call_next(ctx)
        inner = resp.stream
        assert inner is not None

        async def wrapped() -> AsyncIterator[Event]:
            n = 0
            async for event in inner:
                n += 1
                if n == 3:
                    raise RuntimeError("broke at the third event")
                yield event

        resp.stream = wrapped()
        return resp


def streaming_terminal(events: int = 5) -> Any:
    async def call(ctx: RequestContext) -> ProxyResponse:
        async def gen() -> AsyncIterator[Event]:
            for i in range(events):
                yield Event.of({"choices": [{"index": 0, "delta": {"content": str(i)}, "finish_reason": None}]})
            yield DONE

        return ProxyResponse(200, stream=gen())

    return call


class TestStreamFailures:
    async def test_strict_failure_mid_stream_names_the_interceptor(self) -> None:
        """A strict interceptor failing while its stream is read raises an InterceptorError naming it."""
        chain = build_chain([_BreaksMidStream(best_effort=False)], streaming_terminal())
        resp = await chain(RequestContext(method="POST", path="/v1/chat/completions", json={}))
        assert resp.stream is not None
        seen = []
        with pytest.raises(InterceptorError, match="breaker"):
            async for event in resp.stream:
                seen.append(event)
        assert len(seen) == 2

    async def test_stream_passed_on_unchanged_is_not_wrapped(self) -> None:
        """Strict layers that return the stream they got from below add no level the events must pass through."""
        below: list[AsyncIterator[Event] | None] = []

        async def terminal(ctx: RequestContext) -> ProxyResponse:
            resp = await streaming_terminal()(ctx)
            below.append(resp.stream)
            return resp

        for layers in ([Recorder("a", [])], [Recorder("a", []), Recorder("b", [])]):
            chain = build_chain(layers, terminal)
            resp = await chain(RequestContext(method="POST", path="/v1/chat/completions", json={}))
            assert resp.stream is below[-1]

    async def test_best_effort_failure_mid_stream_loses_no_event(self) -> None:
        """A best-effort interceptor failing mid-stream drops out; the client still gets every event, in order."""
        chain = build_chain([_BreaksMidStream(best_effort=True)], streaming_terminal())
        resp = await chain(RequestContext(method="POST", path="/v1/chat/completions", json={}))
        assert resp.stream is not None
        got = [e.json async for e in resp.stream]
        assert [g["choices"][0]["delta"]["content"] for g in got if g] == ["0", "1", "2", "3", "4"]
        assert got[-1] is None  # [DONE]
