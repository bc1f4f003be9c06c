"""Profile evalproxy under load with py-spy: where its CPU goes, by function (self and inclusive time).

    .venv/bin/python bench/profile.py [--scenario c64|stream|burst|hits|corpus] [--seconds 15] [--native]
                                      [--store disk|redis] [--prev-python /tmp/prev-python]

Starts the fake upstream and ``evalproxy serve`` (default chain) as in bench/run.py, keeps a load generator on it,
records the proxy with ``py-spy record --format raw`` (needs ptrace), and prints the top functions. The collapsed
stacks are kept in bench/results/ (open them with speedscope or inferno for a flame graph). ``--store redis``: the
proxy's cache on a redis-server started on a free loopback port (run.py's evalproxy_redis); its CPU per request is
printed too.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import run
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


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    return sum(proc_cpu_split(pid))


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def redis_calls(url: str) -> dict[str, int]:
    """Calls per command so far on the redis-server at ``url`` (INFO commandstats)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["c64", "stream", "burst", "hits", "corpus"], default="c64",
                    help="corpus: misses of the realistic corpus's answers (run.py's corpus_c64)")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--native", action="store_true", help="include native frames (C extensions)")
    ap.add_argument("--cpu-only", action="store_true",
                    help="no py-spy: only the CPU (and redis-server's calls) per request under the same load")
    ap.add_argument("--warm-model", default=None,
                    help="the model of the 300 warm-up requests (their answers train the store's dictionary), e.g. "
                         "bench-corpus; default: the simulator's small answers, as in bench/run.py")
    ap.add_argument("--store", choices=["disk", "redis"], default="disk",
                    help="the proxy's cache: a directory (default) or a redis-server started here")
    ap.add_argument("--prev-python", help="profile the previous main (run.py's evalproxy_prev) with this python")
    args = ap.parse_args()
    if args.prev_python and args.store == "redis":
        ap.error("--prev-python profiles the previous main on disk only")
    target = "evalproxy_prev" if args.prev_python else "evalproxy_redis" if args.store == "redis" else "evalproxy"
    run.PREV_PY = args.prev_python
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    which = args.scenario + ("-prev" if args.prev_python else "") + ("-redis" if args.store == "redis" else "")
    out = HERE / "results" / f"profile-{which}-{time.strftime('%Y%m%dT%H%M%S')}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    upstream = start_upstream()
    try:
        with running(target, upstream.url) as (proc, url):
            assert proc is not None
            warm: dict[str, object] = {"model": args.warm_model} if args.warm_model else {}
            loadgen(url, concurrency=8, requests=300, seconds=5, unique="warm", **warm)
            kw: dict[str, object] = {"concurrency": 64, "requests": 10**6, "seconds": args.seconds + 4,
                                     "unique": f"prof-{time.time_ns()}"}
            if args.scenario == "stream":
                kw.update(concurrency=256, stream=True, model="bench-g50", ramp=1.0)
            elif args.scenario == "burst":  # run.py's stream_c256_burst: 256 streams as fast as the upstream sends
                kw.update(concurrency=256, stream=True)
            elif args.scenario == "hits":
                kw.update(repeat=1000)
                loadgen(url, concurrency=32, requests=1000, seconds=30, unique=kw["unique"], repeat=1000)
            elif args.scenario == "corpus":
                kw.update(model="bench-corpus")
            result: list[dict[str, object]] = []
            load = threading.Thread(target=lambda: result.append(loadgen(url, **kw)))
            redis = run._REDIS[0].pid if args.store == "redis" else None
            cpu0 = proc_cpu_split(proc.pid)
            rd0 = proc_cpu(redis) if redis else 0.0
            calls0 = redis_calls(run._REDIS_URL[0]) if redis else {}
            load.start()
            time.sleep(2)
            cmd = [spy, "record", "--pid", str(proc.pid), "--duration", str(int(args.seconds)), "--rate", "250",
                   "--format", "raw", "--output", str(out), "--nonblocking"]
            if args.native:
                cmd.append("--native")
            if args.cpu_only:
                time.sleep(args.seconds)
            else:
                subprocess.run(cmd, check=True, capture_output=True, timeout=args.seconds + 60)
            load.join(timeout=args.seconds + 120)
            user, system = (b - a for a, b in zip(cpu0, proc_cpu_split(proc.pid), strict=True))
            cpu = user + system
            rd_cpu = proc_cpu(redis) - rd0 if redis else None
            calls = {k: v - calls0.get(k, 0) for k, v in redis_calls(run._REDIS_URL[0]).items()} if redis else {}
    finally:
        upstream.stop()
    text = "" if args.cpu_only else top(out)
    if result:
        r = result[0]
        ok = int(str(r.get("ok", 0))) or 1
        head = (f"load: {float(str(r.get('rps', 0))):.0f} req/s, {ok} requests; proxy CPU {1000 * cpu / ok:.3f} ms/req "
                f"(user {1000 * user / ok:.3f}, system {1000 * system / ok:.3f}; py-spy's own cost included)")
        if rd_cpu is not None:
            per = ", ".join(f"{k} {v / ok:.3f}" for k, v in sorted(calls.items()) if v)
            head += f"\nredis-server CPU {1000 * rd_cpu / ok:.3f} ms/req; its calls per request: {per}"
        text = f"{head}\n{text}"
    print(text)
    if not args.cpu_only:
        out.with_suffix(".top.txt").write_text(text)
        print(f"\ncollapsed stacks: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
