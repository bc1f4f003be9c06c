"""A tiny evaluation harness for the jobs tests: asks arithmetic questions through the proxy and scores the answers.

It uses the ``openai`` SDK as real harnesses do, writes ``results.yml`` in the tasks -> metrics -> scores shape and
prints its own accuracy as the last line of stdout. ``--hold FILE`` makes it wait after the first answer until FILE
exists (at most 60 s), so a test can catch the job while it is running. ``--print-env NAME`` (repeatable) prints
that variable first, as a careless harness might (the service must keep it out of the job's log).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml
from openai import OpenAI


def question(i: int) -> tuple[str, int]:
    a, b = i + 2, 3 * i + 1
    return f"What is {a} + {b}? Answer with the number only.", a + b


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hold", default=None)
    parser.add_argument("--print-env", action="append", default=[])
    args = parser.parse_args()
    for name in args.print_env:
        print(f"{name}={os.environ.get(name, '')}", flush=True)

    client = OpenAI(base_url=args.base_url, api_key="unused-by-the-proxy", max_retries=0)
    scores: list[float] = []
    for i in range(args.n):
        text, expected = question(i)
        answer = client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=16
        )
        content = (answer.choices[0].message.content or "").strip()
        scores.append(1.0 if content == str(expected) else 0.0)
        if args.hold and i == 0:
            deadline = time.monotonic() + 60
            while not Path(args.hold).exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    accuracy = sum(scores) / len(scores)
    stats = {"count": len(scores), "sum": sum(scores), "mean": accuracy, "min": min(scores), "max": max(scores)}
    results = {"tasks": {"arithmetic": {"metrics": {"accuracy": {"scores": {"accuracy": {
        "value": accuracy, "stats": stats}}}}}}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.yml").write_text(yaml.safe_dump(results), encoding="utf-8")
    print(accuracy, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
