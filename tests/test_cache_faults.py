"""The cache's disk misbehaves: full, read-only, shared by two processes. Requests are answered all the same."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from evalproxy.adapter.core.errors import StoreError, StoreFullError, StoreUnavailableError
from evalproxy.simulator import Fault, SimulatedModel
from evalproxy.storage.base import StoredAnswer
from evalproxy.storage.disk import CacheStore, DiskStore
from evalproxy.storage.redis import RedisStore
from tests.procs import start_serve
from tests.storage.test_redis_server import RedisServer, needs_redis, redis_server

__all__ = ["redis_server"]  # the fixture, imported for pytest


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own (root only: the test is skipped where mounting is not allowed)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def cache_errors(text: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "evalproxy_cache_total":
                out[s.labels["result"]] = s.value
    return out


def chain(cache_dir: Path) -> dict[str, Any]:
    caching = {"cache_dir": str(cache_dir), "reuse_cached_responses": True}
    return {"interceptors": [{"name": "caching", "config": caching}, "endpoint"],
            "generate_html_report": False}


class TestDiskFaults:
    async def test_full_disk(self, make_proxy: Any, sim: SimulatedModel, small_fs: Path,
                             caplog: pytest.LogCaptureFixture) -> None:
        """With the cache's disk full, requests are still answered; the failure is logged once and counted."""
        proxy = await make_proxy(chain(small_fs / "cache"))
        with contextlib.suppress(OSError), open(small_fs / "filler", "wb") as f:  # noqa: ASYNC230 - fills a tmpfs
            f.write(b"\0" * (4 * 1024 * 1024))
        big = "x " * 40_000  # answers too large for what is left
        statuses = []
        for i in range(5):
            sim.script(Fault(content=big))
            resp = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": str(i)}],
                                                                  "temperature": 0})
            statuses.append(resp.status)
            assert (await resp.json())["choices"][0]["message"]["content"] == big
        assert statuses == [200] * 5
        logged = [r for r in caplog.records if "cache write failed" in r.getMessage()]
        assert len(logged) == 1
        assert cache_errors(await (await proxy.get("/metrics")).text())["write_error"] >= 1

    async def test_read_only_disk(self, make_proxy: Any, sim: SimulatedModel, small_fs: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
        """A cache whose disk turns read-only keeps serving what it has and answers new requests from upstream."""
        cache = small_fs / "cache"
        proxy = await make_proxy(chain(cache))
        old = {"messages": [{"role": "user", "content": "stored before"}], "temperature": 0}
        assert (await proxy.post("/v1/chat/completions", json=old)).status == 200
        # The directory turns read-only under the running proxy: a read-only bind mount over it. (Files SQLite
        # already holds open stay writable, as on a real remount; new files, as large answers need, fail.)
        await asyncio.to_thread(subprocess.run, ["mount", "--bind", str(cache), str(cache)], check=True)
        await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,ro,bind", str(cache)], check=True)
        # Incompressible (answers are stored compressed): large enough, compressed, to need a file of its own.
        big = base64.b64encode(random.Random(0).randbytes(60_000)).decode()
        for i in range(3):
            sim.script(Fault(content=big))
            resp = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"n{i}"}],
                                                                  "temperature": 0})
            assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == big
        hit = await proxy.post("/v1/chat/completions", json=old)
        assert hit.status == 200 and hit.headers["X-EvalProxy-Cache"] == "hit"
        assert len([r for r in caplog.records if "cache write failed" in r.getMessage()]) == 1
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(cache)], capture_output=True)


@pytest.mark.slow


async def test_two_processes_share_one_cache(tmp_path: Path) -> None:
    """Two proxy processes writing one cache directory at once lose and corrupt nothing."""
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    sim = SimulatedModel()
    upstream = TestServer(sim.app(), host="127.0.0.1")
    await upstream.start_server()
    cache = tmp_path / "shared-cache"
    cfgs = []
    for name in ("a", "b"):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({**chain(cache), "server": {"output_dir": str(tmp_path / name),
                                                                   "status_line": "off"}}))
        cfgs.append(cfg)
    procs = [await start_serve("-c", str(c), "--upstream", str(upstream.make_url("/v1"))) for c in cfgs]
    prompts = [f"shared question {i}" for i in range(60)]
    try:
        async with aiohttp.ClientSession() as s:
            async def ask(url: str, p: str) -> int:
                async with s.post(f"{url}/v1/chat/completions",
                                  json={"messages": [{"role": "user", "content": p}], "temperature": 0}) as r:
                    await r.read()
                    return r.status

            # Both processes get every prompt, concurrently.
            statuses = await asyncio.gather(*(ask(url, p) for p in prompts for _, url in procs))
            assert set(statuses) == {200}
            calls = len(sim.log)
            again = await asyncio.gather(*(ask(procs[i % 2][1], p) for i, p in enumerate(prompts)))
            assert set(again) == {200} and len(sim.log) == calls  # all answered from the shared cache
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in procs:
            await proc.wait()
        await upstream.close()
    store = CacheStore(cache)
    try:
        keys = list(store.responses.iterkeys())
        assert len(keys) == 60
        assert all(store.get_answer(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])) for k in keys)
    finally:
        store.close()


@needs_redis
class TestStoreErrorsByType:
    """Each backend raises the StoreError subtree, and caching handles it by type (a request is never failed)."""

    async def test_redis_at_maxmemory_is_store_full(self, redis_server: RedisServer) -> None:
        """A Redis server at its maxmemory refuses a write as StoreFullError; one that is down is
        StoreUnavailableError; both are StoreErrors."""
        store = RedisStore(redis_server.url)
        try:
            await store.redis.config_set("maxmemory", 1)
            with pytest.raises(StoreFullError):
                await store.finish("k", 0, owner="o", answer=StoredAnswer(200, {}, body=b"{}"), pair=None)
            redis_server.stop()
            with pytest.raises(StoreUnavailableError) as down:
                await store.count_answers()
            assert isinstance(down.value, StoreError)
        finally:
            await store.aclose()

    async def test_full_redis_never_fails_a_request(self, make_proxy: Any, sim: SimulatedModel,
                                                    redis_server: RedisServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
        """With its Redis store at maxmemory, the proxy answers every request, logs the write failure once, names
        StoreFullError, and counts it as a write error."""
        proxy = await make_proxy({"interceptors": [{"name": "caching", "config": {
            "cache_url": redis_server.url, "reuse_cached_responses": True}}, "endpoint"],
            "generate_html_report": False})
        setup = RedisStore(redis_server.url)
        try:
            await setup.redis.config_set("maxmemory", 1)
        finally:
            await setup.aclose()
        for i in range(3):
            resp = await proxy.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": str(i)}],
                                                                  "temperature": 0})
            assert resp.status == 200 and resp.headers["X-EvalProxy-Cache"] == "miss"
        logged = [r.getMessage() for r in caplog.records if "cache write failed" in r.getMessage()]
        assert len(logged) == 1 and "StoreFullError" in logged[0]
        assert cache_errors(await (await proxy.get("/metrics")).text())["write_error"] >= 1

    async def test_full_disk_is_store_full(self, small_fs: Path) -> None:
        """A disk store on a full file system refuses a large answer as StoreFullError."""
        store = DiskStore(small_fs / "cache")
        try:
            with contextlib.suppress(OSError), open(small_fs / "filler", "wb") as f:  # noqa: ASYNC230 - fills a tmpfs
                f.write(b"\0" * (4 * 1024 * 1024))
            with pytest.raises(StoreFullError):
                await store.finish("k", 0, owner="o", answer=StoredAnswer(200, {}, body=b"x" * 200_000), pair=None)
        finally:
            await store.aclose()

    def test_a_directory_that_cannot_be_opened_is_unavailable(self, tmp_path: Path) -> None:
        """A cache dir that cannot be created (a file stands in its way) raises StoreUnavailableError on opening."""
        (tmp_path / "cache").write_text("not a directory")
        with pytest.raises(StoreUnavailableError):
            DiskStore(tmp_path / "cache" / "inner")
