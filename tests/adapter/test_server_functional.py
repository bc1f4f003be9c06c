"""The proxy over real sockets: the openai SDK through it, errors, retries, timeouts, headers."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from evalproxy import BaseInterceptor, Next, ProxyResponse, RequestContext, register_for_adapter
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.registry import Registry, resolve
from evalproxy.adapter.server.app import create_app
from evalproxy.simulator import Fault, SimulatedModel
from tests.conftest import ProxyServer, make_loaded

ENDPOINT_ONLY = {"interceptors": ["endpoint"], "generate_html_report": False}
MSGS = [{"role": "user", "content": "What is two plus two?"}]


def sdk(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="test-key", max_retries=0)


def strip_ids(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("id", "created")}


class TestOpenAISdk:
    async def test_chat_completions_embeddings_match_direct(self, make_proxy: Any, upstream: TestServer) -> None:
        """The openai SDK gets the same chat, completions and embeddings answers through the proxy as directly."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        direct, via = sdk(str(upstream.make_url("/v1"))), sdk(str(proxy.make_url("/v1")))
        for client_pair in ((direct, via),):
            results = []
            for c in client_pair:
                chat = await c.chat.completions.create(model="m", messages=MSGS, temperature=0)  # type: ignore[arg-type]
                comp = await c.completions.create(model="m", prompt=["a b", "c d e"], temperature=0.0, seed=3)
                emb = await c.embeddings.create(model="m", input=["x", "y"])
                results.append((strip_ids(chat.model_dump()), strip_ids(comp.model_dump()), emb.model_dump()))
            assert results[0] == results[1]
        await direct.close()
        await via.close()

    async def test_models_list_is_forwarded(self, make_proxy: Any) -> None:
        """GET /v1/models reaches the upstream and its list comes back."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        client = sdk(str(proxy.make_url("/v1")))
        models = await client.models.list()
        assert [m.id for m in models.data] == ["sim-model"]
        await client.close()

    async def test_stream_first_chunk_arrives_before_upstream_finishes(
        self, make_proxy: Any, sim: SimulatedModel
    ) -> None:
        """A streamed answer is passed through event by event: the first chunk arrives while upstream still sends."""
        sim.finish_gate = gate = asyncio.Event()
        proxy = await make_proxy(ENDPOINT_ONLY)
        client = sdk(str(proxy.make_url("/v1")))
        stream = await client.chat.completions.create(
            model="m", messages=MSGS, stream=True, temperature=0, stream_options={"include_usage": True})  # type: ignore[arg-type]
        text = ""
        usage = None
        async for chunk in stream:
            gate.set()  # the model sends its finish event only now, or after a long wait recorded as not opened
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert sim.gate_opened == [True]  # the first chunk reached the client before the model sent its finish
        expected, _ = sim.make_content({"temperature": 0}, MSGS[0]["content"])
        assert text == expected
        assert usage is not None and usage.completion_tokens == len(expected.split())
        await client.close()


class TestErrors:
    async def test_upstream_down_is_502(self, make_proxy: Any) -> None:
        """An upstream that refuses connections gives 502 with an OpenAI-shaped error."""
        proxy = await make_proxy(ENDPOINT_ONLY, upstream_url="http://127.0.0.1:9/v1", max_retries=0)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert resp.status == 502
        body = await resp.json()
        assert body["error"]["code"] == "upstream_unreachable"
        assert "127.0.0.1:9" in body["error"]["message"]

    async def test_upstream_too_slow_is_504(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """An upstream slower than request_timeout gives 504."""
        sim.script(Fault(delay=2.0))
        proxy = await make_proxy(ENDPOINT_ONLY, request_timeout=0.3, max_retries=0)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"

    async def test_stream_whose_headers_never_come_is_504(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A stream request whose upstream sends nothing, not even headers, within request_timeout gives 504."""
        sim.script(Fault(delay=2.0))
        proxy = await make_proxy(ENDPOINT_ONLY, request_timeout=0.3, max_retries=0)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
        assert resp.status == 504
        assert (await resp.json())["error"]["code"] == "upstream_timeout"

    async def test_500_then_200_is_retried(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A 500 followed by a 200 is retried and the client sees the 200."""
        sim.script(Fault(status=500))
        proxy = await make_proxy(ENDPOINT_ONLY, retry_backoff=0.01)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert resp.status == 200
        assert len(sim.requests_to("/chat/completions")) == 2

    async def test_429_retry_after_is_waited_out(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A 429 with Retry-After: 1 is retried no sooner than one second later."""
        sim.script(Fault(status=429, retry_after="1"))
        proxy = await make_proxy(ENDPOINT_ONLY, retry_backoff=0.01)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert resp.status == 200
        first, second = sim.requests_to("/chat/completions")
        assert second.at - first.at >= 0.95

    async def test_retries_are_bounded_and_the_last_status_is_honest(
        self, make_proxy: Any, sim: SimulatedModel
    ) -> None:
        """A storm of 503s is retried max_retries times, then the upstream's own 503 reaches the client."""
        sim.script(*[Fault(status=503)] * 5)
        proxy = await make_proxy(ENDPOINT_ONLY, retry_backoff=0.01, max_retries=2)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert resp.status == 503
        assert len(sim.requests_to("/chat/completions")) == 3

    async def test_client_errors_pass_through_unretried(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """An upstream 400 is passed through with its body and not retried."""
        sim.script(Fault(status=400))
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == "simulated error 400"
        assert len(sim.requests_to("/chat/completions")) == 1

    @pytest.mark.parametrize(
        ("body", "status", "fragment"),
        [
            (b"{not json", 400, "not valid JSON"),
            (b"[1, 2]", 400, "must be a JSON object"),
            (b"", 400, "empty"),
            (b"\xff\xfe{}", 400, "not valid JSON"),
        ],
    )
    async def test_bad_bodies(self, make_proxy: Any, sim: SimulatedModel, body: bytes, status: int,
                              fragment: str) -> None:
        """A body that is not a JSON object gets a precise 400 and never reaches the upstream."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == status
        assert fragment in (await resp.json())["error"]["message"]
        assert sim.log == []

    async def test_body_over_limit_is_413(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A body over max_request_bytes gets 413."""
        proxy = await make_proxy(ENDPOINT_ONLY, max_request_bytes=2048)
        resp = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 4096}]})
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "request_too_large"

    async def test_large_bodies_under_the_default_limit_pass(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A 3 MiB request (larger than aiohttp's 1 MiB default) is accepted and forwarded."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        big = "word " * (3 * 1024 * 1024 // 5)
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": big}]})
        resp = await proxy.post("/v1/chat/completions", data=io.BytesIO(body),
                                headers={"Content-Type": "application/json"})
        assert resp.status == 200
        assert sim.log[-1].body == orjson.loads(body)


class TestHeadersAndBodies:
    async def test_api_key_injected_and_hop_by_hop_dropped(
        self, make_proxy: Any, sim: SimulatedModel, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The upstream key comes from the env var api_key_name names; the client's is replaced."""
        monkeypatch.setenv("EVALPROXY_TEST_KEY", "sk-upstream-secret")
        proxy = await make_proxy(ENDPOINT_ONLY, api_key_name="EVALPROXY_TEST_KEY")
        await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS},
                         headers={"Authorization": "Bearer client", "Connection": "keep-alive",
                                  "x-stainless-retry-count": "0"})
        got = sim.log[-1].headers
        assert got["Authorization"] == "Bearer sk-upstream-secret"
        assert got["x-stainless-retry-count"] == "0"
        assert got.get("Connection", "").lower() != "upgrade"

    async def test_unknown_fields_reach_upstream_byte_for_byte(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Vendor extensions and number formats go upstream as the client sent them."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        raw = b'{"model":"m","messages":[],"temperature":0.0,"top_p":1.0,"chat_template_kwargs":{"thinking":true}}'
        seen: list[bytes] = []

        async def capture(request: Any) -> Any:
            seen.append(await request.read())
            from aiohttp import web
            return web.json_response({"choices": []})

        from aiohttp import web
        app = web.Application()
        app.router.add_post("/v1/chat/completions", capture)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        proxy = await make_proxy(ENDPOINT_ONLY, upstream_url=str(server.make_url("/v1")))
        resp = await proxy.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 200
        assert seen == [raw]
        await server.close()

    async def test_null_content_becomes_empty_string(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """content: null in an answer is normalised to an empty string."""
        sim.script(Fault(body=b'{"choices":[{"index":0,"message":{"role":"assistant","content":null},'
                              b'"finish_reason":"stop"}]}'))
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert (await resp.json())["choices"][0]["message"]["content"] == ""

    async def test_overhead_header_and_health(self, make_proxy: Any) -> None:
        """Every answer carries the proxy's overhead in a header; /health reports counts."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert float(resp.headers["X-EvalProxy-Overhead-Ms"]) >= 0
        health = await (await proxy.get("/health")).json()
        assert health["status"] == "ok" and health["requests"] == 1

    async def test_concurrent_requests_all_answered(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """Many concurrent requests through one pooled session all succeed."""
        sim.latency = 0.05
        proxy = await make_proxy(ENDPOINT_ONLY, max_concurrent_requests=16)
        resps = await asyncio.gather(*[
            proxy.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": str(i)}]})
            for i in range(100)])
        assert [r.status for r in resps] == [200] * 100


class TestAdminPaths:
    async def test_run_post_hook_runs_hooks(self, make_proxy: Any, tmp_path: Any) -> None:
        """POST /adapterserver/run-post-hook runs the configured hooks now."""
        from pathlib import Path
        marker = tmp_path / "hooks.txt"
        proxy = await make_proxy({
            "interceptors": ["endpoint"], "discovery": {"dirs": [str(Path(__file__).parent / "plugins")]},
            "post_eval_hooks": [{"name": "touch_file", "config": {"path": str(marker)}}]})
        resp = await proxy.post("/adapterserver/run-post-hook")
        assert resp.status == 200
        assert (await resp.json())["hooks"][0]["ok"] is True
        assert marker.read_text().count("\n") == 1

    async def test_admin_token_is_required_when_set(
        self, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With admin_token_name set, the admin path refuses requests without the token."""
        monkeypatch.setenv("EVALPROXY_ADMIN", "s3cret")
        proxy = await make_proxy(ENDPOINT_ONLY, admin_token_name="EVALPROXY_ADMIN")
        assert (await proxy.post("/adapterserver/run-post-hook")).status == 401
        ok = await proxy.post("/adapterserver/run-post-hook", headers={"X-Admin-Token": "s3cret"})
        assert ok.status == 200


class TestRouting:
    async def test_named_and_other_paths_reach_the_one_proxy_handler(self, make_proxy: Any,
                                                                      sim: SimulatedModel) -> None:
        """The OpenAI paths, routed by name, and any other path (the catch-all) are the proxy's, for every method:
        an answer, the proxy's own refusal of a path it does not forward, its answer to another method."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        router = proxy.server.app.router
        handlers = {route.handler for resource in router.resources()
                    if resource.canonical in ("/v1/chat/completions", "/v1/models", "/{tail}") for route in resource}
        assert len(handlers) == 1
        ok = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        assert ok.status == 200 and (await ok.json())["choices"]
        assert (await proxy.get("/v1/models")).status == 200
        other = await proxy.post("/v2/anything", json={"x": 1})
        assert other.status == 404 and (await other.json())["error"]["code"] == "path_not_forwarded"
        method = await proxy.delete("/v1/chat/completions")
        assert method.status == 405 and (await method.json())["error"]["code"] == "method_not_forwarded"


class TestStreamUsage:
    async def test_usage_is_asked_for_but_hidden_from_the_client(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A stream whose client did not ask for usage: upstream is asked, the client sees no usage chunk."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True,
                                                              "temperature": 0})
        raw = await resp.read()
        assert sim.log[-1].body is not None
        assert sim.log[-1].body["stream_options"] == {"include_usage": True}
        assert b'"usage"' not in raw
        assert raw.endswith(b"data: [DONE]\n\n")
        text = "".join(
            (orjson.loads(line[6:])["choices"][0]["delta"].get("content") or "")
            for line in raw.split(b"\n\n") if line.startswith(b"data: {"))
        assert text == sim.make_content({"temperature": 0}, MSGS[0]["content"])[0]

    async def test_client_asked_usage_is_passed_through(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A client that asked for usage gets the upstream's usage chunk unchanged."""
        proxy = await make_proxy(ENDPOINT_ONLY)
        resp = await proxy.post("/v1/chat/completions", json={
            "model": "m", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}})
        events = [e for e in (await resp.read()).split(b"\n\n") if e.startswith(b"data: {")]
        assert orjson.loads(events[-1][6:])["choices"] == []
        assert "usage" in orjson.loads(events[-1][6:])

    async def test_stream_usage_can_be_turned_off(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """endpoint's stream_usage: false sends the request upstream exactly as the client did."""
        proxy = await make_proxy({"interceptors": [{"name": "endpoint", "config": {"stream_usage": False}}],
                                  "generate_html_report": False})
        await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
        assert sim.log[-1].body is not None and "stream_options" not in sim.log[-1].body


class TestNemoStyle:
    @pytest.mark.parametrize(("endpoint_type", "suffix"), [("chat", "/chat/completions"),
                                                           ("completions", "/completions")])
    async def test_post_to_root_follows_endpoint_type(
        self, make_proxy: Any, sim: SimulatedModel, endpoint_type: str, suffix: str
    ) -> None:
        """A harness posting to the proxy's root URL reaches the endpoint endpoint_type names."""
        proxy = await make_proxy({**ENDPOINT_ONLY, "endpoint_type": endpoint_type})
        body = {"model": "m", "messages": MSGS} if endpoint_type == "chat" else {"model": "m", "prompt": "x"}
        resp = await proxy.post("/", json=body)
        assert resp.status == 200
        assert sim.log[-1].path == "/v1" + suffix

    async def test_log_failed_requests(self, make_proxy: Any, sim: SimulatedModel,
                                       caplog: pytest.LogCaptureFixture) -> None:
        """log_failed_requests writes the failed request and the answer to the log."""
        sim.script(Fault(status=400))
        proxy = await make_proxy({**ENDPOINT_ONLY, "log_failed_requests": True})
        await proxy.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
        failed = [r.getMessage() for r in caplog.records if "request failed with 400" in r.getMessage()]
        assert failed and "simulated error 400" in failed[0] and "two plus two" in failed[0]


class TestNonJsonBodies:
    async def test_multipart_upload_passes_through(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A multipart body (an audio upload) is forwarded as it came, not parsed as JSON."""
        import aiohttp

        proxy = await make_proxy({"interceptors": ["caching", "endpoint"], "generate_html_report": False})
        form = aiohttp.FormData()
        form.add_field("model", "whisper")
        form.add_field("file", b"RIFF....WAVE", filename="a.wav", content_type="audio/wav")
        resp = await proxy.post("/v1/audio/transcriptions", data=form)
        assert resp.status == 200
        assert (await resp.json())["text"].endswith("bytes of audio")
        assert sim.log[-1].path == "/v1/audio/transcriptions" and sim.log[-1].body is None


class StreamWrapper(BaseInterceptor):
    """A test unit that replaces each stream with :meth:`wrap` of it."""

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        if resp.stream is not None:
            resp.stream = self.wrap(resp.stream)
        return resp

    def wrap(self, inner: AsyncIterator[Event]) -> AsyncIterator[Event]:
        raise NotImplementedError


async def proxy_with(unit: type[StreamWrapper], tmp_path: Path, upstream: TestServer,
                     **server: Any) -> TestClient[Any, Any]:
    """The proxy with ``unit`` (not a built-in: registered for this test) before the endpoint."""
    registry = Registry.default()
    registry.add(unit)
    loaded = make_loaded({"interceptors": [unit.name, "endpoint"], "post_eval_hooks": []}, tmp_path,
                         str(upstream.make_url("/v1")), **server)
    client: TestClient[Any, Any] = TestClient(ProxyServer(create_app(loaded, resolved=resolve(loaded, registry)),
                                                         host="127.0.0.1"))
    await client.start_server()
    return client


@register_for_adapter(name="breaks_streams", description="Fails while a stream it wraps is read (for tests).")
class BreaksStreams(StreamWrapper):
    async def wrap(self, inner: AsyncIterator[Event]) -> AsyncIterator[Event]:
        async for event in inner:
            if event.json and event.json.get("choices") and event.json["choices"][0].get("finish_reason"):
                raise RuntimeError("cannot handle the finish")
            yield event


class TestStreamErrorPolicy:
    async def test_interceptor_failing_mid_stream_ends_it_with_an_error_event(
        self, tmp_path: Path, upstream: TestServer
    ) -> None:
        """The stream ends with an OpenAI error naming the interceptor, and /metrics counts a 500, not a 200."""
        client = await proxy_with(BreaksStreams, tmp_path, upstream)
        try:
            resp = await client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "stream": True})
            text = await resp.text()
            last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
            error = orjson.loads(last[6:])["error"]
            assert "breaks_streams" in error["message"] and error["code"] == "interceptor_failed"
            metrics = await (await client.get("/metrics")).text()
            assert 'evalproxy_requests_total{cache="miss",path="chat",status="500"} 1.0' in metrics
        finally:
            await client.close()


@register_for_adapter(name="slow_reader", description="Pauses after the first event of a stream (for tests).")
class SlowReader(StreamWrapper):
    async def wrap(self, inner: AsyncIterator[Event]) -> AsyncIterator[Event]:
        first = True
        async for event in inner:
            yield event
            if first:
                first = False
                await asyncio.sleep(0.8)  # longer than request_timeout: the proxy, not the upstream, is slow


async def test_a_slow_layer_above_is_not_a_silent_upstream(tmp_path: Path, upstream: TestServer) -> None:
    """request_timeout bounds the upstream's silence only: a layer that takes longer than it between two events of
    an upstream that sent them all at once gets the whole stream, with no timeout error."""
    client = await proxy_with(SlowReader, tmp_path, upstream, request_timeout=0.3)
    try:
        resp = await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True})
        text = await resp.text()
        assert '"error"' not in text and text.rstrip().endswith("data: [DONE]")
    finally:
        await client.close()
