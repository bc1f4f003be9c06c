"""A realistic corpus of model answers for the benchmarks: 1-30 KB each, with reasoning, tool calls and streams.

    python bench/corpus.py [--n 2000] [--out bench/results/corpus.jsonl]    # write it (made on first use anyway)

Every answer is the simulated model's own (``evalproxy.simulator``, served on loopback and asked over HTTP, so
the bytes are what a proxy receives and stores): its ``answers`` knob gives it the text, ``chunk_chars`` the size
of a stream's pieces, ``tool_calls`` its calls. Text that compresses as the simulator's built-in 24 words would
(absurdly well) says nothing about what users store, so the text here is drawn from a word-level Markov chain
(order 2) trained on the English documentation CPython ships (``pydoc_data.topics``, about 470 KB of prose and
code): real word frequencies and phrases, but every answer new (no passage repeats verbatim across answers, which a
dictionary would otherwise exploit unfairly). Sizes and kinds, seeded and reproducible:

* 50 % chat answers with a ``<think>`` block of 150-3000 words and an answer of 20-300 words (about 1-25 KB);
* 30 % streams (pieces of 8 characters, about two tokens an event, with the usage chunk): reasoning 20-150 words,
  answer 10-60 (about 3-30 KB of SSE: the per-event envelope dominates, as with real servers);
* 20 % tool-call answers (one to three calls, their arguments JSON), streamed half the time.

Each line of the file is ``{"kind": "json"|"stream", "body": str}`` or ``{"kind": "stream", "events": [str]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from evalproxy.simulator import SimulatedModel

HERE = Path(__file__).resolve().parent
DEFAULT = HERE / "results" / "corpus-v1.jsonl"
TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("search", "calculator", "python")]


class Markov:
    """A word-level Markov chain of order 2 over CPython's bundled documentation."""

    def __init__(self) -> None:
        import pydoc_data.topics as topics

        words = re.findall(r"\S+", " ".join(topics.topics.values()))
        self.next: dict[tuple[str, str], list[str]] = defaultdict(list)
        for a, b, c in zip(words, words[1:], words[2:], strict=False):
            self.next[(a, b)].append(c)
        self.starts = [k for k in self.next if k[0][:1].isupper()]

    def text(self, rng: random.Random, n: int) -> str:
        a, b = rng.choice(self.starts)
        out = [a, b]
        while len(out) < n:
            options = self.next.get((a, b))
            if not options:
                a, b = rng.choice(self.starts)
                out += [a, b]
                continue
            c = rng.choice(options)
            out.append(c)
            a, b = b, c
        return " ".join(out[:n])


def _words(rng: random.Random, lo: int, hi: int) -> int:
    """A length between lo and hi, log-uniform (many short answers, a long tail)."""
    return round(lo * (hi / lo) ** rng.random())


async def generate(n: int, seed: int = 23) -> list[dict[str, Any]]:
    chain = Markov()
    plan: dict[str, tuple[int, int, int, int]] = {}  # prompt -> (think lo, hi, answer lo, hi)

    def answer(prompt: str) -> str:
        rng = random.Random(hashlib.sha256(prompt.encode()).digest())
        t_lo, t_hi, a_lo, a_hi = plan[prompt]
        return (f"<think>{chain.text(rng, _words(rng, t_lo, t_hi))}</think>\n\n"
                f"{chain.text(rng, _words(rng, a_lo, a_hi))}")

    sim = SimulatedModel(model="bench-corpus", answers=answer, chunk_chars=8)
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(n):
                roll = rng.random()
                prompt = f"corpus question {seed}-{i}"
                body: dict[str, Any] = {"model": "bench-corpus", "temperature": 0,
                                        "messages": [{"role": "user", "content": prompt}]}
                if roll < 0.5:
                    plan[prompt] = (150, 3000, 20, 300)
                elif roll < 0.8:
                    plan[prompt] = (20, 150, 10, 60)
                    body |= {"stream": True, "stream_options": {"include_usage": True}}
                else:
                    plan[prompt] = (20, 100, 5, 30)
                    sim.tool_calls = rng.randint(1, 3)
                    body["tools"] = TOOLS
                    if rng.random() < 0.5:
                        body |= {"stream": True, "stream_options": {"include_usage": True}}
                async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as resp:
                    raw = await resp.read()
                sim.tool_calls = 0
                if body.get("stream"):
                    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
                    out.append({"kind": "stream", "events": [e.decode() for e in events]})
                else:
                    out.append({"kind": "json", "body": raw.decode()})
    finally:
        await runner.cleanup()
    return out


def load(path: Path = DEFAULT, n: int = 2000) -> list[dict[str, Any]]:
    """The corpus at ``path``, made first if it is not there."""
    if not path.exists():
        entries = asyncio.run(generate(n))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return [json.loads(line) for line in path.read_text().splitlines()]


def raw_bytes(entry: dict[str, Any]) -> bytes:
    """The answer's bytes as the model sent them (a stream's events joined)."""
    return entry["body"].encode() if entry["kind"] == "json" else "".join(entry["events"]).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", default=str(DEFAULT))
    args = ap.parse_args()
    path = Path(args.out)
    if path.exists():
        path.unlink()
    entries = load(path, args.n)
    sizes = sorted(len(raw_bytes(e)) for e in entries)
    kinds = {k: sum(e["kind"] == k for e in entries) for k in ("json", "stream")}
    print(f"{len(entries)} answers {kinds}: sizes p5 {sizes[len(sizes) // 20]} B, median {sizes[len(sizes) // 2]} B, "
          f"p95 {sizes[len(sizes) * 19 // 20]} B, total {sum(sizes) / 1e6:.1f} MB -> {path}")


if __name__ == "__main__":
    main()
