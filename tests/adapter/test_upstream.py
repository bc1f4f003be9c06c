"""Upstream URL mapping, the query string on its way upstream, and Retry-After parsing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from evalproxy.adapter.server.upstream import parse_retry_after, upstream_url_for
from evalproxy.simulator import SimulatedModel


class TestUpstreamUrl:
    @pytest.mark.parametrize(
        ("upstream", "path", "expected"),
        [
            ("http://h/v1", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/", "/v1/completions", "http://h/v1/completions"),
            ("http://h/v1", "/v1/models", "http://h/v1/models"),
            ("http://h", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/", "http://h/v1/chat/completions"),
            ("http://h/v1/chat/completions", "/v1/completions", "http://h/v1/completions"),
            ("http://h/v1/chat/completions", "/v1/embeddings", "http://h/v1/embeddings"),
            ("http://h/v1/completions", "/v1/chat/completions", "http://h/v1/chat/completions"),
            ("http://h/v1/completions", "/v1/completions", "http://h/v1/completions"),
            ("http://h/v1", "/tokenize", "http://h/tokenize"),
            ("http://h/openai/v1", "/v1/chat/completions", "http://h/openai/v1/chat/completions"),
            ("https://h/v1beta/openai", "/v1/chat/completions", "https://h/v1beta/openai/chat/completions"),
            ("https://h/v1beta/openai/", "/v1/models", "https://h/v1beta/openai/models"),
            ("https://h/v1/openai", "/v1/chat/completions", "https://h/v1/openai/chat/completions"),
            ("https://h/v1/openai", "/v1/embeddings", "https://h/v1/openai/embeddings"),
        ],
    )
    def test_mapping(self, upstream: str, path: str, expected: str) -> None:
        """A request path lands on the right upstream URL for base and full endpoint URLs alike."""
        assert upstream_url_for(upstream, path) == expected

    @pytest.mark.parametrize(
        ("upstream", "path", "query", "expected"),
        [
            ("https://h/openai/deployments/x?api-version=2024-02-01", "/v1/chat/completions", "",
             "https://h/openai/deployments/x/chat/completions?api-version=2024-02-01"),
            ("https://h/openai/deployments/x?api-version=2024-02-01", "/v1/chat/completions", "user=7",
             "https://h/openai/deployments/x/chat/completions?api-version=2024-02-01&user=7"),
            ("https://h/openai/deployments/x/chat/completions?api-version=2024-02-01", "/v1/chat/completions", "",
             "https://h/openai/deployments/x/chat/completions?api-version=2024-02-01"),
            ("http://h/v1", "/v1/chat/completions", "api-version=2024-06-01",
             "http://h/v1/chat/completions?api-version=2024-06-01"),
        ],
    )
    def test_query_strings(self, upstream: str, path: str, query: str, expected: str) -> None:
        """The upstream URL keeps its own query string and the request's is added after it."""
        assert upstream_url_for(upstream, path, query) == expected


@pytest.fixture
async def recording_upstream(sim: SimulatedModel) -> Any:
    """The simulated model behind a middleware that records each request's query string (the sim keeps paths only)."""
    queries: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        queries.append(request.rel_url.raw_query_string)
        return await handler(request)  # type: ignore[no-any-return]

    app = sim.app()
    app.middlewares.append(record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    server.queries = queries  # type: ignore[attr-defined]
    yield server
    await server.close()


class TestQueryStringFunctional:
    async def test_query_reaches_upstream(self, make_proxy: Any, recording_upstream: Any, sim: SimulatedModel) -> None:
        """The client's query string reaches the upstream, after the upstream URL's own."""
        url = str(recording_upstream.make_url("/v1")) + "?api-version=2024-02-01"
        proxy = await make_proxy(upstream_url=url, max_retries=0)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        resp = await proxy.post("/v1/chat/completions?user=7&x=a%26b%3D", json=body)
        assert resp.status == 200
        await resp.read()
        assert [r.path for r in sim.log] == ["/v1/chat/completions"]
        assert recording_upstream.queries == ["api-version=2024-02-01&user=7&x=a%26b%3D"]

    async def test_query_is_part_of_the_cache_key(
        self, make_proxy: Any, recording_upstream: Any, sim: SimulatedModel, tmp_path: Path
    ) -> None:
        """Two requests differing only in ?api-version= are cached apart: the second is a miss, a repeat a hit."""
        proxy = await make_proxy(
            {"interceptors": [{"name": "caching", "config": {"cache_dir": str(tmp_path / "cache"),
                                                           "reuse_cached_responses": True}}, "endpoint"]},
            upstream_url=str(recording_upstream.make_url("/v1")), max_retries=0)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        seen = []
        for version in ("2024-02-01", "2024-06-01", "2024-06-01"):
            resp = await proxy.post(f"/v1/chat/completions?api-version={version}", json=body)
            assert resp.status == 200
            await resp.read()
            seen.append(resp.headers["X-EvalProxy-Cache"])
        assert seen == ["miss", "miss", "hit"]
        assert recording_upstream.queries == ["api-version=2024-02-01", "api-version=2024-06-01"]


class TestRetryAfter:
    @pytest.mark.parametrize(("value", "expected"), [("2", 2.0), ("0.5", 0.5), (None, None), ("soon", None),
                                                     ("-3", 0.0)])
    def test_seconds(self, value: str | None, expected: float | None) -> None:
        """Retry-After in seconds is read as a delay; nonsense is ignored."""
        assert parse_retry_after(value) == expected

    def test_http_date_in_the_past_is_zero(self) -> None:
        """A Retry-After date in the past means retry now."""
        assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# -- a hostile or broken upstream (issue 18) --------------------------------------------------------------------------
KIB = 1024
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _chunk(text: str) -> bytes:
    obj = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _answer(content: str) -> bytes:
    return orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}]})


async def _endless(request: web.Request, piece: bytes, content_type: str, first: bytes = b"") -> web.StreamResponse:
    """Send ``first``, then ``piece`` again and again until the reader goes away (a reader that reads all never
    gets an answer)."""
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write(first)
        while True:
            await resp.write(piece)
    return resp


@pytest.fixture
async def hostile() -> Any:
    """A model endpoint on 127.0.0.1 that answers with ``hostile.behave`` (set by the test); counts its requests."""
    calls: list[str] = []
    behaviour: list[Behaviour] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        calls.append(request.path)
        return await behaviour[0](request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    server.calls = calls  # type: ignore[attr-defined]
    server.behaviour = behaviour  # type: ignore[attr-defined]
    yield server
    await server.close()


def _cached() -> dict[str, Any]:
    return {"interceptors": [{"name": "caching", "config": {"reuse_cached_responses": True}}, "endpoint"],
            "generate_html_report": False}


def _stream_events(raw: bytes) -> list[Any]:
    return [orjson.loads(e[6:]) if e[6:] != b"[DONE]" else "[DONE]"
            for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


class TestAnswerLimitFunctional:
    async def test_declared_length_over_the_limit_is_refused(self, make_proxy: Any, hostile: Any) -> None:
        """A JSON answer whose Content-Length passes max_answer_bytes gives a 502 answer_too_large naming the
        limit and the setting, and is not cached."""
        async def big(request: web.Request) -> web.StreamResponse:
            return web.Response(body=_answer("x" * (100 * KIB)), content_type="application/json")
        hostile.behaviour.append(big)
        proxy = await make_proxy(_cached(), upstream_url=str(hostile.make_url("/v1")), max_retries=0,
                                 max_answer_bytes=64 * KIB)
        for _ in range(2):
            resp = await proxy.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 502
            error = (await resp.json())["error"]
            assert error["code"] == "answer_too_large"
            assert "max_answer_bytes" in error["message"] and "65536" in error["message"]
        assert len(hostile.calls) == 2  # the first answer was not cached

    async def test_head_answer_declaring_a_large_body_passes(self, make_proxy: Any, hostile: Any) -> None:
        """A HEAD answer's Content-Length describes a body never sent: it is not held against max_answer_bytes."""
        async def big(request: web.Request) -> web.StreamResponse:
            return web.Response(body=b"x" * (100 * KIB), content_type="application/json")
        hostile.behaviour.append(big)
        proxy = await make_proxy({"interceptors": ["endpoint"], "generate_html_report": False},
                                 upstream_url=str(hostile.make_url("/v1")), max_retries=0,
                                 max_answer_bytes=64 * KIB, forward_methods=["GET", "POST", "HEAD"])
        resp = await proxy.head("/v1/models")
        assert resp.status == 200

    @pytest.mark.timeout(10)  # a hang guard: a proxy that reads the whole endless answer never answers
    async def test_endless_answer_is_read_only_up_to_the_limit(self, make_proxy: Any, hostile: Any) -> None:
        """A JSON answer without Content-Length that never ends is read up to max_answer_bytes, then refused."""
        hostile.behaviour.append(lambda r: _endless(r, b"x" * (16 * KIB), "application/json"))
        proxy = await make_proxy(_cached(), upstream_url=str(hostile.make_url("/v1")), max_retries=0,
                                 max_answer_bytes=64 * KIB)
        resp = await proxy.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 502
        error = (await resp.json())["error"]
        assert error["code"] == "answer_too_large" and "max_answer_bytes" in error["message"]

    @pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
    async def test_answer_within_the_limit_passes(self, make_proxy: Any, hostile: Any, declared: bool) -> None:
        """A JSON answer just under max_answer_bytes, declared or chunked, reaches the client whole and is cached."""
        body = _answer("y" * (60 * KIB))

        async def answer(request: web.Request) -> web.StreamResponse:
            if declared:
                return web.Response(body=body, content_type="application/json")
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            await resp.prepare(request)
            for i in range(0, len(body), 4 * KIB):
                await resp.write(body[i:i + 4 * KIB])
            await resp.write_eof()
            return resp
        hostile.behaviour.append(answer)
        proxy = await make_proxy(_cached(), upstream_url=str(hostile.make_url("/v1")), max_retries=0,
                                 max_answer_bytes=64 * KIB)
        for _ in range(2):
            resp = await proxy.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 200
            assert await resp.read() == body
        assert len(hostile.calls) == 1

    @pytest.mark.timeout(10)  # a hang guard: an endless stream must be ended by the proxy
    async def test_stream_over_the_limit_ends_with_an_error_event(self, make_proxy: Any, hostile: Any) -> None:
        """A stream whose total passes max_answer_bytes ends with an answer_too_large error event, not [DONE],
        and is not cached."""
        hostile.behaviour.append(lambda r: _endless(r, _chunk("z" * 900), "text/event-stream"))
        proxy = await make_proxy(_cached(), upstream_url=str(hostile.make_url("/v1")), max_retries=0,
                                 max_answer_bytes=64 * KIB)
        for _ in range(2):
            resp = await proxy.post("/v1/chat/completions", json={**CHAT, "stream": True})
            *before, last = _stream_events(await resp.read())
            assert len(before) < 80 and all(e["choices"] for e in before)  # what came before the limit
            error = last["error"]
            assert error["code"] == "answer_too_large" and "max_answer_bytes" in error["message"]
        assert len(hostile.calls) == 2


class TestSseLineLimitFunctional:
    @pytest.mark.timeout(10)  # a hang guard: a proxy whose buffer grows without bound never answers
    @pytest.mark.parametrize("piece", [b"data: " + b"w" * 1000 + b"\n", b"w" * 4096],
                             ids=["no-blank-line", "one-endless-line"])
    async def test_unended_event_ends_the_stream(self, make_proxy: Any, hostile: Any, piece: bytes) -> None:
        """An SSE event never ended by a blank line (many lines, or one endless line) ends the stream at
        max_sse_line_bytes with an answer_too_large error event, and is not cached."""
        hostile.behaviour.append(lambda r: _endless(r, piece, "text/event-stream", first=_chunk("first")))
        proxy = await make_proxy(_cached(), upstream_url=str(hostile.make_url("/v1")), max_retries=0,
                                 max_sse_line_bytes=8 * KIB)
        for _ in range(2):
            resp = await proxy.post("/v1/chat/completions", json={**CHAT, "stream": True})
            events = _stream_events(await resp.read())
            assert events[0]["choices"][0]["delta"]["content"] == "first"
            error = events[-1]["error"]
            assert error["code"] == "answer_too_large" and "max_sse_line_bytes" in error["message"]
            assert "8192" in error["message"]
        assert len(hostile.calls) == 2

    async def test_event_split_into_pieces_arrives_whole(self, make_proxy: Any, hostile: Any) -> None:
        """Events written a few bytes at a time, with CRLF line ends split across writes, reach the client whole."""
        raw = b"".join(_chunk(f"part{i} ") for i in range(5)).replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"

        async def stream(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(0, len(raw), 7):
                await resp.write(raw[i:i + 7])
                await asyncio.sleep(0)  # give the reader a chance to see each piece on its own
            await resp.write_eof()
            return resp
        hostile.behaviour.append(stream)
        proxy = await make_proxy({"interceptors": ["endpoint"], "generate_html_report": False},
                                 upstream_url=str(hostile.make_url("/v1")), max_retries=0)
        resp = await proxy.post("/v1/chat/completions", json={**CHAT, "stream": True})
        events = _stream_events(await resp.read())
        assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == [f"part{i} " for i in range(5)]
        assert events[-1] == "[DONE]"

