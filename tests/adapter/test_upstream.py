"""Upstream URL mapping, the query string on its way upstream, and Retry-After parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
