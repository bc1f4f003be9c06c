"""Several real proxy processes on one cache directory: pass@k slots are claimed in the store, never per process,
and identical requests in flight are paid once."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.simulator import SimulatedModel
from tests.procs import ServeProcesses, start_serve
from tests.waiting import wait_until

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

PROMPT = {"model": "m", "messages": [{"role": "user", "content": "Write a haiku."}], "temperature": 0.8}


def config(tmp_path: Path, name: str, cache: Path) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "interceptors": [{"name": "caching", "config": {"cache_dir": str(cache), "reuse_cached_responses": True}},
                         "endpoint"],
        "post_eval_hooks": [],
        "server": {"output_dir": str(tmp_path / name), "status_line": "off"},
    }))
    return cfg


async def answers(url: str, times: int, body: dict[str, Any] = PROMPT) -> list[str]:
    async with aiohttp.ClientSession() as s:
        async def one() -> str:
            async with s.post(f"{url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                return str((await resp.json())["choices"][0]["message"]["content"])

        return list(await asyncio.gather(*(one() for _ in range(times))))


class Proxies(ServeProcesses):
    """Proxy processes on one cache directory and one simulated model, stopped with SIGTERM at the end."""

    def __init__(self, tmp_path: Path, upstream: str) -> None:
        super().__init__()
        self.tmp_path, self.upstream = tmp_path, upstream
        self.cache = tmp_path / "shared-cache"

    async def start(self, name: str, *args: str) -> str:
        return await self.serve("-c", str(config(self.tmp_path, name, self.cache)), "--upstream", self.upstream,
                                *args)


async def with_model(sim: SimulatedModel) -> TestServer:
    server = TestServer(sim.app(), host="127.0.0.1")
    await server.start_server()
    return server


async def test_one_run_on_two_processes_gets_distinct_samples(tmp_path: Path) -> None:
    """Two proxies started with one --run-id: a sampled prompt asked 3 times through each gets 6 distinct answers,
    and a third proxy (a new run, a resume elsewhere) replays exactly those 6 without calling the model."""
    sim = SimulatedModel(latency=0.02)
    server = await with_model(sim)
    procs = Proxies(tmp_path, str(server.make_url("/v1")))
    try:
        a = await procs.start("a", "--run-id", "shared-run")
        b = await procs.start("b", "--run-id", "shared-run")
        got = await asyncio.gather(answers(a, 3), answers(b, 3))
        first = [*got[0], *got[1]]
        assert len(set(first)) == 6
        assert len(sim.requests_to("/chat/completions")) == 6
        c = await procs.start("c")
        replayed = await answers(c, 6)
        assert sorted(replayed) == sorted(first)
        assert len(sim.requests_to("/chat/completions")) == 6
    finally:
        await procs.stop()
        await server.close()


async def test_two_runs_at_once_pay_once(tmp_path: Path) -> None:
    """Two proxies of different runs asking a sampled prompt 3 times each at the same time pay for 3 samples: the
    later run waits for slots being filled and replays them."""
    sim = SimulatedModel(latency=0.3)
    server = await with_model(sim)
    procs = Proxies(tmp_path, str(server.make_url("/v1")))
    try:
        a = await procs.start("a")
        b = await procs.start("b")
        got = await asyncio.gather(answers(a, 3), answers(b, 3))
        assert len(sim.requests_to("/chat/completions")) == 3
        assert sorted(got[0]) == sorted(got[1]) and len(set(got[0])) == 3
    finally:
        await procs.stop()
        await server.close()


async def test_identical_deterministic_requests_in_flight_share_one_call(tmp_path: Path) -> None:
    """Eight identical temperature-0 requests sent at once, four to each of two processes, reach the model once."""
    sim = SimulatedModel(latency=0.3)
    server = await with_model(sim)
    procs = Proxies(tmp_path, str(server.make_url("/v1")))
    body = {**PROMPT, "temperature": 0}
    try:
        a = await procs.start("a")
        b = await procs.start("b")
        got = await asyncio.gather(answers(a, 4, body), answers(b, 4, body))
        assert len(sim.requests_to("/chat/completions")) == 1
        assert len({*got[0], *got[1]}) == 1
    finally:
        await procs.stop()
        await server.close()


async def test_client_leaving_a_real_server_still_gets_its_answer_stored(tmp_path: Path) -> None:
    """Against a real `evalproxy serve` (which never cancels handlers), a client that disconnects mid-stream still
    has its answer completed and stored: asking again is a replay, the model was called once."""
    sim = SimulatedModel(latency=0.02, chunk_delay=0.05)
    server = await with_model(sim)
    procs = Proxies(tmp_path, str(server.make_url("/v1")))
    body = {**PROMPT, "temperature": 0, "stream": True}
    try:
        url = await procs.start("a")
        async with aiohttp.ClientSession() as s:
            resp = await s.post(f"{url}/v1/chat/completions", json=body)
            await resp.content.readany()  # the first bytes, then hang up
            resp.close()
        async with aiohttp.ClientSession() as s:  # the rest of the stream arrives and is stored meanwhile
            async def idle() -> bool:
                async with s.get(f"{url}/health") as h:
                    return bool((await h.json())["in_flight"] == 0)

            await wait_until(idle, what="the abandoned stream to be read to its end", seconds=30, every=0.1)
        async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/chat/completions", json=body) as again:
            assert again.headers["X-EvalProxy-Cache"] == "hit"
            await again.read()
        assert len(sim.requests_to("/chat/completions")) == 1
    finally:
        await procs.stop()
        await server.close()


async def test_statistics_of_two_proxies_merge_into_one_file(tmp_path: Path) -> None:
    """Two proxies of one run (other machines, or other output dirs) answer 3 and 5 requests; `evalproxy stats
    merge` writes one eval_factory_metrics.json counting all 8, latency percentiles over all 8 samples."""
    sim = SimulatedModel(latency=0.01)
    server = await with_model(sim)
    urls = []
    procs: list[asyncio.subprocess.Process] = []
    try:
        for name in ("a", "b"):
            cfg = tmp_path / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump({
                "interceptors": [{"name": "caching", "config": {"cache_dir": str(tmp_path / "cache"),
                                                                "reuse_cached_responses": True}},
                                 "endpoint", "response_stats"],
                "post_eval_hooks": [],
                "server": {"output_dir": str(tmp_path / name), "status_line": "off"}}))
            proc, url = await start_serve("-c", str(cfg), "--upstream", str(server.make_url("/v1")),
                                          "--run-id", "one-run")
            procs.append(proc)
            urls.append(url)
        for url, n in zip(urls, (3, 5), strict=True):
            async with aiohttp.ClientSession() as s:
                for i in range(n):
                    body = {**PROMPT, "temperature": 0, "messages": [{"role": "user", "content": f"{url} {i}"}]}
                    async with s.post(f"{url}/v1/chat/completions", json=body) as resp:
                        assert resp.status == 200
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.wait_for(p.communicate(), 30)
        await server.close()
    merged_dir = tmp_path / "merged"
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evalproxy", "stats", "merge", str(tmp_path / "a"), str(tmp_path / "b"),
        "-o", str(merged_dir), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await done.communicate()
    assert done.returncode == 0, err.decode()
    merged = orjson.loads((merged_dir / "eval_factory_metrics.json").read_bytes())
    stats = merged["response_stats"]
    assert (stats["count"], stats["successful_count"]) == (8, 8)
    assert stats["scores"]["latency_ms"]["stats"]["count"] == 8
    assert list(stats["runs"]) == ["one-run"] and stats["runs"]["one-run"]["count"] == 8
    assert merged["caching"]["misses"] == 8 and merged["caching"]["hit_ratio"] == 0.0
