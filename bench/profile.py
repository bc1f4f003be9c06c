"""Profile evalproxy under load with py-spy: where its CPU goes, by function (self and inclusive time).

    .venv/bin/python bench/profile.py [--scenario c64|stream|hits] [--seconds 15] [--native]

Starts the fake upstream and ``evalproxy serve`` (default chain) as in bench/run.py, keeps a load generator on it,
records the proxy with ``py-spy record --format raw`` (needs ptrace), and prints the top functions. The collapsed
stacks are kept in bench/results/ (open them with speedscope or inferno for a flame graph).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from run import HERE, PY, loadgen, running, start_upstream


def top(collapsed: Path, n: int = 40) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        # "function (path/file.py:123)" -> "function (file.py)": lines of one function add up
        frames = [re.sub(r"\(.*/([^/:]+):\d+\)", r"(\1)", f) for f in stack.split(";")]
        total += c
        self_t[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    out = [f"{total} samples", "", "self %  function"]
    out += [f"{100 * c / total:5.1f}  {f}" for f, c in self_t.most_common(n)]
    out += ["", "incl %  function"]
    out += [f"{100 * c / total:5.1f}  {f}" for f, c in incl.most_common(n)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["c64", "stream", "hits"], default="c64")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--native", action="store_true", help="include native frames (C extensions)")
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    out = HERE / "results" / f"profile-{args.scenario}-{time.strftime('%Y%m%dT%H%M%S')}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    upstream = start_upstream()
    try:
        with running("evalproxy", upstream.url) as (proc, url):
            assert proc is not None
            loadgen(url, concurrency=8, requests=300, seconds=5, unique="warm")
            kw: dict[str, object] = {"concurrency": 64, "requests": 10**6, "seconds": args.seconds + 4,
                                     "unique": f"prof-{time.time_ns()}"}
            if args.scenario == "stream":
                kw.update(concurrency=256, stream=True, model="bench-g50", ramp=1.0)
            elif args.scenario == "hits":
                kw.update(repeat=1000)
                loadgen(url, concurrency=32, requests=1000, seconds=30, unique=kw["unique"], repeat=1000)
            load = threading.Thread(target=loadgen, args=(url,), kwargs=kw)
            load.start()
            time.sleep(2)
            cmd = [spy, "record", "--pid", str(proc.pid), "--duration", str(int(args.seconds)), "--rate", "250",
                   "--format", "raw", "--output", str(out), "--nonblocking"]
            if args.native:
                cmd.append("--native")
            subprocess.run(cmd, check=True, capture_output=True, timeout=args.seconds + 60)
            load.join(timeout=args.seconds + 120)
    finally:
        upstream.stop()
    text = top(out)
    out.with_suffix(".top.txt").write_text(text)
    print(text)
    print(f"\ncollapsed stacks: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
