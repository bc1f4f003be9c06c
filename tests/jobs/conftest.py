"""Fixtures for the jobs service: a fake OpenAI model on 127.0.0.1, the service app, and a client script command."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from evalproxy.jobs.app import RUNNER, create_app
from evalproxy.jobs.settings import Settings
from evalproxy.simulator import SimulatedModel, sums
from tests.waiting import wait_until

CLIENT_SCRIPT = Path(__file__).with_name("client.py")
API_KEY_ENV = "EVALPROXY_JOBS_TEST_KEY"
API_KEY = "sk-jobs-test-0123456789-secret"
TOKEN = "jobs-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


FakeModel = SimulatedModel
"""The jobs tests' model: the simulator answering sums, wrong on purpose when the sum is a multiple of 3."""


def wrong(total: int) -> bool:
    return total % 3 == 0


def calls(model: SimulatedModel) -> int:
    """How many questions the model was asked."""
    return len(model.requests_to("/chat/completions"))


def auth_seen(model: SimulatedModel) -> list[str]:
    """The Authorization header of each question, as the model received it."""
    return [r.headers.get("Authorization", "") for r in model.requests_to("/chat/completions")]


async def wait_for_calls(model: SimulatedModel, n: int) -> None:
    """Return once the model has been asked ``n`` questions in all."""
    await wait_until(lambda: calls(model) >= n, what=f"{n} questions to reach the model", seconds=60)


def expected_accuracy(n: int) -> float:
    """The score the client must compute against the model for its first n questions."""
    right = 0
    for i in range(n):
        a, b = i + 2, 3 * i + 1
        right += not wrong(a + b)
    return right / n


@pytest.fixture
def fake_model() -> FakeModel:
    return SimulatedModel(answers=sums(wrong))


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
    """Start the jobs service app in this process (its jobs are real ``evalproxy run`` subprocesses), told its URL
    as ``jobs serve`` tells it; its client sends the token on every call unless ``send_token=False``."""
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
        client.server.app[RUNNER].service_url.set(str(client.make_url("")).rstrip("/"))  # as jobs serve does once bound
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

        async def reached() -> bool:
            job.update(await self.json("GET", f"/v1/evaluation/jobs/{job_id}"))
            return job.get("status") in statuses

        await wait_until(reached, what=f"job {job_id} to be {' or '.join(statuses)}", seconds=30, every=0.1)
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

    async def reached() -> bool:
        job.update(await (await client.get(f"/v1/evaluation/jobs/{job_id}")).json())
        return job["status"] in statuses

    try:
        await wait_until(reached, what=f"job {job_id} to be {' or '.join(statuses)}", seconds=30, every=0.1)
    except AssertionError:
        raise AssertionError(f"job {job_id} stayed {job.get('status')}: {job.get('status_details')}") from None
    return job
