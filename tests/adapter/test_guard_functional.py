"""The proxy serves its own user only: Host, Origin, Content-Type, paths and methods (issue 18, docs/security.md).

Each attack is sent to a real proxy in front of the simulated model; the upstream's log shows what reached it.
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import orjson
import pytest

from evalproxy.adapter.server.guard import SitePolicy
from evalproxy.simulator import Fault, SimulatedModel

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
KEY = "sk-user-KEY-5150"


async def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (no client normalises the path) and read the status and the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.fixture
async def proxy(make_proxy: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("GUARD_TEST_KEY", KEY)
    return await make_proxy({"interceptors": ["caching", "endpoint"]}, api_key_name="GUARD_TEST_KEY")


class TestHost:
    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/health", "/metrics", "/adapterserver/run-post-hook"])
    async def test_foreign_host_is_refused_everywhere(self, proxy: Any, sim: SimulatedModel, path: str) -> None:
        """A Host a rebound DNS name would send (evil.example) gets 421 on every route, and nothing goes upstream."""
        resp = await proxy.post(path, json=CHAT, headers={"Host": "evil.example:3825"})
        assert resp.status == 421
        assert (await resp.json())["error"]["code"] == "host_not_allowed"
        assert sim.log == []

    @pytest.mark.parametrize("host", ["127.0.0.1:3825", "localhost:3825", "LOCALHOST", "[::1]:3825", "localhost."])
    async def test_own_names_are_served(self, proxy: Any, host: str) -> None:
        """Loopback addresses and localhost, in any case and with any port, are this server's own names."""
        resp = await proxy.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
        assert resp.status == 200

    async def test_allowed_host_is_served(self, make_proxy: Any) -> None:
        """A name the user allowed (server.allowed_hosts) is served, and its subdomains with a leading-dot entry."""
        proxy = await make_proxy(None, allowed_hosts=["proxy.internal", ".corp.example"])
        for host in ("proxy.internal", "a.corp.example", "corp.example"):
            assert (await proxy.get("/health", headers={"Host": host})).status == 200
        assert (await proxy.get("/health", headers={"Host": "corp.example.evil"})).status == 421


class TestOrigin:
    @pytest.mark.parametrize("headers", [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ])
    async def test_cross_site_page_is_refused(self, proxy: Any, sim: SimulatedModel, headers: dict[str, str]) -> None:
        """A request from another site's page (by Origin, or Sec-Fetch-Site where no Origin is sent) gets 403."""
        resp = await proxy.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "origin_not_allowed"
        assert sim.log == []

    async def test_allowed_origin_gets_cors(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """An allowed origin's preflight is answered by the proxy, and its answers (streams too) carry CORS."""
        proxy = await make_proxy(None, allowed_origins=["http://localhost:8888"])
        origin = {"Origin": "http://localhost:8888"}
        pre = await proxy.options("/v1/chat/completions", headers={
            **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert pre.status == 204
        assert pre.headers["Access-Control-Allow-Origin"] == "http://localhost:8888"
        assert pre.headers["Access-Control-Allow-Headers"] == "content-type"
        assert sim.log == []  # a preflight is the proxy's own business
        for body in (CHAT, {**CHAT, "stream": True}):
            resp = await proxy.post("/v1/chat/completions", json=body, headers=origin)
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:8888"
            await resp.read()

    async def test_preflight_of_other_origin_is_refused(self, make_proxy: Any) -> None:
        """A preflight from an origin not allowed gets 403 and no CORS header."""
        proxy = await make_proxy(None, allowed_origins=["http://localhost:8888"])
        pre = await proxy.options("/v1/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert pre.status == 403
        assert "Access-Control-Allow-Origin" not in pre.headers


class TestBodies:
    @pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "text/plain;charset=UTF-8"])
    async def test_simple_request_bodies_are_refused(self, proxy: Any, sim: SimulatedModel, ctype: str) -> None:
        """JSON sent as a form or text/plain (what a page can post without a preflight) gets 415, unforwarded."""
        resp = await proxy.post("/v1/chat/completions", data=orjson.dumps(CHAT), headers={"Content-Type": ctype})
        assert resp.status == 415
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"
        assert sim.log == []

    async def test_json_without_content_type_is_read(self, proxy: Any) -> None:
        """A body without a Content-Type (some scripts send none; no browser does without an Origin) is read as
        JSON."""
        status, body = await raw_request(proxy.port, (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Length: {len(orjson.dumps(CHAT))}\r\n"), orjson.dumps(CHAT))
        assert status == 200, body

    @pytest.mark.parametrize("depth", [101, 300, 5000])
    async def test_deep_json_is_a_bad_request(self, proxy: Any, sim: SimulatedModel, depth: int) -> None:
        """JSON nested past max_json_depth (100) gets 400 naming the limit, never a 500."""
        nested = "[" * depth + "]" * depth
        raw = b'{"model": "m", "messages": ' + nested.encode() + b"}"
        resp = await proxy.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert "max_json_depth" in (await resp.json())["error"]["message"] or depth > 1000
        assert sim.log == []

    async def test_slow_body_times_out(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """A client that sends headers and then trickles its body gets 408 after client_body_timeout."""
        proxy = await make_proxy(None, client_body_timeout=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\"")
        await writer.drain()
        data = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert data.startswith(b"HTTP/1.1 408")
        assert sim.log == []


class TestPaths:
    @pytest.mark.parametrize(("method", "path", "status"), [
        ("DELETE", "/v1/files/x", 405),
        ("PUT", "/v1/chat/completions", 405),
        ("GET", "/v1/files/x", 404),
        ("POST", "/admin", 404),
        ("GET", "/v1/fine_tuning/jobs", 404),
    ])
    async def test_only_openai_paths_and_methods_go_upstream(
        self, proxy: Any, sim: SimulatedModel, method: str, path: str, status: int,
    ) -> None:
        """A path or method outside what an evaluation needs is refused and never reaches the upstream with the
        key."""
        resp = await proxy.request(method, path, json={"x": 1} if method != "GET" else None)
        assert resp.status == status
        assert sim.log == []

    @pytest.mark.parametrize("raw_path", [
        "/v1/../../admin", "/v1/%2e%2e/%2e%2e/admin", "/v1//chat/completions", "/v1/models%2F..%2F..%2Fadmin",
        "/v1/./chat/completions", "/v1\\..\\admin",
    ])
    async def test_paths_that_walk_out_are_refused(self, proxy: Any, sim: SimulatedModel, raw_path: str) -> None:
        """A path with dot segments, empty segments or encoded slashes never reaches the upstream."""
        status, _ = await raw_request(proxy.port, (
            f"POST {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(orjson.dumps(CHAT))}\r\n"), orjson.dumps(CHAT))
        assert status in (400, 404)
        assert sim.log == []

    @pytest.mark.parametrize("path", [
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/responses", "/tokenize",
        "/tokenizer_info", "/v1/rerank", "/chat/completions"])
    async def test_openai_paths_are_forwarded(self, proxy: Any, sim: SimulatedModel, path: str) -> None:
        """The OpenAI-compatible paths (and lm-eval's tokenizer probes outside /v1) reach the upstream with the key."""
        if path.endswith("/models"):
            resp = await proxy.get(path)
        else:
            body = {"model": "m", "prompt": "x", "input": "x", "messages": CHAT["messages"]}
            resp = await proxy.post(path, json=body)
        assert resp.status == 200, await resp.text()
        assert sim.log[-1].headers["Authorization"] == f"Bearer {KEY}"

    async def test_configured_paths_and_methods_are_forwarded(self, make_proxy: Any, sim: SimulatedModel) -> None:
        """server.forward_paths and forward_methods add to what is forwarded."""
        proxy = await make_proxy(None, forward_paths=["/v2/*"], forward_methods=["GET", "POST", "PUT"])
        assert (await proxy.put("/v2/things", json={"a": 1})).status == 200
        assert (await proxy.post("/v2/a/b", json={"a": 1})).status == 404  # '*' stays within one segment
        assert [r.path.rsplit("/v2/", 1)[1] for r in sim.log] == ["things"]


class TestUpstreamHeaders:
    async def test_browser_headers_from_upstream_are_dropped(self, proxy: Any, sim: SimulatedModel) -> None:
        """Set-Cookie and Access-Control-* from the upstream (vLLM allows every origin) never reach the client."""
        sim.script(Fault(body=b'{"choices": []}', headers={
            "Set-Cookie": "session=abc", "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Credentials": "true", "X-Request-Id": "r1"}))
        resp = await proxy.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        assert "Set-Cookie" not in resp.headers
        assert not [k for k in resp.headers if k.lower().startswith("access-control-")]
        assert resp.headers["X-Request-Id"] == "r1"


@pytest.mark.slow  # 60 MiB bodies
class TestLargeBodies:
    @pytest.mark.timeout(120)
    @pytest.mark.parametrize(("body", "status"), [
        # 2.1 M tiny messages: counted by a child process and refused, never parsed here.
        (b'{"model":"m","temperature":0,"messages":['
         + b",".join([b'{"role":"user","content":"a"}'] * 2_100_000) + b"]}", 413),
        # A long-context request: few objects, long strings (braces in them included); parsed, keyed, forwarded.
        (b'{"model":"m","temperature":0,"messages":[' + b",".join(
            [b'{"role":"user","content":"' + b"int f() { return [1]; } " * 42_000 + b'"}'] * 64) + b"]}", 200),
    ], ids=["many-objects", "long-strings"])
    async def test_large_body_never_holds_the_loop(
        self, proxy: Any, sim: SimulatedModel, caplog: pytest.LogCaptureFixture, body: bytes, status: int,
    ) -> None:
        """A 60 MiB request is handled without holding the event loop for long (asyncio's debug mode reports any
        callback over the bound) and /health answers meanwhile; one of millions of objects gets 413."""
        sim.keep_log = False
        sim.script(Fault(body=b'{"choices": []}'))  # the simulator shares this loop: it must not count words
        assert len(body) > 60 * 1024 * 1024
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 1.0
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            big = asyncio.create_task(proxy.post("/v1/chat/completions", data=io.BytesIO(body),
                                                 headers={"Content-Type": "application/json"}))
            answered = 0
            while not big.done():
                assert (await proxy.get("/health")).status == 200
                answered += 1
                await asyncio.sleep(0.05)
            resp = await big
            assert resp.status == status, await resp.text()
        loop.set_debug(False)
        slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
        assert not slow, slow
        assert answered > 1
        if status == 413:
            assert "max_json_objects" in (await resp.json())["error"]["message"]


def test_policy_ignores_ports_and_checks_names() -> None:
    """SitePolicy: a name is compared without its port; an address other than loopback needs a wildcard bind."""
    local = SitePolicy(bind="127.0.0.1")
    assert local.host_allowed("127.0.0.1:1") and local.host_allowed(None)
    assert not local.host_allowed("10.1.2.3:3825") and not local.host_allowed("127.0.0.1.evil.example")
    wide = SitePolicy(bind="0.0.0.0")
    assert wide.host_allowed("10.1.2.3:3825") and not wide.host_allowed("evil.example")


class TestSlowClients:
    async def test_trickled_headers_are_cut_off(self, tmp_path: Any, upstream: Any) -> None:
        """On a real socket, a client that never finishes its headers is disconnected after client_header_timeout."""
        from evalproxy.adapter.server.running import RunningProxy
        from tests.conftest import make_loaded

        loaded = make_loaded(None, tmp_path, str(upstream.make_url("/v1")), port=0, client_header_timeout=0.3)
        async with RunningProxy(loaded) as running:
            port = int(running.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the proxy, nothing answered
            writer.close()
