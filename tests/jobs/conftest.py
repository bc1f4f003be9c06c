"""Fixtures for the jobs service: a fake OpenAI model on 127.0.0.1, the service app, and a client script command."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from evalproxy.jobs.app import create_app
from evalproxy.jobs.settings import Settings

CLIENT_SCRIPT = Path(__file__).with_name("client.py")
API_KEY_ENV = "EVALPROXY_JOBS_TEST_KEY"
API_KEY = "sk-jobs-test-0123456789-secret"
TOKEN = "jobs-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")


class FakeModel:
    """An OpenAI chat endpoint that adds two numbers, wrong on purpose when the sum is a multiple of 3."""

    def __init__(self) -> None:
        self.calls = 0
        self.auth_seen: list[str] = []
        self._changed = asyncio.Condition()

    @staticmethod
    def answer(a: int, b: int) -> int:
        return a + b + 1 if (a + b) % 3 == 0 else a + b

    async def wait_for_calls(self, n: int) -> None:
        """Return once the model has been asked ``n`` questions in all."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.calls >= n)

    async def chat(self, request: web.Request) -> web.Response:
        async with self._changed:
            self.calls += 1
            self._changed.notify_all()
        self.auth_seen.append(request.headers.get("Authorization", ""))
        body = await request.json()
        text = body["messages"][-1]["content"]
        m = QUESTION.search(text)
        content = str(self.answer(int(m.group(1)), int(m.group(2)))) if m else "?"
        return web.json_response({
            "id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
        })

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app


def expected_accuracy(n: int) -> float:
    """The score the client must compute against FakeModel for its first n questions."""
    right = 0
    for i in range(n):
        a, b = i + 2, 3 * i + 1
        right += FakeModel.answer(a, b) == a + b
    return right / n


@pytest.fixture
def fake_model() -> FakeModel:
    return FakeModel()


@pytest.fixture
async def fake_upstream(fake_model: FakeModel) -> AsyncIterator[TestServer]:
    """The fake model served on 127.0.0.1; ``str(fake_upstream.make_url('/v1'))`` is its base URL."""
    server = TestServer(fake_model.app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """The upstream key, only ever in the service's environment."""
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    return API_KEY


def client_command(*extra: str) -> list[str]:
    """The harness command a config holds: the openai SDK client, with the service's placeholders."""
    return [sys.executable, str(CLIENT_SCRIPT), "--base-url", "{proxy_url}", "--model", "{model_id}",
            "--n", "{params.limit_samples}", "--out", "{output_dir}/harness", *extra]


MakeService = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[MakeService]:
    """Start the jobs service app in this process (its jobs are real ``evalproxy run`` subprocesses); its client
    sends the token on every call unless ``send_token=False``."""
    clients: list[TestClient[Any, Any]] = []

    async def make(*, send_token: bool = True, **kw: Any) -> TestClient[Any, Any]:
        kw.setdefault("data_dir", tmp_path / "data")
        kw.setdefault("grace_period", 10.0)
        kw.setdefault("token", TOKEN)
        headers = {"Authorization": f"Bearer {kw['token']}"} if send_token and kw["token"] else {}
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(Settings(**kw)), host="127.0.0.1"),
                                                  headers=headers)
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


class Service:
    """``python -m evalproxy.jobs serve`` on a free port, with a client session bound to it."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str, banner: str, token: str | None) -> None:
        self.proc = proc
        self.url = url
        self.banner = banner
        """What the service printed as it started (its URL, and the token when it shows one)."""
        self.token = token
        self.http = aiohttp.ClientSession(base_url=url, headers={"Authorization": f"Bearer {token}"} if token else {})

    @classmethod
    async def start(cls, data_dir: Path, log: Path, *args: str) -> Service:
        """Start it; its token is the one it generates (or finds) in ``data_dir``, never one from the environment."""
        env = {k: v for k, v in os.environ.items() if k != "EVALPROXY_JOBS_TOKEN"}
        with log.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "evalproxy.jobs", "serve", "--port", "0", "--data-dir", str(data_dir), *args,
                stdout=asyncio.subprocess.PIPE, stderr=err, env=env,
            )
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):  # stops a hung start only
                line = (await proc.stdout.readline()).decode()
                assert "listening on " in line, f"the service did not start: see {log}"
                note = (await proc.stdout.readline()).decode()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        token = note.split("Bearer ", 1)[1].split("'")[0] if "Bearer " in note else None
        return cls(proc, line.split("listening on ")[1].split()[0], line + note, token)

    async def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def wait_for_status(self, job_id: str, *statuses: str) -> dict[str, Any]:
        job: dict[str, Any] = {}
        async with asyncio.timeout(30):
            while job.get("status") not in statuses:
                await asyncio.sleep(0.1)
                job = await self.json("GET", f"/v1/evaluation/jobs/{job_id}")
        return job

    async def close(self, sig: int = signal.SIGTERM) -> None:
        await self.http.close()
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()


@pytest.fixture
async def services() -> AsyncIterator[list[Service]]:
    """Services started as processes by a test: closed (SIGTERM) at its end."""
    started: list[Service] = []
    yield started
    for s in started:
        await s.close()


async def wait_for_status(client: TestClient[Any, Any], job_id: str, *statuses: str) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses`` (the 30 s limit only stops a hung test)."""
    job: dict[str, Any] = {}
    try:
        async with asyncio.timeout(30):
            while True:
                resp = await client.get(f"/v1/evaluation/jobs/{job_id}")
                job = await resp.json()
                if job["status"] in statuses:
                    return job
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"job {job_id} stayed {job.get('status')}: {job.get('status_details')}") from None
