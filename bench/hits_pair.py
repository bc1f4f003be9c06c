"""Cache hits on the disk store against the Redis store, both proxies up at once and measured alternately, round by
round: c=1 hit p50, c=64 hit req/s and the proxy's CPU per hit (run.py's cache_hits_c1 and cache_hits_c64).

    .venv/bin/python bench/hits_pair.py [--rounds 4] [--seconds 4] [--pin]

run.py measures each target's scenarios as one block, so a change of the machine's state between blocks lands on one
side of a ratio; here each round measures both sides seconds apart, in alternating order. ``--pin``: the proxies on
CPU 0, redis-server, the upstream and the load generator on CPU 1 (``taskset``), to tell the code's cost from where
the scheduler put the processes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import time

import run
from run import loadgen, measured, running, start_upstream

TARGETS = ("evalproxy", "evalproxy_redis")


def pin(pid: int, cpu: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cpu, str(pid)], check=True, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--pin", action="store_true")
    args = ap.parse_args()
    up = start_upstream()
    ratios: dict[str, list[float]] = {"c1 p50 diff ms": [], "c64 req/s": [], "c64 CPU/hit": []}
    try:
        with contextlib.ExitStack() as stack:
            targets = {n: stack.enter_context(running(n, up.url)) for n in TARGETS}
            tag = f"pair{time.time_ns()}"
            for _, url in targets.values():
                loadgen(url, concurrency=8, requests=300, seconds=5, unique="warm")
                loadgen(url, concurrency=32, requests=1000, seconds=30, unique=tag, repeat=1000)
            if args.pin:
                for proc, _ in targets.values():
                    assert proc is not None
                    pin(proc.pid, "0")
                assert loadgen.proc is not None
                for pid in (run._REDIS[0].pid, up.pid, loadgen.proc.pid):
                    pin(pid, "1")
            for rnd in range(args.rounds):
                row = {}
                for name in TARGETS if rnd % 2 == 0 else TARGETS[::-1]:
                    proc, url = targets[name]
                    kw = {"requests": 10**6, "seconds": args.seconds, "unique": tag, "repeat": 1000}
                    c1 = measured(proc, up, url, concurrency=1, **kw)
                    c64 = measured(proc, up, url, concurrency=64, **kw)
                    row[name] = (c1["p50_ms"], c64["rps"], c64["cpu_ms_per_req"])
                d, r = row["evalproxy"], row["evalproxy_redis"]
                ratios["c1 p50 diff ms"].append(r[0] - d[0])
                ratios["c64 req/s"].append(r[1] / d[1])
                ratios["c64 CPU/hit"].append(r[2] / d[2])
                print(f"round {rnd}: c=1 p50 disk {d[0]:.3f} Redis {r[0]:.3f} ms ({r[0] - d[0]:+.3f}) | c=64 req/s "
                      f"{d[1]:.0f} / {r[1]:.0f} = {r[1] / d[1]:.2f} | CPU ms/hit {d[2]:.3f} / {r[2]:.3f} = "
                      f"{r[2] / d[2]:.2f}", flush=True)
    finally:
        loadgen.close()
        up.stop()
    for k, v in ratios.items():
        print(f"Redis vs disk, {k}: median {statistics.median(v):.2f} ({min(v):.2f} - {max(v):.2f})")


if __name__ == "__main__":
    main()
