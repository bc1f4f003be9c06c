"""/health latency while the proxy handles one 60 MiB request (issue 18: the loop is never held for long).

    python bench/large_body.py [--rounds 3]

Starts the fake upstream and `evalproxy serve` (default chain) as processes, then for each body shape sends one
60 MiB request while a second connection asks /health every 20 ms, and prints /health's latency percentiles during
the request next to its latency on an idle proxy (the same run, the same machine):

    long-strings   a long-context request: 64 messages of ~1 MiB of code each (few objects)
    many-objects   2.1 M tiny messages (refused with 413 after a child process counted them)
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request
from typing import Any

from run import running, start_upstream

SHAPES = {
    "long-strings": b'{"model":"bench","temperature":0,"messages":[' + b",".join(
        [b'{"role":"user","content":"' + b"int f() { return [1]; } " * 42_000 + b'"}'] * 64) + b"]}",
    "many-objects": b'{"model":"bench","temperature":0,"messages":['
    + b",".join([b'{"role":"user","content":"a"}'] * 2_100_000) + b"]}",
}


def health_latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"{url}/health", timeout=60) as r:
            r.read()
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.02)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(url: str, body: bytes | None, idle_seconds: float = 2.0) -> dict[str, Any]:
    lat: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=health_latencies, args=(url, stop, lat))
    t.start()
    status = None
    t0 = time.perf_counter()
    if body is None:
        time.sleep(idle_seconds)
    else:
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                status = r.status
                r.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
    seconds = time.perf_counter() - t0
    stop.set()
    t.join()
    return {"status": status, "seconds": round(seconds, 2), "health_n": len(lat),
            "health_p50_ms": round(statistics.median(lat), 2), "health_p99_ms": round(pct(lat, 0.99), 2),
            "health_max_ms": round(max(lat), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    upstream = start_upstream()
    try:
        with running("evalproxy", upstream.url) as (_, url):
            for r in range(args.rounds):
                print(json.dumps({"round": r, "shape": "idle", **measure(url, None)}), flush=True)
                for name, body in SHAPES.items():
                    print(json.dumps({"round": r, "shape": name, "bytes": len(body), **measure(url, body)}),
                          flush=True)
    finally:
        upstream.stop()


if __name__ == "__main__":
    main()
