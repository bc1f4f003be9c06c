"""Every reader of a store (``evalproxy cache``, ``compare``) goes through the store interface: runs whose caching
used a real redis-server are read from it, and a cache dir and a Redis URL give one output shape."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from evalproxy.cli import main
from evalproxy.simulator import Fault, SimulatedModel
from evalproxy.storage import StoredAnswer, StoreUnavailableError, open_store, run_store
from tests.storage.test_redis_server import RedisServer, needs_redis, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest
pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

CLIENT = """\
import json, sys, urllib.request
url = sys.argv[1] + "/chat/completions"
for i in range(4):
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": f"question {i}"}]}
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        print(json.load(resp)["choices"][0]["message"]["content"])
"""


async def evalproxy(*args: str | Path) -> tuple[int, str, str]:
    """``python -m evalproxy ARGS`` in a real process: (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "evalproxy", *map(str, args), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def redis_runs(tmp_path: Path, redis_server: RedisServer) -> dict[str, Path]:
    """Two real ``evalproxy run --cache-url`` runs of one 4-question client, each on its own prefix of one
    redis-server (no cache dir): the candidate's model answers two of the questions differently."""
    sim = SimulatedModel()
    upstream = TestServer(sim.app(), host="127.0.0.1")
    await upstream.start_server()
    cfg = tmp_path / "adapter.yaml"
    cfg.write_text(yaml.safe_dump({"interceptors": [{"name": "caching", "config": {"save_requests": True}},
                                                    "endpoint"], "post_eval_hooks": []}))
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    runs = {}
    try:
        for name in ("base", "cand"):
            if name == "cand":
                sim.script(Fault(), Fault(content="changed one"), Fault(), Fault(content="changed two"))
            url = f"{redis_server.url}?prefix={name}:"
            code, _, err = await evalproxy("run", "-c", cfg, "--upstream", upstream.make_url("/v1"),
                                           "--cache-url", url, "-o", tmp_path / name, "--",
                                           sys.executable, client, "{proxy_url}")
            assert code == 0, err
            runs[name] = tmp_path / name
    finally:
        await upstream.close()
    return runs


@needs_redis
class TestRedisBackedRuns:
    async def test_run_dir_names_its_redis_store(self, redis_runs: dict[str, Path],
                                                 redis_server: RedisServer) -> None:
        """A run dir whose caching used a Redis URL resolves to that URL, and has no cache dir of its own."""
        assert run_store(redis_runs["base"]) == f"{redis_server.url}?prefix=base:"
        assert not (redis_runs["base"] / "cache").exists()

    async def test_compare_reads_answers_from_redis(self, redis_runs: dict[str, Path], tmp_path: Path) -> None:
        """compare of two runs kept on Redis pairs their prompts and finds the two answers that changed."""
        doc = tmp_path / "c.json"
        code, out, err = await evalproxy("compare", redis_runs["base"], redis_runs["cand"], "--json", doc)
        assert code == 0, out + err
        c = json.loads(doc.read_text())
        assert c["pairs_compared"] == 4 and c["changed_total"] == 2
        assert sorted(ch["candidate"] for ch in c["changed"]) == ["changed one", "changed two"]

    async def test_cache_explain_reads_requests_from_redis(self, redis_runs: dict[str, Path],
                                                           tmp_path: Path) -> None:
        """cache explain on a run kept on Redis finds the nearest saved request there and names the field."""
        request = tmp_path / "req.json"
        request.write_text(json.dumps({"model": "m", "temperature": 0, "max_tokens": 5,
                                       "messages": [{"role": "user", "content": "question 1"}]}))
        code, out, err = await evalproxy("cache", "explain", redis_runs["base"], request)
        assert code == 0, out + err
        assert "stored request #1 (1 field(s) differ)" in out and "max_tokens" in out

    async def test_cache_clear_of_a_run_dir_on_redis_asks_for_the_url(self, redis_runs: dict[str, Path]) -> None:
        """cache clear on a run dir whose store is a shared server refuses, naming the URL to give; nothing goes."""
        code, _, err = await evalproxy("cache", "clear", redis_runs["base"])
        assert code == 2 and "give its URL" in err
        code, out, _ = await evalproxy("cache", "stats", redis_runs["base"])
        assert code == 0 and json.loads(out)["saved_requests"] == 4


@needs_redis
def test_stats_and_clear_have_one_shape_for_a_dir_and_a_url(tmp_path: Path, redis_server: RedisServer,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """cache stats prints the same keys for a cache dir and a Redis URL, and cache clear the same sentence."""
    url = f"{redis_server.url}?prefix=shape:"

    async def fill(where: str | Path) -> None:
        store = await asyncio.to_thread(open_store, where)
        try:
            await store.put_raw_answers([(f"{'a' * 64}:{i}", StoredAnswer(200, {}, body=b"{}").encode())
                                         for i in range(3)])
        finally:
            await store.aclose()

    outputs: dict[str, Any] = {}
    for name, where in (("dir", tmp_path / "run" / "cache"), ("url", url)):
        asyncio.run(fill(where))
        assert main(["cache", "stats", str(where)]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert main(["cache", "clear", str(where)]) == 0
        cleared = capsys.readouterr().out
        outputs[name] = (stats, cleared)
    (dir_stats, dir_cleared), (url_stats, url_cleared) = outputs["dir"], outputs["url"]
    assert set(dir_stats) == set(url_stats) == {"location", "backend", "answers", "saved_requests", "failures",
                                                "bytes"}
    assert (dir_stats["backend"], url_stats["backend"]) == ("diskcache", "redis")
    assert dir_stats["answers"] == url_stats["answers"] == 3
    assert url_stats["location"] == url
    assert dir_cleared == f"cleared 3 entries from {tmp_path / 'run' / 'cache'}\n"
    assert url_cleared == f"cleared 3 entries from {url}\n"


def test_a_redacted_store_url_asks_for_the_url(tmp_path: Path) -> None:
    """A run dir whose effective config keeps its store's password redacted says to give the URL itself."""
    (tmp_path / "adapter_config.yaml").write_text(yaml.safe_dump({"adapter_config": {"interceptors": [
        {"name": "caching", "config": {"cache_url": "redis://***@db.example:6379/0"}}]}}))
    with pytest.raises(StoreUnavailableError, match="give the store's URL"):
        run_store(tmp_path)


async def test_run_dir_with_its_own_cache_dir(tmp_path: Path) -> None:
    """A run whose caching named a cache_dir outside the run dir is read there (stats and explain find its answers,
    by the proxy's own rule), and `cache clear RUN_DIR` refuses to empty a store that is not the run dir's own."""
    sim = SimulatedModel()
    upstream = TestServer(sim.app(), host="127.0.0.1")
    await upstream.start_server()
    elsewhere = tmp_path / "shared-cache"
    cfg = tmp_path / "adapter.yaml"
    cfg.write_text(yaml.safe_dump({"interceptors": [
        {"name": "caching", "config": {"save_requests": True, "cache_dir": str(elsewhere)}}, "endpoint"],
        "post_eval_hooks": []}))
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    run = tmp_path / "run"
    try:
        status, _, err = await evalproxy("run", "-c", cfg, "-u", upstream.make_url("/v1"), "-o", run, "--",
                                         sys.executable, client, "{proxy_url}")
        assert status == 0, err
    finally:
        await upstream.close()
    assert not (run / "cache").exists() and elsewhere.is_dir()
    status, out, err = await evalproxy("cache", "stats", run)
    assert status == 0, err
    stats = json.loads(out)
    assert stats["location"] == str(elsewhere) and stats["answers"] == 4 and stats["saved_requests"] == 4
    status, _, err = await evalproxy("cache", "clear", run)
    assert status == 2 and "outside it" in err
    status, out, _ = await evalproxy("cache", "stats", elsewhere)
    assert json.loads(out)["answers"] == 4
