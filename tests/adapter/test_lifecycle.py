"""One cleanup context per resource: a start that fails halfway closes exactly what opened, in reverse order."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from evalproxy import BaseHook, BaseInterceptor, Params, RunContext, register_for_adapter
from evalproxy.adapter.registry.registry import Registry, resolve
from evalproxy.adapter.server.running import RunningProxy
from evalproxy.interceptors.endpoint import EndpointInterceptor
from tests.conftest import make_loaded
from tests.procs import free_port

EVENTS: list[str] = []
"""What the resources below did, in order; cleared before each test."""
SESSIONS: list[aiohttp.ClientSession] = []


@pytest.fixture(autouse=True)
def events() -> Iterator[list[str]]:
    EVENTS.clear()
    SESSIONS.clear()
    yield EVENTS
    EVENTS.clear()
    SESSIONS.clear()


class LabelParams(Params):
    label: str


@register_for_adapter(name="lc_recorder", description="Records its construction and closing.")
class Recorder(BaseInterceptor[LabelParams]):
    Params = LabelParams

    def __init__(self, params: LabelParams, run: RunContext) -> None:
        super().__init__(params, run)
        EVENTS.append(f"{params.label}:open")

    async def aclose(self) -> None:
        EVENTS.append(f"{self.params.label}:aclose")


@register_for_adapter(name="lc_broken", description="Fails in its constructor.")
class Broken(BaseInterceptor[Params]):
    def __init__(self, params: Params, run: RunContext) -> None:
        raise RuntimeError("lc_broken cannot start")


@register_for_adapter(name="endpoint", description="The real transport, recording its start and close.")
class RecordingEndpoint(EndpointInterceptor):
    async def start(self) -> None:
        await super().start()
        SESSIONS.append(self.session)
        EVENTS.append("transport:start")

    async def aclose(self) -> None:
        await super().aclose()
        EVENTS.append("transport:aclose")


@register_for_adapter(name="lc_hook", description="Records that the post-eval hooks ran.")
class Hook(BaseHook[Params]):
    async def __call__(self) -> None:
        EVENTS.append("hook")


def running_proxy(interceptors: list[Any], tmp_path: Path, upstream_url: str, port: int = 0) -> RunningProxy:
    loaded = make_loaded({"interceptors": interceptors, "post_eval_hooks": ["lc_hook"]}, tmp_path, upstream_url,
                         port=port, status_line="off", max_retries=0)
    registry = Registry.default()
    for cls in (Recorder, Broken, RecordingEndpoint, Hook):
        registry.add(cls)
    return RunningProxy(loaded, resolved=resolve(loaded, registry))



def recorder(label: str) -> dict[str, Any]:
    return {"name": "lc_recorder", "config": {"label": label}}


class TestRunningProxyLifecycle:
    async def test_failed_start_closes_what_opened(
        self, tmp_path: Path, upstream: TestServer, events: list[str]
    ) -> None:
        """A second interceptor failing in its constructor fails start(), closes the first and the transport, runs no
        hook and leaves no port listening."""
        port = free_port()
        running = running_proxy([recorder("first"), "lc_broken", "endpoint"], tmp_path,
                                str(upstream.make_url("/v1")), port=port)
        with pytest.raises(RuntimeError, match="lc_broken cannot start"):
            await running.start()
        assert events == ["transport:start", "first:open", "first:aclose", "transport:aclose"]
        assert SESSIONS[0].closed
        assert running.proxy.transport is None and running.proxy.interceptors == []
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass

    @pytest.mark.parametrize("admin_call", [False, True], ids=["stop-only", "admin-then-stop"])
    async def test_start_stop_closes_in_reverse_and_runs_hooks_once(
        self, tmp_path: Path, upstream: TestServer, events: list[str], admin_call: bool
    ) -> None:
        """A normal run closes interceptors in reverse order, then runs the hooks once, then closes the transport."""
        running = running_proxy([recorder("first"), recorder("second"), "endpoint"], tmp_path,
                                str(upstream.make_url("/v1")))
        url = await running.start()
        try:
            async with aiohttp.ClientSession() as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
                async with client.post(f"{url}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
                    await resp.read()
                if admin_call:
                    async with client.post(f"{url}/adapterserver/run-post-hook") as resp:
                        assert resp.status == 200
        finally:
            await running.stop()
        opened = ["transport:start", "first:open", "second:open"]
        if admin_call:
            opened.append("hook")
            closing = ["second:aclose", "first:aclose", "transport:aclose"]
        else:
            closing = ["second:aclose", "first:aclose", "hook", "transport:aclose"]
        assert events == opened + closing
        assert SESSIONS[0].closed
