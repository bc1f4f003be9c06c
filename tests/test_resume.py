"""Crash safety: SIGKILL the proxy mid-run, restart it, rerun everything: only the missing requests are paid for."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.simulator import SimulatedModel
from evalproxy.storage.disk import CacheStore
from tests import procs
from tests.procs import start_serve

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

N = 50
PROMPTS = [f"Question {i}: what is {i} squared?" for i in range(N)]


def body(prompt: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 32}


def write_config(tmp_path: Path, name: str) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "interceptors": [{"name": "system_message", "config": {"system_message": "Answer."}},
                         "reasoning", {"name": "caching", "config": {"reuse_cached_responses": True}}, "endpoint",
                         "response_stats"],
        "server": {"output_dir": str(tmp_path / name), "status_line": "off"},
    }))
    return cfg


async def ask(session: aiohttp.ClientSession, url: str, prompt: str) -> str:
    return (await procs.ask(url, body(prompt), session))[0]


def prompts_seen(sim: SimulatedModel, since: int) -> list[str]:
    return [r.body["messages"][-1]["content"] for r in sim.log[since:] if r.body]


async def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    """After SIGKILL at ~25 answers and a restart, the upstream sees exactly the missing requests, answers match."""
    sim = SimulatedModel(latency=0.03, reasoning=True)
    upstream = TestServer(sim.app(), host="127.0.0.1")
    await upstream.start_server()
    up = str(upstream.make_url("/v1"))

    # The uninterrupted run, for reference.
    proc, url = await start_serve("-c", str(write_config(tmp_path, "reference")), "--upstream", up)
    async with aiohttp.ClientSession() as s:
        reference = {p: await ask(s, url, p) for p in PROMPTS}
    proc.send_signal(signal.SIGTERM)
    await proc.wait()

    # The interrupted run: killed with SIGKILL once about half the answers arrived.
    cfg = write_config(tmp_path, "run")
    proc, url = await start_serve("-c", str(cfg), "--upstream", up)
    completed: dict[str, str] = {}
    sem = asyncio.Semaphore(4)
    async with aiohttp.ClientSession() as s:
        async def one(p: str) -> None:
            async with sem:
                try:
                    completed[p] = await ask(s, url, p)
                except (aiohttp.ClientError, AssertionError):
                    return
                if len(completed) >= N // 2 and proc.returncode is None:
                    proc.kill()

        await asyncio.gather(*(one(p) for p in PROMPTS))
    assert await proc.wait() == -signal.SIGKILL
    assert N // 2 <= len(completed) < N

    # What the killed proxy had stored (answers that completed upstream, even if their client never got them).
    store = CacheStore(tmp_path / "run" / "cache")
    stored_before = store.count_answers()
    store.close()
    assert stored_before >= len(completed)

    # Restart on the same output dir and send all 50 again.
    before = len(sim.log)
    proc, url = await start_serve("-c", str(cfg), "--upstream", up)
    async with aiohttp.ClientSession() as s:
        resumed = {p: await ask(s, url, p) for p in PROMPTS}
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait() == 0
    await upstream.close()

    paid_again = prompts_seen(sim, before)
    assert len(paid_again) == len(set(paid_again))  # nothing twice
    assert not set(paid_again) & set(completed)  # nothing that had completed
    store = CacheStore(tmp_path / "run" / "cache")
    try:
        assert store.count_answers() == N
        for key in store.responses.iterkeys():  # every entry reads back whole
            assert store.get_answer(*key.rsplit(":", 1)[:1], int(key.rsplit(":", 1)[1])) is not None
    finally:
        store.close()
    assert len(paid_again) == N - stored_before  # exactly the missing ones
    assert resumed == reference
    assert {p: completed[p] for p in completed} == {p: reference[p] for p in completed}
    metrics = orjson.loads((tmp_path / "run" / "eval_factory_metrics.json").read_bytes())
    assert metrics["caching"]["hits"] == N - len(paid_again)
