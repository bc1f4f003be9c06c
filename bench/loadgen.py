"""Load generator: N requests at a fixed concurrency against one URL; prints one JSON line of results.

    python bench/loadgen.py URL --concurrency 64 --requests 5000 [--stream] [--unique TAG | --repeat K]

Latency is measured per request with perf_counter from send to the last byte; for streams also the time to the first
event and the gaps between events, and events are counted so a lost one shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


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
    ttfts: list[float] = []
    gaps: list[float] = []
    errors: dict[str, int] = {}
    events_seen: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)
    url = args.url.rstrip("/") + "/v1/chat/completions"

    def body(i: int) -> bytes:
        n = i % args.repeat if args.repeat else i
        obj: dict[str, object] = {"model": "bench", "temperature": 0, "max_tokens": 64,
                                  "messages": [{"role": "user", "content": f"{args.unique} question {n}: 6 x 7?"}]}
        if args.stream:
            obj["stream"] = True
        return json.dumps(obj).encode()

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body(i), headers={"Content-Type": "application/json"}) as r:
                        if args.stream:
                            n, last = 0, None
                            buf = b""
                            async for data in r.content.iter_any():
                                now = time.perf_counter()
                                buf += data
                                k = buf.count(b"\n\n")
                                if k:
                                    buf = buf[buf.rfind(b"\n\n") + 2:]
                                    if last is None:
                                        ttfts.append(now - t0)
                                    else:
                                        gaps.append(now - last)
                                    last = now
                                    n += k
                            events_seen.append(n)
                        else:
                            await r.read()
                        if r.status != 200:
                            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
                            continue
                except (TimeoutError, aiohttp.ClientError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - t_start
    ms = 1000.0
    return {
        "requests": args.requests, "ok": len(latencies), "errors": errors, "seconds": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": pct(latencies, 50) * ms, "p90_ms": pct(latencies, 90) * ms, "p99_ms": pct(latencies, 99) * ms,
        "ttft_p50_ms": pct(ttfts, 50) * ms, "ttft_p99_ms": pct(ttfts, 99) * ms,
        "gap_p50_ms": pct(gaps, 50) * ms, "gap_p99_ms": pct(gaps, 99) * ms,
        "events_min": min(events_seen) if events_seen else None,
        "events_max": max(events_seen) if events_seen else None,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--unique", default="run")
    p.add_argument("--repeat", type=int, default=0, help="cycle through this many prompts (cache hits)")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
