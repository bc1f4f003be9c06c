"""``evalproxy demo``: a small evaluation against a built-in simulated model, run twice.

The first run goes to the model (which thinks aloud in ``<think>`` and streams some answers); the second run resumes
from the cache and reaches the model zero times. At the end: a summary table and the report's path.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from evalproxy.adapter.config import LoadedConfig, parse_config
from evalproxy.adapter.server.running import RunningProxy
from evalproxy.simulator import SimulatedModel

QUESTIONS = [
    "What is 17 times 3?",
    "Name the capital of Australia.",
    "Is 91 a prime number?",
    "How many sides does a hexagon have?",
    "What is the boiling point of water at sea level in Celsius?",
    "Translate 'good morning' into French.",
    "What is the square root of 144?",
    "Which planet is closest to the sun?",
    "How many minutes are in three hours?",
    "What gas do plants absorb from the air?",
    "What is 2 to the power of 10?",
    "Who wrote 'Pride and Prejudice'?",
]
SYSTEM_PROMPT = "You are a careful assistant. Answer briefly."
PASS_AT_K = 3
CONCURRENCY = 8


@dataclass
class RunResult:
    answers: dict[str, str] = field(default_factory=dict)
    upstream_calls: int = 0
    cache_hits: int = 0
    errors: int = 0
    seconds: float = 0.0
    reasoning_seen: int = 0


def demo_config(upstream: str, output_dir: Path) -> LoadedConfig:
    return parse_config(
        {
            "interceptors": [
                {"name": "system_message", "config": {"system_message": SYSTEM_PROMPT, "strategy": "prepend"}},
                {"name": "reasoning", "config": {"end_reasoning_token": "</think>"}},
                {"name": "caching", "config": {"save_requests": True, "reuse_cached_responses": True}},
                "endpoint",
                "response_stats",
            ],
            "post_eval_hooks": [
                {"name": "post_eval_report", "config": {"report_types": ["html", "json"], "html_report_size": 8}}
            ],
            "server": {
                "upstream_url": upstream,
                "model_id": "sim-model",
                "output_dir": str(output_dir),
                "port": 0,
                "status_line": "off",
            },
        },
        source="evalproxy demo",
    )


def workload(n: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, request body) pairs: deterministic questions, some streamed, and one sampled k times (pass@k)."""
    items: list[tuple[str, dict[str, Any]]] = []
    questions = max(1, n - PASS_AT_K)
    for i in range(questions):
        q = QUESTIONS[i % len(QUESTIONS)] + (f" (variant {i // len(QUESTIONS)})" if i >= len(QUESTIONS) else "")
        body: dict[str, Any] = {"model": "sim-model", "messages": [{"role": "user", "content": q}],
                                "temperature": 0, "max_tokens": 256}
        if i % 4 == 3:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        items.append((f"q{i}", body))
    for k in range(PASS_AT_K):
        items.append((f"pass@k sample {k + 1}", {
            "model": "sim-model", "messages": [{"role": "user", "content": "Write a haiku about caching."}],
            "temperature": 0.8, "max_tokens": 256}))
    return items


async def _ask(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[str, bool, int]:
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        hit = resp.headers.get("X-EvalProxy-Cache") == "hit"
        if body.get("stream"):
            text = ""
            async for raw_line in resp.content:
                line = raw_line.strip()
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    chunk = orjson.loads(line[6:])
                    for choice in chunk.get("choices") or ():
                        text += (choice.get("delta") or {}).get("content") or ""
            return text, hit, resp.status
        data = await resp.json()
        return data["choices"][0]["message"]["content"], hit, resp.status


async def one_run(label: str, upstream_url: str, sim: SimulatedModel, output_dir: Path, n: int) -> RunResult:

    running = RunningProxy(demo_config(upstream_url, output_dir))
    url = await running.start()
    result = RunResult()
    before = len(sim.log)
    items = workload(n)
    done = 0
    sem = asyncio.Semaphore(CONCURRENCY)
    t0 = time.perf_counter()
    tty = sys.stderr.isatty()

    async with aiohttp.ClientSession() as session:
        async def task(name: str, body: dict[str, Any]) -> None:
            nonlocal done
            async with sem:
                text, hit, status = await _ask(session, url, body)
            result.answers[name] = text
            result.cache_hits += hit
            result.errors += status != 200
            result.reasoning_seen += "<think>" in text
            done += 1
            if tty:
                print(f"\r  {label}: {done}/{len(items)} answered", end="", file=sys.stderr, flush=True)

        await asyncio.gather(*(task(name, body) for name, body in items))
    result.seconds = time.perf_counter() - t0
    if tty:
        print(file=sys.stderr)
    else:
        print(f"  {label}: {done}/{len(items)} answered", file=sys.stderr)
    await running.stop()
    result.upstream_calls = len(sim.log) - before
    return result


def _table(rows: list[tuple[str, str, str]]) -> str:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"  {a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows)


async def _demo(output_dir: Path, n: int) -> int:
    sim = SimulatedModel(reasoning=True, latency=0.15, chunk_delay=0.003)
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    upstream = f"http://127.0.0.1:{port}/v1"
    print(f"evalproxy demo: simulated model at {upstream}, output in {output_dir}", file=sys.stderr)
    try:
        first = await one_run("run 1 (cold)", upstream, sim, output_dir, n)
        second = await one_run("run 2 (resumed)", upstream, sim, output_dir, n)
    finally:
        await runner.cleanup()
    same = first.answers == second.answers
    samples = {v for k, v in first.answers.items() if k.startswith("pass@k")}
    rows = [
        ("", "run 1 (cold)", "run 2 (resumed)"),
        ("requests", str(len(first.answers)), str(len(second.answers))),
        ("upstream calls", str(first.upstream_calls), str(second.upstream_calls)),
        ("cache hits", str(first.cache_hits), str(second.cache_hits)),
        ("errors", str(first.errors), str(second.errors)),
        ("wall time", f"{first.seconds:.2f} s", f"{second.seconds:.2f} s"),
        ("reasoning left in answers", str(first.reasoning_seen), str(second.reasoning_seen)),
    ]
    print("\n" + _table(rows))
    print(f"\n  pass@{PASS_AT_K}: {len(samples)} distinct samples, replayed in order on resume: {same}")
    print(f"  answers identical across runs: {'yes' if same else 'NO'}")
    report = output_dir / "report.html"
    print(f"  report: {report}" + ("" if report.exists() else " (not written)"))
    print(f"  statistics: {output_dir / 'eval_factory_metrics.json'}")
    ok = same and second.upstream_calls == 0 and not first.errors and not second.errors
    return 0 if ok else 1


def run_demo(args: argparse.Namespace) -> int:
    logging.getLogger("evalproxy").setLevel(logging.WARNING)
    output_dir = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="evalproxy-demo-"))
    return asyncio.run(_demo(output_dir, args.requests))
