"""progress_tracking: webhook and file, cache hits not counted, resumed from the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from evalproxy.simulator import SimulatedModel

REUSE = {"name": "caching", "config": {"reuse_cached_responses": True}}


async def receiver() -> tuple[TestServer, list[tuple[str, Any]]]:
    got: list[tuple[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append((request.method, await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/progress", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, got


async def test_progress_is_reported_and_resumed(make_proxy: Any, sim: SimulatedModel, tmp_path: Path) -> None:
    """Every 2 real answers the webhook and file get the count; replays don't count; a restart goes on from the file."""
    server, got = await receiver()
    cfg = {"interceptors": [REUSE, "endpoint", {"name": "progress_tracking", "config": {
        "progress_tracking_url": str(server.make_url("/progress")), "progress_tracking_interval": 2,
        "request_method": "POST", "output_dir": str(tmp_path / "progress")}}], "generate_html_report": False}
    proxy = await make_proxy(cfg)
    for prompt in ["a", "b", "a", "c", "d", "e"]:  # the second "a" is a cache hit
        await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                       "temperature": 0, "stream": prompt == "d"})
    await proxy.close()
    assert [body["samples_processed"] for _, body in got] == [2, 4, 5]  # the last one sent when the run ends
    assert {m for m, _ in got} == {"POST"}
    assert (tmp_path / "progress" / "progress").read_text() == "5"

    resumed = await make_proxy(cfg)
    for prompt in ["f", "g"]:
        await resumed.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                         "temperature": 0})
    await resumed.close()
    assert got[-1][1]["samples_processed"] == 7
    await server.close()


async def test_unreachable_webhook_never_fails_a_request(make_proxy: Any) -> None:
    """A webhook that cannot be reached leaves the answers alone."""
    proxy = await make_proxy({"interceptors": ["endpoint", {"name": "progress_tracking", "config": {
        "progress_tracking_url": "http://127.0.0.1:9/progress"}}], "generate_html_report": False})
    resp = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 200
