"""Shared fixtures: a simulated model on 127.0.0.1, the proxy app in front of it, and a run for unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from evalproxy.adapter.config import LoadedConfig, parse_config
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.server.app import create_app
from evalproxy.adapter.server.prometheus import Prometheus
from evalproxy.simulator import SimulatedModel
from tests.storage.test_redis_server import redis_server  # a real redis-server, for any test that asks

__all__ = ["redis_server"]

MakeProxy = Callable[..., Awaitable[TestClient[Any, Any]]]


class ProxyServer(TestServer):
    """aiohttp's test server as production runs the proxy: a client that leaves does not cancel its handler (the
    answer it asked for is being paid for and is stored once whole). aiohttp's own test server cancels them."""

    async def _make_runner(self, **kwargs: Any) -> Any:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
def sim() -> SimulatedModel:
    return SimulatedModel()


@pytest.fixture
async def upstream(sim: SimulatedModel) -> Any:
    """The simulated model, served on 127.0.0.1; ``str(upstream.make_url('/v1'))`` is its base URL."""
    server = TestServer(sim.app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def make_loaded(
    adapter: dict[str, Any] | None, tmp_path: Path, upstream_url: str | None, **server: Any
) -> LoadedConfig:
    data: dict[str, Any] = dict(adapter or {})
    data["server"] = {"upstream_url": upstream_url, "output_dir": str(tmp_path / "out"), **server}
    return parse_config(data, source="test-config")


@pytest.fixture
async def make_proxy(tmp_path: Path, upstream: TestServer) -> Any:
    """Start the proxy app (config as a dict, in any accepted shape) in front of the simulated model."""
    clients: list[TestClient[Any, Any]] = []

    async def make(adapter: dict[str, Any] | None = None, **server: Any) -> TestClient[Any, Any]:
        url = server.pop("upstream_url", str(upstream.make_url("/v1")))
        loaded = make_loaded(adapter, tmp_path, url, **server)
        client: TestClient[Any, Any] = TestClient(ProxyServer(create_app(loaded), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
def run(tmp_path: Path) -> RunContext:
    """A run context for calling interceptors directly in unit tests."""
    loaded = make_loaded(None, tmp_path, "http://127.0.0.1:9/v1")
    out = tmp_path / "out"
    return RunContext(
        output_dir=out,
        run_id="test-run",
        config=loaded.adapter,
        server=loaded.server,
        prometheus=Prometheus(),
    )


LOOP_HELD_LIMIT = 1.0
"""Seconds the event loop may be held at once before a test fails (generous: a loaded 2-core CI machine stalls for
a fraction of a second now and then; a blocking call in the proxy holds it for longer)."""


@pytest.fixture(autouse=True)
async def no_blocking_calls(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail any test in which something held the event loop for long, as aiohttp's own test suite does: a blocking
    call (SQLite, a file, a process wait) in the proxy stalls every request it serves. A watcher that wakes every
    50 ms measures how late it woke (cheaper than asyncio's debug mode, which slows every callback). A test whose
    own client side is what takes long says so with ``loop_may_block``."""
    if request.node.get_closest_marker("loop_may_block") is not None:
        yield
        return
    loop = asyncio.get_running_loop()
    worst = [0.0]

    async def watch() -> None:
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.05)
            worst[0] = max(worst[0], loop.time() - t0 - 0.05)

    watcher = asyncio.create_task(watch())
    yield
    watcher.cancel()
    assert worst[0] < LOOP_HELD_LIMIT, f"the event loop was held for {worst[0]:.2f} s at once"
