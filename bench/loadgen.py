"""Load generator: requests at a fixed concurrency against one URL; prints one JSON line of results.

    python bench/loadgen.py URL|- --concurrency 64 --requests 5000 [--seconds 3] [--model bench-d50]
                               [--stream --expect-events 23 --ramp 1] [--unique TAG | --repeat K]

Each of ``concurrency`` workers sends one request after the other (keep-alive) until ``requests`` were sent or
``seconds`` passed (bounded both ways). Latency is measured per request with perf_counter from send to the last byte;
for streams also the time to the first event and the gaps between events, and every stream's events are counted so a
lost one shows (``lost_events``: streams with fewer events than ``--expect-events``). ``--ramp`` spreads the workers'
first requests over that many seconds, so a stream test measures the steady state, not one burst of 256 connects.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time

import aiohttp
from loopback import run as run_loop

# An event that carries answer text (a non-empty content or text): what a user sees as the first token.
CONTENT = re.compile(rb'"(?:content|text)": ?"[^"]')


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


async def run(args: argparse.Namespace) -> dict[str, object]:
    latencies: list[float] = []
    overheads: list[float] = []
    ttfts: list[float] = []
    ttfcs: list[float] = []
    gaps: list[float] = []
    errors: dict[str, int] = {}
    events_seen: list[int] = []
    url = args.url.rstrip("/") + "/v1/chat/completions"
    sent = 0
    deadline = time.perf_counter() + args.seconds

    def body(i: int) -> bytes:
        n = i % args.repeat if args.repeat else i
        obj: dict[str, object] = {"model": args.model, "temperature": 0, "max_tokens": 64,
                                  "messages": [{"role": "user", "content": f"{args.unique} question {n}: 6 x 7?"}]}
        if args.stream:
            obj["stream"] = True
        return json.dumps(obj).encode()

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(k: int) -> None:
            nonlocal sent
            if args.ramp:
                await asyncio.sleep(args.ramp * k / args.concurrency)
            while sent < args.requests and time.perf_counter() < deadline:
                i = sent
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body(i), headers=headers) as r:
                        if args.stream:
                            n, last, buf, seen_content = 0, None, b"", False
                            async for data in r.content.iter_any():
                                now = time.perf_counter()
                                buf += data
                                k_ev = buf.count(b"\n\n")
                                if k_ev:
                                    buf = buf[buf.rfind(b"\n\n") + 2 :]
                                    if last is None:
                                        ttfts.append(now - t0)
                                    else:
                                        gaps.append(now - last)
                                    last = now
                                    n += k_ev
                                    if not seen_content and CONTENT.search(data):
                                        seen_content = True
                                        ttfcs.append(now - t0)
                            events_seen.append(n)
                            if args.expect_events and n < args.expect_events:
                                error("lost_events")
                        else:
                            await r.read()
                        if r.status != 200:
                            error(str(r.status))
                            continue
                        oh = r.headers.get("X-EvalProxy-Overhead-Ms")
                        if oh:
                            overheads.append(float(oh) / 1000)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    error(type(exc).__name__)
                    continue
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(args.concurrency)))
        elapsed = time.perf_counter() - t_start
    ms = 1000.0
    return {
        "requests": sent, "ok": len(latencies), "errors": errors, "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(latencies, 50) * ms, "p90_ms": pct(latencies, 90) * ms, "p99_ms": pct(latencies, 99) * ms,
        "overhead_p50_ms": pct(overheads, 50) * ms, "overhead_p99_ms": pct(overheads, 99) * ms,
        "ttft_p50_ms": pct(ttfts, 50) * ms, "ttft_p99_ms": pct(ttfts, 99) * ms,
        "ttfc_p50_ms": pct(ttfcs, 50) * ms, "ttfc_p99_ms": pct(ttfcs, 99) * ms,
        "gap_p50_ms": pct(gaps, 50) * ms, "gap_p99_ms": pct(gaps, 99) * ms,
        "events_min": min(events_seen) if events_seen else 0,
        "events_max": max(events_seen) if events_seen else 0,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("url", help="the target; '-' reads one argument list (JSON) per line from stdin")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long")
    p.add_argument("--model", default="bench", help="the fake upstream reads its knobs from it (bench/upstream.py)")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--expect-events", type=int, default=0)
    p.add_argument("--ramp", type=float, default=0.0, help="spread the workers' starts over this many seconds")
    p.add_argument("--unique", default="run")
    p.add_argument("--repeat", type=int, default=0, help="cycle through this many prompts (cache hits)")
    return p


def main() -> None:
    p = parser()
    args = p.parse_args()

    async def go() -> None:
        if args.url != "-":
            print(json.dumps(await run(args)), flush=True)
            return
        # One process for a whole benchmark run (bench/run.py): no interpreter start per measurement. Every
        # measurement still opens its own session and connections.
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            print(json.dumps(await run(p.parse_args(json.loads(line)))), flush=True)

    run_loop(go())


if __name__ == "__main__":
    main()
