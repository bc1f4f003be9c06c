"""caching's waits have an end (issue 18): a lease left without an expiry runs out by the store's clock, and a request
whose client disconnected stops waiting for another request's answer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aredis
from aiohttp.test_utils import TestServer

from evalproxy.adapter.server.running import RunningProxy
from evalproxy.simulator import SimulatedModel
from evalproxy.storage import cache_key
from evalproxy.storage.base import HOST
from evalproxy.storage.disk import CacheStore
from tests.conftest import make_loaded
from tests.storage.test_redis_server import RedisServer
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

PATH = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "Name a prime."}], "temperature": 0}
KEY = cache_key(PATH, BODY)


def caching(**config: Any) -> dict[str, Any]:
    return {"interceptors": [{"name": "caching", "config": {"reuse_cached_responses": True, **config}}, "endpoint"],
            "generate_html_report": False}


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = aredis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def plant(client: Any, value: str | None = None, ahead_ms: int = 0) -> None:
    """SET the slot's lease key with no TTL: the given value, or one with a deadline ``ahead_ms`` past the store's
    clock held by a process on another machine."""
    if value is None:
        seconds, micros = await client.time()
        value = f"{int(seconds) * 1000 + int(micros) // 1000 + ahead_ms}|someone:else|elsewhere|1"
    await client.set(f"evalproxy:lease:{KEY}:0", value)


async def start(tmp_path: Path, upstream: TestServer, adapter: dict[str, Any]) -> RunningProxy:
    """The proxy on a real socket, as ``evalproxy serve`` runs it (handlers are not cancelled when a client leaves)."""
    loaded = make_loaded(adapter, tmp_path, str(upstream.make_url("/v1")), port=0, status_line="off")
    running = RunningProxy(loaded)
    await running.start()
    return running


async def health(session: aiohttp.ClientSession, running: RunningProxy) -> dict[str, Any]:
    async with session.get(f"{running.url}/health") as h:
        got: dict[str, Any] = await h.json()
        return got


async def until_in_flight(session: aiohttp.ClientSession, running: RunningProxy, n: int) -> dict[str, Any]:
    """/health once its in_flight count is ``n``."""
    await wait_until(lambda: _in_flight_is(session, running, n), what=f"{n} requests in flight", every=0.05)
    return await health(session, running)


async def _in_flight_is(session: aiohttp.ClientSession, running: RunningProxy, n: int) -> bool:
    return bool((await health(session, running))["in_flight"] == n)


async def send_and_hang_up(running: RunningProxy, session: aiohttp.ClientSession, in_flight: int) -> None:
    """Send the request on a raw connection, wait until the proxy counts ``in_flight`` requests, then disconnect."""
    host, port = running.url.removeprefix("http://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    payload = orjson.dumps(BODY)
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    assert (await until_in_flight(session, running, in_flight))["in_flight"] == in_flight
    writer.close()
    await writer.wait_closed()


class TestLeaseWithoutExpiry:
    async def test_planted_lease_without_ttl_is_answered_after_its_deadline(
            self, tmp_path: Path, upstream: TestServer, sim: SimulatedModel, redis_server: RedisServer,
            redis_client: Any) -> None:
        """A lease key planted with no TTL (deadline just ahead) delays the request only until that deadline passes
        by the store's clock: then the request takes the slot over and upstream answers it."""
        await plant(redis_client, ahead_ms=600)
        running = await start(tmp_path, upstream, caching(cache_url=redis_server.url, lease_seconds=1))
        try:
            async with aiohttp.ClientSession() as s, s.post(f"{running.url}{PATH}", json=BODY) as resp:
                assert resp.status == 200 and resp.headers["X-EvalProxy-Cache"] == "miss"
                await resp.read()
            assert len(sim.requests_to("/chat/completions")) == 1
            assert await redis_client.exists(f"evalproxy:lease:{KEY}:0") == 0  # finished: released
        finally:
            await running.stop()

    @pytest.mark.parametrize("value", ["someone", "someone:else|elsewhere|1", f"99999999999999|x|{HOST}|1"])
    async def test_planted_lease_without_a_believable_deadline_is_taken_over(
            self, tmp_path: Path, upstream: TestServer, sim: SimulatedModel, redis_server: RedisServer,
            redis_client: Any, value: str) -> None:
        """``SET <lease key> <owner>`` with no TTL, or with a deadline no holder sets, does not hold the request."""
        await plant(redis_client, value)
        running = await start(tmp_path, upstream, caching(cache_url=redis_server.url))
        try:
            async with aiohttp.ClientSession() as s, s.post(f"{running.url}{PATH}", json=BODY) as resp:
                assert resp.status == 200 and resp.headers["X-EvalProxy-Cache"] == "miss"
            assert len(sim.requests_to("/chat/completions")) == 1
        finally:
            await running.stop()

    async def test_planted_lease_row_on_disk_is_taken_over(self, make_proxy: Any, sim: SimulatedModel,
                                                             tmp_path: Path) -> None:
        """A lease row in the disk store held by a live process with a deadline no holder sets does not hold the
        request."""
        store = CacheStore(tmp_path / "cache")
        with store.slots.transaction():
            store.slots.db.execute("INSERT INTO evalproxy_leases VALUES (?, 0, 'x', ?, ?, 1e18)",
                                   (KEY, HOST, os.getpid()))
        store.close()
        proxy = await make_proxy(caching(cache_dir=str(tmp_path / "cache")))
        resp = await proxy.post(PATH, json=BODY)
        assert resp.status == 200 and resp.headers["X-EvalProxy-Cache"] == "miss"
        assert len(sim.requests_to("/chat/completions")) == 1


class TestClientGone:
    async def test_waiter_for_another_process_leaves_with_its_client(
            self, tmp_path: Path, upstream: TestServer, sim: SimulatedModel, redis_server: RedisServer,
            redis_client: Any) -> None:
        """A request waiting on another holder's lease stops when its client disconnects: /health's in_flight goes
        back to 0, upstream is never called, and the holder's lease is left alone."""
        await plant(redis_client, ahead_ms=25_000)
        running = await start(tmp_path, upstream, caching(cache_url=redis_server.url))
        try:
            async with aiohttp.ClientSession() as s:
                await send_and_hang_up(running, s, 1)
                assert (await until_in_flight(s, running, 0))["in_flight"] == 0
            assert sim.requests_to("/chat/completions") == []
            assert await redis_client.exists(f"evalproxy:lease:{KEY}:0") == 1
        finally:
            await running.stop()

    async def test_waiter_for_a_local_fill_leaves_and_the_fill_is_stored(
            self, tmp_path: Path, upstream: TestServer, sim: SimulatedModel) -> None:
        """A request sharing a sibling's upstream call stops when its client disconnects (a 499 counted as an error);
        the sibling, which holds the lease, still gets its answer and stores it."""
        sim.latency = 1.5
        running = await start(tmp_path, upstream, caching())
        try:
            async with aiohttp.ClientSession() as s:
                first = asyncio.ensure_future(s.post(f"{running.url}{PATH}", json=BODY))
                await until_in_flight(s, running, 1)
                await send_and_hang_up(running, s, 2)
                async with await first as resp:
                    assert resp.status == 200 and resp.headers["X-EvalProxy-Cache"] == "miss"
                got = await until_in_flight(s, running, 0)
                assert got["in_flight"] == 0 and got["errors"] == 1
                async with s.post(f"{running.url}{PATH}", json=BODY) as again:
                    assert again.headers["X-EvalProxy-Cache"] == "hit"
            assert len(sim.requests_to("/chat/completions")) == 1
        finally:
            await running.stop()
