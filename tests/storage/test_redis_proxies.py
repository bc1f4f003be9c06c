"""Real proxy processes on one real redis-server: resume anywhere, pass@k across proxies, Redis dying mid-run, and
``evalproxy cache`` on a Redis URL."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.cli import main
from evalproxy.simulator import SimulatedModel
from tests import procs
from tests.procs import ServeProcesses
from tests.storage.test_redis_server import RedisServer, needs_redis, redis_server
from tests.waiting import wait_until

__all__ = ["redis_server"]  # the fixture, imported for pytest
pytestmark = [needs_redis, pytest.mark.slow]

PROMPT = {"model": "m", "messages": [{"role": "user", "content": "Write a haiku."}], "temperature": 0.8}


def config(tmp_path: Path, name: str, extra: dict[str, Any] | None = None) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({
        "interceptors": [{"name": "caching", "config": {"save_requests": True, "reuse_cached_responses": True,
                                                        **(extra or {})}}, "endpoint"],
        "post_eval_hooks": [],
        "server": {"output_dir": str(tmp_path / name), "status_line": "off"},
    }))
    return cfg


async def ask(url: str, body: dict[str, Any] = PROMPT) -> tuple[str, str]:
    return await procs.ask(url, body)


async def answers(url: str, times: int, body: dict[str, Any] = PROMPT) -> list[str]:
    return [a for a, _ in await asyncio.gather(*(ask(url, body) for _ in range(times)))]


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m is not None, text
    return float(m.group(1))


class Proxies(ServeProcesses):
    """Proxy processes on one Redis and one simulated model, stopped with SIGTERM at the end."""

    def __init__(self, tmp_path: Path, upstream: str, redis_url: str) -> None:
        super().__init__()
        self.tmp_path, self.upstream, self.redis_url = tmp_path, upstream, redis_url

    async def start(self, name: str, *args: str) -> str:
        return await self.serve("-c", str(config(self.tmp_path, name)), "--upstream", self.upstream,
                                "--cache-url", self.redis_url, *args)


@pytest.fixture
async def model() -> Any:
    sim = SimulatedModel(latency=0.05)
    server = TestServer(sim.app(), host="127.0.0.1")
    await server.start_server()
    yield sim, str(server.make_url("/v1"))
    await server.close()


async def test_interrupted_run_resumes_on_another_proxy(tmp_path: Path, redis_server: RedisServer,
                                                        model: Any) -> None:
    """A run killed on one proxy resumes on another proxy of the same Redis with 0 upstream calls: every answer,
    deterministic or the k samples of a sampled prompt, replays."""
    sim, upstream = model
    procs = Proxies(tmp_path, upstream, redis_server.url)
    try:
        a = await procs.start("a")
        det = [{**PROMPT, "temperature": 0, "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(4)]
        first = [*(await asyncio.gather(*(ask(a, b) for b in det))), *[(x, "") for x in await answers(a, 3)]]
        paid = len(sim.requests_to("/chat/completions"))
        assert paid == 7
        procs.procs[0].send_signal(signal.SIGKILL)
        await procs.procs[0].wait()
        b = await procs.start("b")
        again = [*(await asyncio.gather(*(ask(b, body) for body in det))), *[(x, "") for x in await answers(b, 3)]]
        assert len(sim.requests_to("/chat/completions")) == paid
        assert [x for x, _ in again[:4]] == [x for x, _ in first[:4]]
        assert sorted(x for x, _ in again[4:]) == sorted(x for x, _ in first[4:])
        assert all(h == "hit" for _, h in again[:4])
    finally:
        await procs.stop()


async def test_one_run_on_two_proxies_gets_distinct_samples(tmp_path: Path, redis_server: RedisServer,
                                                             model: Any) -> None:
    """Two proxies started with one --run-id: a sampled prompt asked 3 times through each gets 6 distinct answers,
    and a third proxy (a new run) replays exactly those 6 without calling the model."""
    sim, upstream = model
    procs = Proxies(tmp_path, upstream, redis_server.url)
    try:
        a, b = await asyncio.gather(procs.start("a", "--run-id", "shared"), procs.start("b", "--run-id", "shared"))
        got = await asyncio.gather(answers(a, 3), answers(b, 3))
        first = [*got[0], *got[1]]
        assert len(set(first)) == 6 and len(sim.requests_to("/chat/completions")) == 6
        c = await procs.start("c")
        assert sorted(await answers(c, 6)) == sorted(first)
        assert len(sim.requests_to("/chat/completions")) == 6
    finally:
        await procs.stop()


async def test_two_runs_at_once_pay_once(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two proxies of different runs asking a sampled prompt 3 times each at the same time pay for 3 samples."""
    sim = SimulatedModel(latency=0.3)
    server = TestServer(sim.app(), host="127.0.0.1")
    await server.start_server()
    procs = Proxies(tmp_path, str(server.make_url("/v1")), redis_server.url)
    try:
        a, b = await asyncio.gather(procs.start("a"), procs.start("b"))
        got = await asyncio.gather(answers(a, 3), answers(b, 3))
        assert len(sim.requests_to("/chat/completions")) == 3
        assert sorted(got[0]) == sorted(got[1]) and len(set(got[0])) == 3
    finally:
        await procs.stop()
        await server.close()


async def test_redis_dying_mid_run_never_fails_a_request(tmp_path: Path, redis_server: RedisServer,
                                                         model: Any) -> None:
    """Redis killed mid-run: every request is still answered (passed through, counted, the gauge at 0); Redis
    restarted: the proxy reconnects by itself, caching resumes and the gauge says so."""
    sim, upstream = model
    procs = Proxies(tmp_path, upstream, redis_server.url)
    try:
        url = await procs.start("a")
        det = {**PROMPT, "temperature": 0}
        assert (await ask(url, det))[1] == "miss" and (await ask(url, det))[1] == "hit"
        assert await metric(url, "evalproxy_store_up") == 1
        redis_server.stop(hard=True)
        down = await asyncio.gather(*(ask(url, {**det, "seed": i}) for i in range(8)))
        assert all(h == "miss" for _, h in down)
        assert len(sim.requests_to("/chat/completions")) == 1 + 8
        assert await metric(url, "evalproxy_store_up") == 0
        assert await metric(url, "evalproxy_answers_not_stored_total") == 8
        redis_server.start()  # empty: it kept nothing

        async def back() -> bool:  # the store tries the server again, after a short pause, when asked
            await ask(url, {**det, "seed": 999})
            return await metric(url, "evalproxy_store_up") == 1

        await wait_until(back, what="the store to reconnect", every=0.2)
        assert (await ask(url, det))[1] == "miss"
        assert (await ask(url, det))[1] == "hit"
        assert await metric(url, "evalproxy_store_up") == 1
    finally:
        await procs.stop()


def test_cache_copy_both_ways_and_stats(tmp_path: Path, redis_server: RedisServer,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """cache copy publishes a cache dir to Redis and pulls it down again; stats and clear accept the URL."""
    from evalproxy.storage.base import StoredAnswer
    from evalproxy.storage.disk import CacheStore

    src = tmp_path / "run" / "cache"
    store = CacheStore(src)
    store.put_answer("a" * 64, 0, StoredAnswer(200, {"x": "y"}, body=b'{"ok": 1}'))
    store.put_answer("b" * 64, 2, StoredAnswer(200, {}, events=[b"data: 1\n\n", b"data: [DONE]\n\n"]))
    store.close()
    url = redis_server.url + "?prefix=proj:"
    assert main(["cache", "copy", str(tmp_path / "run"), url]) == 0
    assert "copied 2 answers" in capsys.readouterr().out
    assert main(["cache", "stats", url]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answers"] == 2 and stats["backend"] == "redis"
    assert main(["cache", "copy", url, str(tmp_path / "down")]) == 0
    back = CacheStore(tmp_path / "down")
    try:
        got = back.get_answer("b" * 64, 2)
        assert got is not None and got.events == [b"data: 1\n\n", b"data: [DONE]\n\n"]
        assert back.count_answers() == 2
    finally:
        back.close()
    capsys.readouterr()
    assert main(["cache", "clear", url]) == 0
    assert "cleared 2 entries" in capsys.readouterr().out


@pytest.mark.parametrize(("chain", "url"), [
    (["endpoint"], "redis://127.0.0.1:1/0"),
    ([{"name": "caching"}, "endpoint"], "http://127.0.0.1:1/0"),
])
def test_cache_url_mistakes_are_config_errors(tmp_path: Path, chain: list[Any], url: str) -> None:
    """--cache-url without a caching interceptor, or with a URL that is not a store's, stops with a config error."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"interceptors": chain, "post_eval_hooks": []}))
    assert main(["serve", "-c", str(cfg), "--upstream", "http://127.0.0.1:1/v1", "--cache-url", url]) == 2


async def test_the_store_url_by_the_name_of_its_variable(tmp_path: Path, redis_server: RedisServer, model: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--cache-url-env NAME reads the store URL from the environment: the proxy caches in that Redis and its
    command line (what `ps` shows other users) holds no URL; a variable that is not set is a config error."""
    sim, upstream = model
    monkeypatch.setenv("MY_STORE_URL", redis_server.url)
    procs = ServeProcesses()
    try:
        url = await procs.serve("-c", str(config(tmp_path, "a")), "--upstream", upstream,
                                "--cache-url-env", "MY_STORE_URL")
        det = {**PROMPT, "temperature": 0}
        assert (await ask(url, det))[1] == "miss" and (await ask(url, det))[1] == "hit"
        cmdline = await asyncio.to_thread(Path(f"/proc/{procs.procs[0].pid}/cmdline").read_bytes)
        assert b"MY_STORE_URL" in cmdline and b"redis://" not in cmdline
        assert len(sim.requests_to("/chat/completions")) == 1
    finally:
        await procs.stop()
    monkeypatch.delenv("MY_STORE_URL")
    assert main(["serve", "-c", str(config(tmp_path, "b")), "--upstream", upstream,
                 "--cache-url-env", "MY_STORE_URL"]) == 2
