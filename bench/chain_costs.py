"""What each interceptor of the default chain costs: evalproxy's CPU per request with one layer left out at a time.

    .venv/bin/python bench/chain_costs.py [--rounds 3] [--seconds 4] [--concurrency 64]

Variants (each its own ``evalproxy serve``, rounds interleaved, medians): the default chain, the default chain
without each of its interceptors, ``endpoint`` alone, and the bare pass-through. The difference in CPU ms per request
between the default chain and a variant is what that interceptor costs (cache misses: every prompt unique).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from run import DEFAULT_CHAIN, measured, running, start_upstream


def variants() -> dict[str, dict[str, Any] | None]:
    chain = DEFAULT_CHAIN["interceptors"]
    out: dict[str, dict[str, Any] | None] = {"default chain": DEFAULT_CHAIN}
    for ic in chain:
        name = ic if isinstance(ic, str) else ic["name"]
        if name != "endpoint":
            out[f"without {name}"] = {**DEFAULT_CHAIN, "interceptors": [i for i in chain if i is not ic]}
    out["endpoint only"] = {**DEFAULT_CHAIN, "interceptors": ["endpoint"]}
    out["bare"] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--stream", action="store_true", help="streams paced 50 ms per event instead of whole answers")
    args = ap.parse_args()
    cases = variants()
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    rps: dict[str, list[float]] = {k: [] for k in cases}
    upstream = start_upstream()
    try:
        for rnd in range(args.rounds):
            for label, chain in cases.items():
                with running("bare" if chain is None else "evalproxy", upstream.url, chain) as (proc, url):
                    kw: dict[str, Any] = {"concurrency": args.concurrency, "requests": 10**6,
                                          "seconds": args.seconds, "unique": f"cc{rnd}-{time.time_ns()}"}
                    if args.stream:
                        kw.update(stream=True, model="bench-g50", ramp=1.0, seconds=args.seconds + 1)
                    measured(proc, upstream, url, concurrency=8, requests=300, seconds=5, unique="warm" + kw["unique"])
                    res = measured(proc, upstream, url, **kw)
                cpu[label].append(res["cpu_ms_per_req"])
                rps[label].append(res["rps"])
                print(f"round {rnd + 1} {label:<24} cpu/req={res['cpu_ms_per_req']:.3f} ms rps={res['rps']:.0f} "
                      f"errors={res['errors']}", flush=True)
    finally:
        upstream.stop()
    base = statistics.median(cpu["default chain"])
    print(f"\n| variant (c={args.concurrency}{', streams' if args.stream else ''}) | proxy CPU ms/req | "
          f"req/s | saved vs default chain |")
    print("|---|---:|---:|---:|")
    for label in cases:
        c = statistics.median(cpu[label])
        print(f"| {label} | {c:.3f} | {statistics.median(rps[label]):.0f} | {base - c:+.3f} |")


if __name__ == "__main__":
    main()
