"""Tool calls streamed in fragments come out whole: ``evalproxy run`` with caching and the report hook in front of a
model that streams two interleaved tool calls, then the run's report and ``evalproxy compare`` of two such runs."""

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
from markupsafe import escape

from evalproxy.simulator import SimulatedModel

pytestmark = pytest.mark.slow  # real processes and servers: left out of `pytest -m "not slow"`

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("get_weather", "search")]
PROMPTS = 3

CLIENT = """
import json, sys, urllib.request
tools = json.loads(sys.argv[2])
for i in range(int(sys.argv[3])):
    body = {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}], "tools": tools,
            "stream": True}
    req = urllib.request.Request(sys.argv[1] + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert b"[DONE]" in r.read()
"""


async def _evalproxy(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "evalproxy", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_whole(calls: list[dict[str, Any]]) -> list[str]:
    """Both calls whole (a name, arguments that parse as one JSON object); returns them as ``name(arguments)``."""
    assert [c["function"]["name"] for c in calls] == ["get_weather", "search"]
    for k, c in enumerate(calls):
        assert len(c["function"]["arguments"]) > 10 * SimulatedModel().chunk_chars  # streamed in 10+ pieces
        args = json.loads(c["function"]["arguments"])
        assert args["k"] == k and len(args["query"].split()) == 16
        assert c["id"].endswith(f"_{k}") and c["type"] == "function"
    return [f"{c['function']['name']}({c['function']['arguments']})" for c in calls]


async def test_report_and_compare_show_tool_calls_whole(sim: SimulatedModel, upstream: TestServer,
                                                        tmp_path: Path) -> None:
    """A stream whose two tool calls arrive in 10+ interleaved argument pieces each is shown whole in report.json,
    evalproxy_report.json and the changed answers of ``evalproxy compare``."""
    sim.tool_calls = 2
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({
        "interceptors": [{"name": "caching", "config": {"save_requests": True}}, "endpoint"],
        "post_eval_hooks": [{"name": "post_eval_report", "config": {"report_types": ["json", "html"]}}],
    }))
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code, _, err = await _evalproxy("run", "-c", str(cfg), "--upstream", str(upstream.make_url("/v1")),
                                        "-o", str(out), "--", sys.executable, str(script), "{proxy_url}",
                                        json.dumps(TOOLS), str(PROMPTS))
        assert code == 0, err
        runs.append(out)
    assert len(sim.requests_to("/chat/completions")) == 2 * PROMPTS

    stored_texts: dict[str, list[str]] = {}
    for out in runs:
        nemo = json.loads((out / "report.json").read_text())
        details = json.loads((out / "evalproxy_report.json").read_text())
        assert len(nemo) == len(details["pairs"]) == PROMPTS
        for entry, pair in zip(nemo, details["pairs"], strict=True):
            assert pair["stream"] is True
            message = entry["response"]["choices"][0]["message"]
            (answer,) = pair["answers"]
            assert answer["tool_calls"] == message["tool_calls"] and answer["finish_reason"] == "tool_calls"
            stored_texts.setdefault(entry["request_data"]["messages"][0]["content"], []).append(
                "\n".join(assert_whole(message["tool_calls"])))

    doc, page = tmp_path / "compare.json", tmp_path / "compare.html"
    code, text, err = await _evalproxy("compare", str(runs[0]), str(runs[1]), "--json", str(doc), "--html", str(page))
    assert code == 0, text + err
    c = json.loads(doc.read_text())
    assert c["pairs_compared"] == PROMPTS and c["changed_total"] == PROMPTS  # sampled: each run drew its own calls
    shown = sorted((ch["baseline"], ch["candidate"]) for ch in c["changed"])
    assert shown == sorted((a, b) for a, b in stored_texts.values())
    html = page.read_text()
    for base, cand in shown:
        for line in [*base.splitlines(), *cand.splitlines()]:
            assert str(escape(line)) in html  # as the page escapes it
            name, _, args = line.partition("(")
            assert name in ("get_weather", "search") and json.loads(args[:-1])["query"]
