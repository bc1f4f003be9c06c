"""``evalproxy serve --workers 2`` as a real process tree: one port, requests spread over both workers, pass@k
consistent across them, one /metrics for both, the hooks run once, SIGTERM stops everything."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.simulator import SimulatedModel
from tests.procs import start_serve

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`


PROMPT = {"model": "m", "messages": [{"role": "user", "content": "Write a haiku."}], "temperature": 0.8}


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


async def post(url: str, body: dict[str, Any]) -> tuple[str, str]:
    """(answer text, worker header) over a new connection each time, so the kernel picks a worker each time."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
            s.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["choices"][0]["message"]["content"]), resp.headers["X-EvalProxy-Worker"]


async def requests_total(url: str) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, \
            s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(float(v) for v in re.findall(r"^evalproxy_requests_total\{[^}]*\} (\S+)$", text, re.M))


async def test_two_workers_serve_one_run(tmp_path: Path) -> None:
    """Two workers on one port both answer; a sampled prompt asked 6 times gets 6 distinct samples across them;
    /metrics counts every request whichever worker is scraped; SIGTERM stops both, the report is written once by
    the parent and the run's statistics add up both workers."""
    sim = SimulatedModel(latency=0.02)
    server = TestServer(sim.app(), host="127.0.0.1")
    await server.start_server()
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "interceptors": [{"name": "caching", "config": {"save_requests": True}}, "endpoint"],
        "post_eval_hooks": ["post_eval_report"],
        "server": {"output_dir": str(out), "status_line": "off"},
    }))
    proc, url = await start_serve("-c", str(cfg), "--upstream", str(server.make_url("/v1")), "--workers", "2")
    try:
        assert len(children(proc.pid)) == 2
        det = [{**PROMPT, "temperature": 0, "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(24)]
        got = await asyncio.gather(*(post(url, b) for b in det), *(post(url, PROMPT) for _ in range(6)))
        assert {w for _, w in got} == {"0", "1"}
        samples = [a for a, _ in got[24:]]
        assert len(set(samples)) == 6
        assert len(sim.requests_to("/chat/completions")) == 30
        totals = await asyncio.gather(*(requests_total(url) for _ in range(6)))
        assert totals == [30.0] * 6
        workers = children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        await server.close()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert b"evalproxy stopped" in stdout
    assert all(gone(pid) for pid in workers)
    assert (out / "report.html").is_file()
    assert not list((out / "workers").glob("*/report.html"))
    stats = orjson.loads((out / "eval_factory_metrics.json").read_bytes())
    assert stats["caching"]["misses"] == 30 and set(stats["workers"]) == {"0", "1"}
