"""``evalproxy cache explain`` answers HIT or MISS for a request as the proxy keys it: a real proxy (system prompt
injected before caching, one saved pair at most) in front of the simulated model fills a real cache, then the
command, in its own process, explains requests against that run directory."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from evalproxy.simulator import Fault, SimulatedModel
from tests.conftest import MakeProxy

SYSTEM = "Answer tersely."
CONFIG = {"interceptors": [
    {"name": "system_message", "config": {"system_message": SYSTEM}},
    {"name": "caching", "config": {"reuse_cached_responses": True, "save_requests": True, "max_saved_requests": 1}},
    {"name": "endpoint"}]}


def chat(text: str) -> dict[str, Any]:
    return {"model": "m", "temperature": 0, "max_tokens": 8, "messages": [{"role": "user", "content": text}]}


async def explain(run_dir: Path, request: dict[str, Any], tmp_path: Path, *args: str) -> tuple[int, str, str]:
    path = tmp_path / f"req-{abs(hash(json.dumps(request)))}.json"
    await asyncio.to_thread(path.write_text, json.dumps(request))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "evalproxy", "cache", "explain", str(run_dir),
                                                str(path), *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cached_request_not_among_saved_pairs_is_a_hit(make_proxy: MakeProxy, tmp_path: Path) -> None:
    """A request the proxy answers from the cache, though its body was not saved (max_saved_requests: 1), is a HIT
    keyed after the run's system prompt; a new question is a MISS with its nearest saved request and the text diff."""
    client = await make_proxy(CONFIG)
    for text in ("What is 1 + 4?\nOnly the number.", *["What is 2 + 5?\nOnly the number."] * 2):
        resp = await client.post("/v1/chat/completions", json=chat(text))
        assert resp.status == 200, await resp.text()
    assert resp.headers["X-EvalProxy-Cache"] == "hit"  # the second question is in the cache, its body is not saved
    await client.close()
    run_dir = tmp_path / "out"

    code, out, err = await explain(run_dir, chat("What is 2 + 5?\nOnly the number."), tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"HIT: the proxy answers this request from the cache {run_dir / 'cache'}")
    assert lines[1] == "keyed as: POST /v1/chat/completions after system_message"
    assert "stored request" not in out and "text changed" not in out

    code, out, err = await explain(run_dir, chat("What is 3 + 6?\nOnly the number."), tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("MISS: no answer is stored under the key this request gets")
    assert "stored request #0 (1 field(s) differ): user text changed (messages[1].content)" in out
    assert ("    --- stored messages[1].content\n    +++ request messages[1].content\n    @@ -1,2 +1,2 @@\n"
            "    -What is 1 + 4?\n    +What is 3 + 6?\n     Only the number.") in out


async def test_without_the_system_prompt_the_client_request_would_miss(make_proxy: MakeProxy,
                                                                       tmp_path: Path) -> None:
    """Keyed without the run's chain (a bare cache dir), the client's own request misses: the key covers the system
    prompt the proxy injects, and the nearest stored request shows it as the one difference."""
    client = await make_proxy(CONFIG)
    resp = await client.post("/v1/chat/completions", json=chat("What is 1 + 4?"))
    assert resp.status == 200
    await client.close()
    code, out, _ = await explain(tmp_path / "out" / "cache", chat("What is 1 + 4?"), tmp_path)
    assert code == 0 and out.startswith("MISS: ")
    assert "keyed as: POST /v1/chat/completions (no interceptor before caching changes it)" in out
    assert f"stored request #0 (1 field(s) differ): system message absent in the request (messages[0]; stored: " \
           f"'{SYSTEM}')" in out


async def test_a_request_that_failed_says_so(make_proxy: MakeProxy, sim: SimulatedModel, tmp_path: Path) -> None:
    """A request whose answer was a 500 is a MISS that says it failed before (errors are never stored), its nearest
    neighbour the failure itself, with no difference."""
    sim.script(Fault(status=500))
    client = await make_proxy({"interceptors": [{"name": "caching", "config": {"reuse_cached_responses": True}},
                                                {"name": "endpoint", "config": {"max_retries": 0}}]})
    resp = await client.post("/v1/chat/completions", json=chat("What is 1 + 4?"))
    assert resp.status == 500
    await client.close()
    code, out, err = await explain(tmp_path / "out", chat("What is 1 + 4?"), tmp_path)
    assert code == 0, err
    assert out.startswith("MISS: no answer is stored under the key this request gets")
    assert "this request failed before (status 500: " in out
    assert "failed request #0 (status 500) (0 field(s) differ): identical" in out


async def test_a_session_keyed_run_needs_the_session(make_proxy: MakeProxy, tmp_path: Path) -> None:
    """A run whose caching keys by session (NeMo 0.4's session_prefix) hits with --session naming the request's
    X-Session-Id, and without one misses, saying why."""
    client = await make_proxy({"interceptors": [
        {"name": "caching", "config": {"reuse_cached_responses": True, "session_prefix": True}}, {"name": "endpoint"}]})
    resp = await client.post("/v1/chat/completions", json=chat("What is 1 + 4?"), headers={"X-Session-Id": "s-7"})
    assert resp.status == 200
    await client.close()
    code, out, err = await explain(tmp_path / "out", chat("What is 1 + 4?"), tmp_path, "--session", "s-7")
    assert code == 0 and out.startswith("HIT: ") and ", in session s-7" in out, out + err
    code, out, err = await explain(tmp_path / "out", chat("What is 1 + 4?"), tmp_path)
    assert out.startswith("MISS: ") and "session_prefix: true): give --session ID" in out, out + err
