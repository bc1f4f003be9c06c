"""Shared fixtures: a simulated model on 127.0.0.1, the proxy app in front of it, and a run for unit tests."""

from __future__ import annotations

import asyncio
import logging
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


@pytest.fixture(autouse=True)
async def no_blocking_calls(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Fail any test in which something held the event loop for long (asyncio's debug mode reports it), as
    aiohttp's own test suite does: a blocking call (SQLite, a file, a process wait) in the proxy stalls every
    request it serves. A test whose own client side is what takes long says so with ``loop_may_block``."""
    if request.node.get_closest_marker("loop_may_block") is not None:
        yield
        return
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    # Generous: a 2-core CI machine running the whole suite stalls for a fraction of a second now and then.
    loop.slow_callback_duration = 1.0
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    slow = [r.getMessage() for r in records if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, f"the event loop was blocked: {slow}"
