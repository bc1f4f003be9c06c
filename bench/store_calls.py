"""The stores' own cost, without HTTP: the calls a miss (claim, then finish) and a hit (claim) make, from many
requests at once, against the disk store and the Redis store (a redis-server started here), paired within rounds.

    python bench/store_calls.py [--concurrency 64] [--requests 6000] [--rounds 3] [--corpus]

Reports per store: calls per second (a miss's pair, a hit's one), this process's CPU per miss and per hit (the disk
store's thread included), redis-server's own CPU per miss and per hit (/proc/<pid>/stat), and for Redis the round
trips (script calls) per request. ``--corpus`` stores answers of the realistic corpus (bench/corpus.py) instead of a
small one. The figure that tells whether the shared store costs what the local one does is the CPU per request,
proxy and server together; calls per second on a shared 2-core machine move with everything else running on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from run import start_redis

from evalproxy.storage import Store, StoredAnswer, open_store

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def answers(corpus: bool) -> list[StoredAnswer]:
    if not corpus:
        body = b'{"choices":[{"message":{"content":"' + b"The answer is 42. " * 8 + b'"}}]}'
        return [StoredAnswer(200, {"content-type": "application/json"}, body=body)]
    from corpus import load

    return [StoredAnswer(200, {}, body=e["body"].encode()) if e["kind"] == "json"
            else StoredAnswer(200, {}, events=[x.encode() for x in e["events"]]) for e in load()[:500]]


async def load(store: Store, stock: list[StoredAnswer], n: int, c: int, tag: str, hits: bool) -> tuple[float, float]:
    """(requests per second, this process's CPU ms per request) for ``n`` requests from ``c`` workers."""
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < n:
            i = sent
            sent += 1
            key = f"{tag}-{i % 300 if hits else i}"
            claim = await store.claim(key, "run", sampled=False, reuse=True, owner="o")
            if claim.leased:
                await asyncio.sleep(0)  # the upstream call
                await store.finish(key, claim.slot, owner="o", answer=stock[i % len(stock)], pair=None)

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(c)))
    return n / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / n


async def measure(args: argparse.Namespace, server: subprocess.Popen[str], port: int) -> None:
    stock = answers(args.corpus)
    rows: dict[str, list[dict[str, Any]]] = {"disk": [], "redis": []}
    for rnd in range(args.rounds):
        for name in ("disk", "redis") if rnd % 2 == 0 else ("redis", "disk"):
            where = tempfile.mkdtemp(prefix="bench-store-") if name == "disk" else \
                f"redis://127.0.0.1:{port}/0?prefix=r{rnd}:"
            store = open_store(where)
            await load(store, stock, 300, args.concurrency, "warm", False)
            row: dict[str, Any] = {}
            for what in ("miss", "hit"):
                trips0 = getattr(getattr(store, "batch", None), "round_trips", 0)
                r0 = cpu_seconds(server.pid)
                if what == "hit":
                    await load(store, stock, 300, args.concurrency, f"h{rnd}", False)
                rps, cpu = await load(store, stock, args.requests, args.concurrency, f"{what[0]}{rnd}",
                                      what == "hit")
                row[f"{what}_rps"], row[f"{what}_cpu_ms"] = rps, cpu
                row[f"{what}_redis_cpu_ms"] = (cpu_seconds(server.pid) - r0) * 1000 / args.requests
                trips = getattr(getattr(store, "batch", None), "round_trips", 0) - trips0
                row[f"{what}_round_trips_per_req"] = trips / args.requests
            await store.aclose()
            if name == "disk":
                shutil.rmtree(where, ignore_errors=True)
            rows[name].append(row)
            print(name, {k: round(v, 4) for k, v in row.items()}, flush=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in rows.items()}
    print(f"\n| store ({'corpus' if args.corpus else 'small'} answers, c={args.concurrency}, median of "
          f"{args.rounds}) | disk | Redis |")
    print("|---|---:|---:|")
    for k in med["disk"]:
        print(f"| {k} | {med['disk'][k]:.4g} | {med['redis'][k]:.4g} |")
    for what in ("miss", "hit"):
        d = med["disk"][f"{what}_cpu_ms"]
        r = med["redis"][f"{what}_cpu_ms"] + med["redis"][f"{what}_redis_cpu_ms"]
        print(f"| {what}: CPU per request, Redis (proxy + server) / disk | | {r / d:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus", action="store_true")
    args = ap.parse_args()
    server, port = start_redis()
    try:
        import uvloop

        uvloop.run(measure(args, server, port))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
