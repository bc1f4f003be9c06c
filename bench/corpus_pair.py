"""Corpus JSON misses (run.py's corpus_c64) on evalproxy against the previous main, paired within rounds: the proxy's
CPU per request, and what the store's compression dictionary was trained on.

    .venv/bin/python bench/corpus_pair.py --prev-python /tmp/prev-python [--rounds 5] [--requests 5000]

Each round starts each target afresh (new cache), warms it with 100 small answers, then trains its store's dictionary
(issue 23) on the first 200 answers it stores: ``--train small`` (the default) on the simulator's small answers of a
throughput phase, as in bench/run.py, where the corpus scenarios come after the throughput ones; ``--train corpus``
on corpus answers, as in a run whose first answers are of the kind it goes on asking for. Then one corpus_c64 load
is measured. A narrower harness than run.py (one scenario, ~10 s per target and round), for issue 23's follow-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import run
from run import cpu_seconds, loadgen, running, start_upstream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prev-python", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--train", choices=["small", "corpus"], default="small")
    args = ap.parse_args()
    run.PREV_PY = args.prev_python
    targets = ["evalproxy", "evalproxy_prev"]
    cpu: dict[str, list[float]] = {t: [] for t in targets}
    upstream = start_upstream()
    try:
        for rnd in range(args.rounds):
            for target in targets[rnd % 2:] + targets[: rnd % 2]:
                tag = f"p{rnd}-{target}-{time.time_ns()}"
                with running(target, upstream.url) as (proc, url):
                    assert proc is not None
                    loadgen(url, concurrency=8, requests=100, seconds=5, unique=f"warm-{tag}")
                    model = {"model": "bench-corpus"} if args.train == "corpus" else {}
                    loadgen(url, concurrency=64, requests=1000, seconds=5, unique=f"train-{tag}", **model)
                    time.sleep(0.5)  # the dictionary is trained in a thread: out of the measured window
                    c0 = cpu_seconds(proc.pid)
                    res = loadgen(url, model="bench-corpus", concurrency=64, requests=args.requests, seconds=0.5,
                                  unique=f"k-{tag}")
                    ms = (cpu_seconds(proc.pid) - c0) * 1000 / max(1, res["ok"])
                    cpu[target].append(ms)
                    print(f"round {rnd + 1} {target:<15} {res['rps']:7.0f} req/s  {ms:.3f} CPU ms/req", flush=True)
    finally:
        loadgen.close()
        upstream.stop()
    ratios = [a / b for a, b in zip(cpu["evalproxy"], cpu["evalproxy_prev"], strict=True)]
    print(f"train={args.train}: CPU ms/req median evalproxy {statistics.median(cpu['evalproxy']):.3f}, "
          f"previous {statistics.median(cpu['evalproxy_prev']):.3f}; paired ratio median "
          f"{statistics.median(ratios):.3f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
