"""Stream events that arrive together leave together, and no event waits for one that has not arrived yet."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from evalproxy.adapter.server.app import create_app
from tests.conftest import ProxyServer, make_loaded

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAIN = {"interceptors": ["caching", "endpoint", "response_stats"], "generate_html_report": False}
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def event(obj: dict[str, Any] | str) -> bytes:
    return b"data: " + (obj.encode() if isinstance(obj, str) else orjson.dumps(obj)) + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@contextlib.asynccontextmanager
async def proxy_for(model: Handler, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    """The proxy (caching, endpoint, response_stats) in front of ``model`` serving chat completions."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", model)
    up = TestServer(app, host="127.0.0.1")
    await up.start_server()
    client: TestClient[Any, Any] = TestClient(ProxyServer(
        create_app(make_loaded(CHAIN, tmp_path, str(up.make_url("/v1")))), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await up.close()


async def test_an_event_held_for_a_dropped_successor_is_not_kept_waiting(tmp_path: Path) -> None:
    """The upstream sends an answer event and a usage-only event (which the proxy takes out) in one write, then
    waits until the client has the answer event: the proxy must not hold it back for the event it dropped."""
    client_has_first = asyncio.Event()

    async def model(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        usage = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        await out.write(event(chunk("first")) + event(usage))
        await asyncio.wait_for(client_has_first.wait(), 30)  # a held event would never reach the client
        await out.write(event(chunk(finish="stop")) + event("[DONE]"))
        await out.write_eof()
        return out

    async with proxy_for(model, tmp_path) as client:
        resp = await client.post("/v1/chat/completions", json=BODY)
        got = b""
        while b"[DONE]" not in got:
            data = await resp.content.readany()
            assert data, f"the stream ended early: {got!r}"
            got += data
            if b'"first"' in got:
                client_has_first.set()
        assert got.count(b"data: ") == 3 and b'"usage"' not in got  # first, finish, [DONE]; the usage taken out


async def test_events_that_arrive_together_reach_the_client_whole_and_in_order(tmp_path: Path) -> None:
    """Forty events in one upstream write, then more one by one: the client reads every event, byte for byte, in
    the order sent."""
    sent = [event(chunk(f"t{i}")) for i in range(40)]
    tail = [event(chunk(f"u{i}")) for i in range(5)] + [event(chunk(finish="stop")), event("[DONE]")]

    async def model(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b"".join(sent))
        for e in tail:
            await asyncio.sleep(0)
            await out.write(e)
        await out.write_eof()
        return out

    async with proxy_for(model, tmp_path) as client:
        resp = await client.post("/v1/chat/completions", json={**BODY, "stream_options": {"include_usage": True}})
        assert await resp.read() == b"".join(sent + tail)
