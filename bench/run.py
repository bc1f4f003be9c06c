"""evalproxy benchmarks: one command, everything on 127.0.0.1, ratios from one run.

    .venv/bin/python bench/run.py [--quick] [--rounds 3] [--peers bare,nemo028,nemo030] [--out FILE]

Starts fast fake upstreams (bench/upstream.py), the proxies under test, and a load generator (bench/loadgen.py), each
as its own process. Scenarios run in interleaved rounds (every target once per round, in turn) and the median of the
rounds is reported. Targets: ``direct`` (the upstream itself), ``bare`` (a bare aiohttp pass-through: the ceiling for
any Python proxy), ``evalproxy`` (default chain: system_message, reasoning, caching, endpoint, response_stats; the
cache misses unless the scenario is about hits), and NeMo Evaluator's adapter server 0.2.8 and 0.3.0 with caching on,
each in its own venv under bench/.venvs (made by this script; a peer that cannot be installed is reported, not
fatal). The proxy's CPU milliseconds per request come from /proc/<pid>/stat over the measured window.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
NEMO = {"nemo028": ("0.2.8", "python3.11"), "nemo030": ("0.3.0", "python3.12")}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (NeMo 0.2.8 serves from a child process)."""
    total = cpu_seconds(pid)
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for c in child.read_text().split():
            with contextlib.suppress(OSError):
                total += tree_cpu_seconds(int(c))
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port: int, seconds: float = 60) -> None:
    import socket

    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    url: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_upstream(**kw: Any) -> Proc:
    args = [PY, str(HERE / "upstream.py")] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    port = int(p.stdout.readline())
    return Proc(p, f"http://127.0.0.1:{port}")


EVALPROXY_CHAIN = {
    "interceptors": [
        {"name": "system_message", "config": {"system_message": "You are a careful assistant.", "strategy": "prepend"}},
        "reasoning",
        "caching",
        "endpoint",
        "response_stats",
    ],
    "generate_html_report": False,
}


def start_target(name: str, upstream: str, workdir: Path) -> Proc | None:
    if name == "direct":
        return None
    if name == "bare":
        p = subprocess.Popen([PY, str(HERE / "bare_proxy.py"), "--upstream", upstream], stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout is not None
        return Proc(p, f"http://127.0.0.1:{int(p.stdout.readline())}")
    if name == "evalproxy":
        cfg = workdir / "evalproxy.json"
        cfg.write_text(json.dumps({**EVALPROXY_CHAIN, "server": {"status_line": "off"}}))
        p = subprocess.Popen([PY, "-m", "evalproxy", "serve", "-c", str(cfg), "--port", "0", "--upstream",
                              f"{upstream}/v1", "-o", str(workdir / "out"), "--log-level", "WARNING"],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert p.stdout is not None
        line = p.stdout.readline()
        return Proc(p, line.split("listening on ")[1].strip())
    if name in NEMO:
        py = HERE / ".venvs" / name / "bin" / "python"
        port = free_port()
        env = {**os.environ, "ADAPTER_HOST": "127.0.0.1", "ADAPTER_PORT": str(port),
               "LOG_LEVEL": "WARNING", "NEMO_EVALUATOR_LOG_LEVEL": "WARNING"}
        p = subprocess.Popen([str(py), str(HERE / "nemo_server.py"), NEMO[name][0], upstream, str(port),
                              str(workdir / "out")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             text=True)
        wait_port(port)
        return Proc(p, f"http://127.0.0.1:{port}")
    raise ValueError(name)


def loadgen(url: str, **kw: Any) -> dict[str, Any]:
    args = [PY, str(HERE / "loadgen.py"), url]
    for k, v in kw.items():
        if v is True:
            args.append(f"--{k}")
        elif v not in (None, False):
            args += [f"--{k}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measured(target: Proc | None, url: str, **kw: Any) -> dict[str, Any]:
    before = tree_cpu_seconds(target.pid) if target else 0.0
    res = loadgen(url, **kw)
    if target:
        res["cpu_ms_per_req"] = (tree_cpu_seconds(target.pid) - before) * 1000 / max(1, res["ok"])
        res["rss_mb"] = rss_mb(target.pid)
    return res


@contextlib.contextmanager
def running(name: str, upstream: str) -> Iterator[tuple[Proc | None, str]]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    proc = start_target(name, upstream, work)
    try:
        yield proc, (proc.url if proc else upstream)
    finally:
        if proc:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


def ensure_nemo(name: str) -> str | None:
    """Make the peer's venv if needed; None if ready, else why it cannot run here."""
    version, python = NEMO[name]
    venv = HERE / ".venvs" / name
    if (venv / "bin" / "python").exists():
        ok = subprocess.run([str(venv / "bin" / "python"), "-c", "import nemo_evaluator"], capture_output=True)
        if ok.returncode == 0:
            return None
    interpreter = shutil.which(python) or next(
        (str(p) for p in sorted(Path("/root/.pyenv/versions").glob(f"{python[6:]}*/bin/python"))), None)
    if interpreter is None:
        return f"no {python} on this machine"
    made = subprocess.run([interpreter, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        return f"venv failed: {made.stderr[-300:]}"
    inst = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"nemo-evaluator=={version}"],
                          capture_output=True, text=True, timeout=900)
    if inst.returncode != 0:
        return f"pip install nemo-evaluator=={version} failed: {inst.stderr[-300:]}"
    return None


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in rounds[0]:
        vals = [r[k] for r in rounds if isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool)]
        if vals and len(vals) == len(rounds):
            out[k] = statistics.median(vals)
        elif k == "errors":
            kinds = set().union(*(r["errors"] for r in rounds))
            out[k] = {e: sum(r["errors"].get(e, 0) for r in rounds) for e in kinds}
        else:
            out[k] = rounds[-1][k]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests: a smoke run in about two minutes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", default="bare,nemo028,nemo030")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    q = args.quick
    n_lat, n_tput, n_stream, n_hits = (300, 2000, 512, 2000) if q else (1000, 6000, 1024, 6000)
    peers = [p for p in args.peers.split(",") if p]
    unavailable: dict[str, str] = {}
    for p in peers:
        if p in NEMO:
            why = ensure_nemo(p)
            if why:
                unavailable[p] = why
    targets = ["direct", "evalproxy", *[p for p in peers if p not in unavailable]]
    proxies = [t for t in targets if t != "direct"]

    ups = {
        "fast": start_upstream(),
        "slow": start_upstream(delay_ms=50),
        "stream": start_upstream(chunks=20, chunk_gap_ms=2),
    }
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def record(scenario: str, target: str, res: dict[str, Any]) -> None:
        results.setdefault(scenario, {}).setdefault(target, []).append(res)
        print(f"  {scenario:<16} {target:<10} rps={res['rps']:8.0f} p50={res['p50_ms']:7.2f}ms "
              f"p99={res['p99_ms']:7.2f}ms cpu/req={res.get('cpu_ms_per_req', 0):.3f}ms errors={res['errors']}",
              flush=True)

    try:
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            tag = f"r{rnd}-{time.time_ns()}"
            for target in targets:
                with running(target, ups["fast"].url) as (proc, url):
                    loadgen(url, concurrency=4, requests=200, unique=f"warm-{tag}")  # warm up
                    record("latency_c1", target, measured(proc, url, concurrency=1, requests=n_lat, unique=tag))
                    if target == "direct":
                        continue
                    record("tput_c64", target, measured(proc, url, concurrency=64, requests=n_tput,
                                                        unique=tag + "b"))
                    record("tput_c256", target, measured(proc, url, concurrency=256, requests=n_tput,
                                                         unique=tag + "c"))
                    if target == "evalproxy" or target in NEMO:
                        # Cache hits: prime 1000 prompts, then replay them.
                        loadgen(url, concurrency=32, requests=1000, unique=tag + "h", repeat=1000)
                        record("cache_hits_c64", target, measured(proc, url, concurrency=64, requests=n_hits,
                                                                  unique=tag + "h", repeat=1000))
                        record("cache_hits_c1", target, measured(proc, url, concurrency=1, requests=n_lat,
                                                                 unique=tag + "h", repeat=1000))
            for target in ["direct", *proxies]:
                with running(target, ups["slow"].url) as (proc, url):
                    record("tput_c64_50ms", target, measured(proc, url, concurrency=64, requests=n_tput // 2,
                                                             unique=tag + "s"))
            for target in ["direct", *[t for t in proxies if t not in NEMO]]:
                with running(target, ups["stream"].url) as (proc, url):
                    record("stream_c256", target, measured(proc, url, concurrency=256, requests=n_stream,
                                                           unique=tag + "t", stream=True))
        # Memory: idle, after 10k and after 100k requests (quick: 2k and 20k).
        mem: dict[str, Any] = {}
        small, big = (2000, 20000) if q else (10_000, 100_000)
        with running("evalproxy", ups["fast"].url) as (proc, url):
            assert proc is not None
            time.sleep(1)
            mem["idle_mb"] = rss_mb(proc.pid)
            loadgen(url, concurrency=64, requests=small, unique="mem-a")
            mem[f"after_{small}_mb"] = rss_mb(proc.pid)
            loadgen(url, concurrency=64, requests=big - small, unique="mem-b")
            mem[f"after_{big}_mb"] = rss_mb(proc.pid)
            mem["growth_pct"] = 100 * (mem[f"after_{big}_mb"] - mem[f"after_{small}_mb"]) / mem[f"after_{small}_mb"]
    finally:
        for u in ups.values():
            u.stop()

    summary = {s: {t: median_of(r) for t, r in by.items()} for s, by in results.items()}
    lat = summary["latency_c1"]
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                 if ln.startswith("model name")), "?")},
        "quick": q, "rounds": args.rounds, "unavailable": unavailable, "summary": summary, "memory": mem,
        "added_latency_c1_ms": {t: {"p50": v["p50_ms"] - lat["direct"]["p50_ms"],
                                    "p99": v["p99_ms"] - lat["direct"]["p99_ms"]}
                                for t, v in lat.items() if t != "direct"},
    }
    if "stream_c256" in summary:
        st = summary["stream_c256"]
        report["added_stream_ms"] = {t: {"ttft_p99": v["ttft_p99_ms"] - st["direct"]["ttft_p99_ms"],
                                         "gap_p99": v["gap_p99_ms"] - st["direct"]["gap_p99_ms"],
                                         "events_min": v["events_min"], "events_max": v["events_max"]}
                                     for t, v in st.items() if t != "direct"}
    out = Path(args.out) if args.out else HERE / "results" / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("added_latency_c1_ms", "memory", "unavailable")}, indent=2))
    print_table(report)
    print(f"\nresults: {out}")


def print_table(report: dict[str, Any]) -> None:
    s = report["summary"]
    print("\n| scenario | target | req/s | p50 ms | p99 ms | proxy CPU ms/req | errors |")
    print("|---|---|---:|---:|---:|---:|---|")
    for scenario, by in s.items():
        for target, v in by.items():
            cpu = f"{v['cpu_ms_per_req']:.3f}" if "cpu_ms_per_req" in v else "-"
            print(f"| {scenario} | {target} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {cpu} | "
                  f"{sum(v['errors'].values()) if v['errors'] else 0} |")


if __name__ == "__main__":
    main()
