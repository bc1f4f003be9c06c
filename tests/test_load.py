"""Load: 2,000 concurrent requests through a real proxy process to an upstream that answers after one second."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.simulator import SimulatedModel
from tests.procs import rss_mib, start_serve

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

N = 2000


@pytest.mark.loop_may_block  # closing 2000 client connections at once is the test's own work, not the proxy's
async def test_2000_concurrent_requests_all_complete(tmp_path: Path) -> None:
    """All 2,000 concurrent requests complete with 200, none is reset, and the proxy's memory stays bounded."""
    sim = SimulatedModel(latency=1.0)
    sim.keep_log = False
    upstream = TestServer(sim.app(), host="127.0.0.1")
    await upstream.start_server()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"generate_html_report": False, "server": {"status_line": "off"}}))
    proc, url = await start_serve("-c", str(cfg), "--upstream", str(upstream.make_url("/v1")),
                                  "-o", str(tmp_path / "out"), "--log-level", "WARNING")
    try:
        idle = rss_mib(proc.pid)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def one(i: int) -> int | str:
                body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}], "temperature": 0}
                try:
                    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                        data = await resp.json()
                        assert data["choices"][0]["message"]["content"]
                        return resp.status
                except aiohttp.ClientError as exc:
                    return type(exc).__name__

            statuses = await asyncio.gather(*(one(i) for i in range(N)))
        peak = rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        await upstream.close()
    failures = [s for s in statuses if s != 200]
    assert not failures, f"{len(failures)} failed, e.g. {failures[:5]}"
    # 2,000 requests in flight hold their bodies and sockets; growth beyond a few hundred MiB would be a leak.
    assert peak - idle < 300, (idle, peak)
