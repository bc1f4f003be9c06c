"""Property-based tests of request bodies against the running proxy (default chain) and the simulated model.

The proxy never crashes and never blames itself for a client's bad body: it answers 4xx with a precise OpenAI-style
error, or passes a valid but unusual request upstream unchanged.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalproxy.adapter.config import parse_config
from evalproxy.adapter.server.app import create_app
from evalproxy.simulator import SimulatedModel

OUR_ERROR_TYPES = {"interceptor_error", "proxy_error"}


@dataclass
class Stack:
    sim: SimulatedModel
    port: int
    loop: asyncio.AbstractEventLoop

    def post(self, body: bytes, path: str = "/v1/chat/completions") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The simulated model and the proxy with the full default chain, served from a background event loop."""
    out: Path = tmp_path_factory.mktemp("bad-input")
    sim = SimulatedModel()
    sim.keep_log = True
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        up = web.AppRunner(sim.app(), access_log=None)
        await up.setup()
        site = web.TCPSite(up, "127.0.0.1", 0)
        await site.start()
        up_port = up.addresses[0][1]
        loaded = parse_config({
            "interceptors": [
                {"name": "system_message", "config": {"system_message": "Be brief."}},
                "reasoning", "caching", "endpoint", "response_stats"],
            "server": {"upstream_url": f"http://127.0.0.1:{up_port}/v1", "output_dir": str(out),
                       "max_retries": 0, "max_request_bytes": 256 * 1024, "status_line": "off"},
        })
        proxy = web.AppRunner(create_app(loaded), access_log=None)
        await proxy.setup()
        psite = web.TCPSite(proxy, "127.0.0.1", 0)
        await psite.start()
        holder.update(up=up, proxy=proxy, port=proxy.addresses[0][1])
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        holder["starting"] = loop.create_task(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    yield Stack(sim, holder["port"], loop)

    async def stop() -> None:
        await holder["proxy"].cleanup()
        await holder["up"].cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def assert_not_our_fault(status: int, body: bytes) -> None:
    """A 5xx may come from the upstream, passed through; the proxy's own errors are JSON with our types."""
    if status < 500:
        return
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return  # not one of ours: the proxy always answers JSON
    assert err.get("type") not in OUR_ERROR_TYPES, body[:500]


# JSON as clients can send it: 64-bit integers, finite floats, text without lone surrogates.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class TestBadBodies:
    @FAST
    @given(body=st.binary(max_size=300))
    def test_arbitrary_bytes(self, stack: Stack, body: bytes) -> None:
        """Any bytes at all get an answer; bodies that are not a JSON object get a 400 naming the problem."""
        status, raw = stack.post(body)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            assert status == 400, raw
            err = json.loads(raw)["error"]
            assert err["type"] == "invalid_request_error" and err["message"]
        else:
            assert_not_our_fault(status, raw)

    @FAST
    @given(body=st.dictionaries(
        st.sampled_from(["model", "messages", "stream", "temperature", "seed", "n", "prompt", "stream_options",
                         "max_tokens", "tools"]),
        json_values, max_size=6))
    def test_wrong_types_in_known_fields(self, stack: Stack, body: dict[str, Any]) -> None:
        """Known fields with wrong types never make an interceptor fail: the proxy is not the one to blame."""
        body = {**body, "nonce": uuid.uuid4().hex}
        status, raw = stack.post(orjson.dumps(body))
        assert_not_our_fault(status, raw)

    @FAST
    @given(extra=st.dictionaries(texts.filter(lambda k: k not in {
        "model", "messages", "stream", "temperature", "seed", "n"}), json_values, max_size=5))
    def test_unknown_fields_reach_upstream_unchanged(self, stack: Stack, extra: dict[str, Any]) -> None:
        """Vendor extensions and unknown fields arrive upstream exactly as sent."""
        nonce = uuid.uuid4().hex
        body = {**extra, "model": "m", "messages": [{"role": "user", "content": nonce}], "temperature": 0}
        status, raw = stack.post(orjson.dumps(body))
        assert status == 200, raw
        got = next(r.body for r in reversed(stack.sim.log) if r.body and nonce in json.dumps(r.body))
        assert got is not None
        assert {k: v for k, v in got.items() if k != "messages"} == {k: v for k, v in body.items() if k != "messages"}

    @pytest.mark.parametrize("depth", [50, 5000, 200_000])
    def test_deeply_nested_json(self, stack: Stack, depth: int) -> None:
        """Deeply nested JSON is answered (400 when too deep to parse, or too large), never a crash."""
        body = b'{"x":' + b"[" * depth + b"]" * depth + b"}"
        status, raw = stack.post(body)
        assert status in (200, 400, 413), raw
        assert_not_our_fault(status, raw)

    def test_invalid_utf8(self, stack: Stack) -> None:
        """Invalid UTF-8 inside a string is a 400."""
        status, raw = stack.post(b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}')
        assert status == 400 and b"not valid JSON" in raw

    def test_over_the_size_limit(self, stack: Stack) -> None:
        """A body over max_request_bytes is a 413."""
        status, raw = stack.post(b'{"x": "' + b"a" * 300_000 + b'"}')
        assert status == 413 and b"max_request_bytes" in raw
