"""The clients evaluations use still pass the site guard unchanged (issue 18): each sends what it really sends to a
proxy on a real socket (docs/security.md lists them)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from aiohttp.test_utils import TestServer

from evalproxy.adapter.server.running import RunningProxy
from evalproxy.simulator import SimulatedModel
from tests.conftest import make_loaded

MSGS = [{"role": "user", "content": "What is 2+2?"}]


@pytest.fixture
async def proxy_url(tmp_path: Path, upstream: TestServer) -> Any:
    loaded = make_loaded(None, tmp_path, str(upstream.make_url("/v1")), port=0)
    async with RunningProxy(loaded) as running:
        yield running.url


async def test_openai_sdk(proxy_url: str) -> None:
    """The openai SDK (chat, stream with usage, completions with a prompt list, embeddings, models) is served."""
    client = openai.AsyncOpenAI(base_url=f"{proxy_url}/v1", api_key="x", max_retries=0)
    chat = await client.chat.completions.create(model="m", messages=MSGS, temperature=0)  # type: ignore[arg-type]
    assert chat.choices[0].message.content
    stream = await client.chat.completions.create(model="m", messages=MSGS, stream=True,  # type: ignore[arg-type]
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    done = await client.completions.create(model="m", prompt=["a", "b"], max_tokens=4)
    assert len(done.choices) == 2
    assert (await client.embeddings.create(model="m", input="x")).data
    assert [m.id async for m in client.models.list()]
    await client.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_requests_as_lm_eval_and_nemo_evaluator_send(proxy_url: str, sim: SimulatedModel, path: str) -> None:
    """requests' json= posts (lm-eval's local-*-completions and nemo-evaluator), with the empty bearer lm-eval sends
    for an unset key, float temperature and seed, and lm-eval's tokenizer probe outside /v1, are served."""
    body: dict[str, Any] = {"model": "m", "temperature": 0.0, "seed": 1234, "max_tokens": 8, "stop": ["\n\n"]}
    body.update({"messages": MSGS} if "chat" in path else {"prompt": ["1+1=", "2+2="]})

    def send() -> list[int]:
        headers = {"Authorization": "Bearer "}
        return [requests.post(f"{proxy_url}{path}", json=body, headers=headers, timeout=30).status_code,
                requests.post(f"{proxy_url}/tokenize", json={"model": "m", "prompt": "x"}, timeout=30).status_code]

    assert await asyncio.to_thread(send) == [200, 200]
    assert [r.path for r in sim.log] == [path, "/tokenize"]


def _curl(*args: str) -> tuple[int, str]:
    done = subprocess.run(["curl", "-sS", "-o", "/dev/stderr", "-w", "%{http_code}", *args],
                          capture_output=True, text=True, timeout=30)
    return int(done.stdout), done.stderr


@pytest.mark.skipif(subprocess.run(["which", "curl"], capture_output=True).returncode != 0, reason="no curl")
async def test_curl_with_json_header_and_without(proxy_url: str) -> None:
    """curl -d with -H 'Content-Type: application/json' is served; bare curl -d (a form) gets 415 saying what to
    send."""
    data = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    url = f"{proxy_url}/v1/chat/completions"
    status, _ = await asyncio.to_thread(_curl, "-H", "Content-Type: application/json", "-d", data, url)
    assert status == 200
    status, text = await asyncio.to_thread(_curl, "-d", data, url)
    assert status == 415 and "application/json" in text
