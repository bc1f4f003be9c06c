"""A stream's token usage is part of the answer: asked for on the client's behalf as a change of the request (so the
cache key covers what is sent), kept and replayed with the stream, and taken out only of what the client reads."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.state import CACHE_HIT, CACHE_KEY
from evalproxy.adapter.server.app import PROXY
from evalproxy.simulator import SimulatedModel
from evalproxy.storage import cache_key

CHAIN = {"interceptors": [{"name": "caching", "config": {"reuse_cached_responses": True}}, "endpoint"],
         "generate_html_report": False}
BODY = {"model": "m", "messages": [{"role": "user", "content": "count to three"}], "stream": True, "temperature": 0}

Seen = list[tuple[bool, str | None, dict[str, Any] | None]]


def events(raw: bytes) -> list[Any]:
    return [orjson.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]


@pytest.fixture
async def proxy(make_proxy: Any) -> Any:
    client = await make_proxy(CHAIN)
    seen: Seen = []

    def observe(ctx: RequestContext, resp: ProxyResponse | None, status: int) -> None:
        seen.append((ctx.state.get(CACHE_HIT, False), ctx.state.get(CACHE_KEY),
                     resp.stream_usage if resp is not None else None))

    client.server.app[PROXY].observers.append(observe)
    client.seen = seen
    return client


async def test_replayed_stream_reports_the_same_usage(proxy: Any, sim: SimulatedModel) -> None:
    """A stream whose client did not ask for usage reports the same token usage when it is replayed from the
    cache as when the model answered it, and neither time does the client see a usage chunk."""
    for _ in range(2):
        resp = await proxy.post("/v1/chat/completions", json=BODY)
        assert resp.status == 200
        assert not [e for e in events(await resp.read()) if "usage" in e]
    (hit0, _, usage0), (hit1, _, usage1) = proxy.seen
    assert (hit0, hit1) == (False, True)
    assert usage0 is not None and usage0["completion_tokens"] > 0
    assert usage1 == usage0
    assert len(sim.requests_to("/chat/completions")) == 1


async def test_client_that_asked_for_usage_gets_it_from_the_cache_too(proxy: Any) -> None:
    """A client that asked for usage (stream_options.include_usage) gets the usage-only chunk, live and replayed."""
    body = {**BODY, "stream_options": {"include_usage": True}}
    got = []
    for _ in range(2):
        resp = await proxy.post("/v1/chat/completions", json=body)
        usage_events = [e for e in events(await resp.read()) if e.get("usage")]
        got.append(usage_events[-1]["usage"])
    assert got[0] == got[1] and got[0]["total_tokens"] > 0


@pytest.mark.parametrize("body", [BODY, {**BODY, "stream_options": {"include_usage": True}},
                                  {**BODY, "stream": False}], ids=["usage-added", "usage-asked", "whole"])
async def test_what_goes_upstream_is_what_the_key_was_made_from(proxy: Any, sim: SimulatedModel,
                                                                  body: dict[str, Any]) -> None:
    """The body the upstream receives gives the very cache key the answer was stored under."""
    resp = await proxy.post("/v1/chat/completions", json=body)
    await resp.read()
    (_, key, _), = proxy.seen
    received = sim.requests_to("/chat/completions")[-1].body
    assert key == cache_key("/v1/chat/completions", received)
