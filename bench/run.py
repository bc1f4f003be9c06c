"""evalproxy benchmarks: one command, everything on 127.0.0.1, ratios from one run.

    .venv/bin/python bench/run.py [--quick] [--rounds 3] [--peers bare,nemo028,nemo030] [--out FILE]

Every part is its own process: the fake upstream (bench/upstream.py, uvloop where installed), the proxy under test,
and one load generator per measurement (bench/loadgen.py). Targets:

* ``direct``: the upstream itself, the baseline for added latency;
* ``evalproxy``: ``python -m evalproxy serve`` with the default chain (system_message, reasoning, caching, endpoint,
  response_stats); every prompt is unique, so the cache misses, except in the cache-hit scenarios;
* ``bare``: a bare aiohttp pass-through (bench/bare_proxy.py), the ceiling for any Python proxy;
* ``nemo028`` / ``nemo030``: NeMo Evaluator's adapter server with caching on, each in its own venv under
  bench/.venvs, made here on first use (a peer that cannot be installed is reported, not fatal);
* ``evalproxy_asyncio``: evalproxy on asyncio's own loop (``--loop asyncio``; ``evalproxy`` runs on uvloop where it
  is installed), when asked for in ``--peers``;
* ``evalproxy_redis``: evalproxy with its cache on a redis-server that the run starts on loopback (``--cache-url``);
* ``evalproxy_workers2``: ``evalproxy serve --workers 2`` (on a 2-core machine shared with the load generator the
  figure is indicative only);
* ``evalproxy_fleet_disk`` / ``evalproxy_fleet_redis``: the fleet, two ``evalproxy serve`` processes sharing one
  store (one cache directory / one redis-server), each loaded by a load generator of its own with half the
  concurrency (the figures are the sums; on 2 cores, indicative only);
* ``evalproxy_prev``: ``python -m evalproxy serve`` exactly as ``evalproxy``, but run by the interpreter given in
  ``--prev-python`` (the venv of another checkout, e.g. the previous main in a git worktree), for paired
  new/previous ratios of req/s and CPU per request within one run.

Scenarios ``corpus_*`` ask for answers of the realistic corpus (bench/corpus.py: 1-30 KB, reasoning, tool calls,
streams); after its round, the store of each evalproxy target is read back and its bytes per stored corpus answer
set against the answers' own bytes. Targets on Redis also report redis-server's own CPU per request.

A round starts each target once and runs every scenario against it; rounds interleave the targets (each round in a
rotated order) and every figure is the median over rounds, ratios being taken within a round first. Each measurement
is bounded in requests and in seconds. The proxy's CPU milliseconds per request come from /proc/<pid>/stat (utime +
stime, children included) over the measured window; RSS from /proc/<pid>/status.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
NEMO = {"nemo028": ("0.2.8", "3.11"), "nemo030": ("0.3.0", "3.12")}
ALL_TARGETS = ["direct", "bare", "evalproxy", "evalproxy_prev", "evalproxy_asyncio", "evalproxy_redis",
               "evalproxy_workers2", "evalproxy_fleet_disk", "evalproxy_fleet_redis", "nemo028", "nemo030"]
FLEET = ("evalproxy_fleet_disk", "evalproxy_fleet_redis")
PREV_PY: str | None = None  # the interpreter of target evalproxy_prev (--prev-python)
STREAM_EVENTS = 23  # role, 20 content events, finish, [DONE] (bench/upstream.py)
DEFAULT_CHAIN = {
    "interceptors": [
        {"name": "system_message", "config": {"system_message": "You are a careful assistant.", "strategy": "prepend"}},
        "reasoning",
        {"name": "caching", "config": {"reuse_cached_responses": True}},  # NeMo's default is false; ours true
        "endpoint",
        "response_stats",
    ],
    "generate_html_report": False,
    "server": {"status_line": "off"},
}


# -- processes ---------------------------------------------------------------------------------------------------------
def _pids(pid: int) -> list[int]:
    """A process and its descendants (NeMo Evaluator 0.2.8 may serve from a child)."""
    out = [pid]
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for c in children.read_text().split():
                out += _pids(int(c))
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in _pids(pid):
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_mb(pid: int) -> float:
    total = 0.0
    for p in _pids(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {seconds:g}s")


def first_line(proc: subprocess.Popen[str], seconds: float = 60) -> str:
    """The next line a child prints (its port, its URL, a result), bounded in time."""
    assert proc.stdout is not None
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(seconds):
        proc.kill()
        raise RuntimeError(f"{proc.args!r} printed nothing in {seconds:g}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{proc.args!r} exited with {proc.wait()} before printing its address")
    return line


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    url: str
    store: str | None = None
    """Where an evalproxy target keeps its cache: its output dir (the store it used) or its store URL."""
    fleet: list[Proc] | None = None
    """The other proxies of a fleet target (this one is the first)."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def pids(self) -> list[int]:
        return [self.pid] + [p.pid for p in self.fleet or []]

    @property
    def urls(self) -> list[str]:
        return [self.url] + [p.url for p in self.fleet or []]

    def stop(self) -> None:
        for other in self.fleet or []:
            other.stop()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_upstream() -> Proc:
    from corpus import DEFAULT, load

    load()  # made on first use (about 20 s)
    p = subprocess.Popen([PY, str(HERE / "upstream.py")], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "BENCH_CORPUS": str(DEFAULT)})
    return Proc(p, f"http://127.0.0.1:{int(first_line(p))}")


def start_target(name: str, upstream: str, workdir: Path, chain: dict[str, Any] | None = None) -> Proc | None:
    if name == "direct":
        return None
    if name == "bare":
        p = subprocess.Popen([PY, str(HERE / "bare_proxy.py"), "--upstream", upstream], stdout=subprocess.PIPE,
                             text=True)
        return Proc(p, f"http://127.0.0.1:{int(first_line(p))}")
    if name in FLEET:
        # A fresh key prefix per start: a new, empty cache on the shared server, as a fresh cache dir.
        store = (f"{redis_url()}?prefix=bench-{time.time_ns()}:" if name.endswith("redis")
                 else str(workdir / "shared-cache"))
        a, b = (start_evalproxy(name, upstream, workdir / x, chain, store) for x in ("a", "b"))
        a.fleet = [b]
        return a
    if name.startswith("evalproxy"):
        # A fresh key prefix per start: a new, empty cache on the shared server, as a fresh cache dir.
        url = f"{redis_url()}?prefix=bench-{time.time_ns()}:" if name == "evalproxy_redis" else None
        return start_evalproxy(name, upstream, workdir, chain, url)
    if name in NEMO:
        py = HERE / ".venvs" / name / "bin" / "python"
        port = free_port()
        # Loopback only: NeMo Evaluator's telemetry (not used by the adapter server) is switched off all the same.
        env = {**os.environ, "NEMO_EVALUATOR_TELEMETRY_LEVEL": "0",
               "NEMO_EVALUATOR_TELEMETRY_ENDPOINT": "http://127.0.0.1:9/", "LOG_LEVEL": "WARNING",
               "NEMO_EVALUATOR_LOG_LEVEL": "WARNING", "NO_PROXY": "*"}
        p = subprocess.Popen([str(py), str(HERE / "nemo_server.py"), NEMO[name][0], upstream, str(port),
                              str(workdir / "out")], env=env, stdout=subprocess.DEVNULL,
                             stderr=open(workdir / "stderr.log", "w"), text=True)  # noqa: SIM115 (closed with p)
        wait_port(port, p)
        return Proc(p, f"http://127.0.0.1:{port}")
    raise ValueError(name)


def start_evalproxy(name: str, upstream: str, workdir: Path, chain: dict[str, Any] | None,
                    store: str | None) -> Proc:
    """``evalproxy serve`` for target ``name``; ``store``: a Redis URL (``--cache-url``) or a cache directory shared
    with other processes (else the run's own ``out/cache``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "evalproxy.json"
    config = json.loads(json.dumps(chain or DEFAULT_CHAIN))
    if store is not None and "://" not in store:
        for ic in config["interceptors"]:
            if isinstance(ic, dict) and ic["name"] == "caching":
                ic["config"]["cache_dir"] = store
    cfg.write_text(json.dumps(config))
    loop = {"evalproxy_asyncio": ["--loop", "asyncio"], "evalproxy_workers2": ["--workers", "2"]}.get(name, [])
    if store is not None and "://" in store:
        loop = ["--cache-url", store]
    py = PREV_PY if name == "evalproxy_prev" else PY
    assert py is not None
    p = subprocess.Popen([py, "-m", "evalproxy", "serve", *loop, "--config", str(cfg), "--port", "0", "--upstream",
                          f"{upstream}/v1", "--output-dir", str(workdir / "out"), "--log-level", "WARNING"],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = first_line(p)
    if "listening on " not in line:
        raise RuntimeError(f"unexpected first line from evalproxy: {line!r}")
    return Proc(p, line.split("listening on ")[1].split()[0].rstrip(";"), store=store or str(workdir / "out"))


_REDIS: list[subprocess.Popen[str]] = []
_REDIS_URL: list[str] = []


def start_redis() -> tuple[subprocess.Popen[str], int]:
    """A redis-server on a free loopback port, no persistence, in a directory of its own, ready: (process, port).
    The caller stops it."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                          "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, text=True)
    wait_port(port, p)
    return p, port


def redis_url() -> str:
    """A redis-server on a free loopback port for the whole run (stopped at exit), for peer evalproxy_redis."""
    if not _REDIS_URL:
        p, port = start_redis()
        _REDIS.append(p)
        _REDIS_URL.append(f"redis://127.0.0.1:{port}/0")
        atexit.register(p.terminate)
    return _REDIS_URL[0]


@contextlib.contextmanager
def running(name: str, upstream: str, chain: dict[str, Any] | None = None) -> Iterator[tuple[Proc | None, str]]:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))  # a fresh cache every time: misses
    proc = start_target(name, upstream, work, chain)
    try:
        yield proc, (proc.url if proc else upstream)
    finally:
        if proc:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


def ensure_nemo(name: str) -> str | None:
    """Make the peer's venv if needed; None when it is ready, else why it cannot run here."""
    version, pyver = NEMO[name]
    venv = HERE / ".venvs" / name
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import nemo_evaluator"], capture_output=True).returncode == 0:
        return None
    # pyenv's own install first: its shim on PATH fails for a version that is installed but not selected.
    interpreter = next((str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{pyver}*/bin/python"))),
                       None) or shutil.which(f"python{pyver}")
    if interpreter is None:
        return f"no Python {pyver} on this machine (nemo-evaluator {version} needs it)"
    print(f"making {venv} (nemo-evaluator=={version}, {interpreter})", flush=True)
    made = subprocess.run([interpreter, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        return f"venv failed: {made.stderr[-300:]}"
    inst = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"nemo-evaluator=={version}"],
                          capture_output=True, text=True, timeout=900)
    if inst.returncode != 0:
        return f"pip install nemo-evaluator=={version} failed: {inst.stderr[-300:]}"
    return None


# -- measuring ---------------------------------------------------------------------------------------------------------
class LoadGen:
    """The load generator process (bench/loadgen.py), one for the whole run, driven a line at a time."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def __call__(self, url: str, **kw: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([PY, str(HERE / "loadgen.py"), "-"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        args = [url]
        for k, v in kw.items():
            flag = "--" + k.replace("_", "-")
            if v is True:
                args.append(flag)
            elif v not in (None, False):
                args += [flag, str(v)]
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        limit = float(kw.get("seconds", 60)) + 180  # a measurement stops sending after ``seconds``; then drains
        return dict(json.loads(first_line(self.proc, limit)))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


loadgen = LoadGen()


def measured(target: Proc | None, upstream: Proc, url: str, **kw: Any) -> dict[str, Any]:
    """One load generator run (one per proxy of a fleet, at once); CPU of the proxy (the fleet's in all), of the
    upstream and, for a target on Redis, of redis-server, over exactly that window."""
    pids = target.pids if target else []
    redis = _REDIS[0].pid if target and target.store and "://" in target.store else None
    cpu0 = sum(cpu_seconds(p) for p in pids)
    up0 = cpu_seconds(upstream.pid)
    rd0 = cpu_seconds(redis) if redis else 0.0
    res = loadgen(url, **kw) if not target or not target.fleet else fleet_load(target.urls, **kw)
    ok = max(1, res["ok"])
    res["upstream_cpu_ms_per_req"] = (cpu_seconds(upstream.pid) - up0) * 1000 / ok
    if target:
        res["cpu_ms_per_req"] = (sum(cpu_seconds(p) for p in pids) - cpu0) * 1000 / ok
        res["rss_mb"] = sum(rss_mb(p) for p in pids)
    if redis:
        res["redis_cpu_ms_per_req"] = (cpu_seconds(redis) - rd0) * 1000 / ok
    return res


def fleet_load(urls: list[str], **kw: Any) -> dict[str, Any]:
    """One load generator per proxy at once, each with its share of the concurrency and requests; misses get a
    prompt tag per proxy (the same prompts on two proxies would share answers), hits the same prompts everywhere."""
    procs = []
    for i, url in enumerate(urls):
        args = [PY, str(HERE / "loadgen.py"), url]
        share = {**kw, "concurrency": max(1, kw.get("concurrency", 1) // len(urls)),
                 "requests": max(1, kw.get("requests", 1) // len(urls))}
        if not share.get("repeat"):
            share["unique"] = f"{share.get('unique', 'run')}-{i}"
        for k, v in share.items():
            flag = "--" + k.replace("_", "-")
            args += [flag] if v is True else [] if v in (None, False) else [flag, str(v)]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    parts = [json.loads(first_line(p, float(kw.get("seconds", 60)) + 180)) for p in procs]
    for p in procs:
        p.wait()
    out = dict(parts[0])
    out["ok"] = sum(x["ok"] for x in parts)
    out["requests"] = sum(x["requests"] for x in parts)
    out["rps"] = sum(x["rps"] for x in parts)
    out["errors"] = {k: sum(x["errors"].get(k, 0) for x in parts) for x in parts for k in x["errors"]}
    for k in [k for k in out if k.endswith("_ms")]:
        out[k] = max(x[k] for x in parts)  # the slower proxy's figure
    return out


@dataclass
class Sizes:
    seconds: float  # each measurement stops sending after this long
    n_lat: int
    n_tput: int
    n_prime: int
    stream_rounds: int  # streams per worker in the stream scenarios
    mem_small: int
    mem_big: int
    n_warm: int = 300


FULL = Sizes(seconds=2.5, n_lat=2000, n_tput=20000, n_prime=600, stream_rounds=3, mem_small=10_000,
             mem_big=100_000)
QUICK = Sizes(seconds=0.5, n_lat=400, n_tput=5000, n_prime=100, stream_rounds=1, mem_small=2_000, mem_big=10_000,
              n_warm=100)


def scenarios(target: str, z: Sizes, tag: str) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(name, load generator arguments, what to run first unmeasured) for one target in one round."""
    s = z.seconds
    out: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
        ("latency_c1", {"concurrency": 1, "requests": z.n_lat, "seconds": s, "unique": tag + "l"}, None),
        ("tput_c64", {"concurrency": 64, "requests": z.n_tput, "seconds": s, "unique": tag + "a"}, None),
        ("tput_c256", {"concurrency": 256, "requests": z.n_tput, "seconds": s, "unique": tag + "b"}, None),
        ("tput_c64_50ms", {"concurrency": 64, "requests": z.n_tput, "seconds": s, "unique": tag + "s",
                           "model": "bench-d50"}, None),
    ]
    if target.startswith("evalproxy") or target in NEMO:
        hits = {"unique": tag + "h", "repeat": z.n_prime}
        prime = {"concurrency": 32, "requests": z.n_prime, "seconds": 4 * s + 5, **hits}
        out += [
            ("cache_hits_c64", {"concurrency": 64, "requests": z.n_tput, "seconds": s, **hits}, prime),
            ("cache_hits_c1", {"concurrency": 1, "requests": z.n_lat, "seconds": s, **hits}, None),
        ]
    if target != "direct" and target not in NEMO:
        # The realistic corpus: answers of 1-30 KB (JSON with reasoning or tool calls; streams), misses then hits.
        corpus = {"model": "bench-corpus", "concurrency": 64, "requests": z.n_tput, "seconds": s}
        out += [("corpus_c64", {**corpus, "unique": tag + "k"}, None),
                ("corpus_stream_c64", {**corpus, "stream": True, "unique": tag + "m"}, None)]
        if target.startswith("evalproxy"):
            hits = {"unique": tag + "q", "repeat": z.n_prime}
            out.append(("corpus_hits_c64", {**corpus, **hits},
                        {**corpus, "concurrency": 32, "requests": z.n_prime, "seconds": 4 * s + 5, **hits}))
    if target in FLEET:  # the fleet: throughput, hits and the corpus (the latency and stream scenarios are one proxy's)
        keep = ("tput_c64", "tput_c256", "cache_hits_c64", "corpus_c64", "corpus_stream_c64", "corpus_hits_c64")
        return [x for x in out if x[0] in keep]
    if target not in NEMO:  # NeMo Evaluator does not stream to the client: 0.2.8 buffers, 0.3.0 coalesces to JSON
        stream = {"stream": True, "expect_events": STREAM_EVENTS, "concurrency": 256}
        paced = {**stream, "requests": 256 * z.stream_rounds, "seconds": 3 * s + 2, "ramp": min(1.0, 2 * s)}
        # A few answers of the model first, unmeasured: a model the proxy has not seen yet is held (it may be one
        # whose template opens <think>) until its answers show it has no reasoning to hide; after the first wave of
        # any run, the rest of the run streams like this.
        shown = {**stream, "concurrency": 4, "requests": 4, "seconds": 10, "model": "bench-g50", "unique": tag + "w"}
        out += [
            # 256 streams at a model's pace (20 events 50 ms apart), starts spread over a second: the steady state.
            ("stream_c256", {**paced, "model": "bench-g50", "unique": tag + "t"}, shown),
            # The same for a model not seen before (same answers, another name): the first wave is held.
            ("stream_c256_cold", {**paced, "requests": 256, "model": "bench-g50-n20", "unique": tag + "c"}, None),
            # 256 streams as fast as the upstream can send: the proxy saturated; nothing may be lost.
            ("stream_c256_burst", {**stream, "requests": 256 * z.stream_rounds, "seconds": s, "unique": tag + "u"},
             None),
        ]
    return out


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in rounds[0]:
        vals = [r.get(k) for r in rounds]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            out[k] = statistics.median(vals)  # type: ignore[type-var]
        elif k == "errors":
            kinds = set().union(*(r["errors"] for r in rounds))
            out[k] = {e: sum(r["errors"].get(e, 0) for r in rounds) for e in kinds}
        else:
            out[k] = rounds[-1][k]
    out["rounds"] = len(rounds)
    return out


def paired(results: dict[str, dict[str, list[dict[str, Any]]]], scenario: str, a: str, b: str,
           fn: Callable[[dict[str, Any], dict[str, Any]], float]) -> float | None:
    """Median over rounds of ``fn(a's result, b's result)`` taken within each round."""
    ra, rb = results.get(scenario, {}).get(a), results.get(scenario, {}).get(b)
    if not ra or not rb:
        return None
    return statistics.median(fn(x, y) for x, y in zip(ra, rb, strict=False))


# -- the run -----------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short windows: a smoke run in under three minutes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--peers", default="bare,nemo028,nemo030",
                    help="besides direct and evalproxy: bare, nemo028, nemo030, evalproxy_asyncio, evalproxy_prev, "
                    "evalproxy_redis (cache on a redis-server started here), evalproxy_workers2 (serve --workers 2)")
    ap.add_argument("--prev-python", default=None,
                    help="the Python (a venv's bin/python) that runs peer evalproxy_prev, e.g. the previous main's")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory scenario")
    ap.add_argument("--out", default=None, help="JSON results (a Markdown table is written beside it)")
    args = ap.parse_args()
    global PREV_PY
    PREV_PY = args.prev_python
    z = QUICK if args.quick else FULL
    t_begin = time.monotonic()
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in ALL_TARGETS:
            ap.error(f"unknown peer {p!r}; choose from {', '.join(ALL_TARGETS[1:])}")
    unavailable: dict[str, str] = {}
    for p in peers:
        if p in NEMO and (why := ensure_nemo(p)):
            unavailable[p] = why
            print(f"peer {p} skipped: {why}", flush=True)
        if p == "evalproxy_redis" and shutil.which("redis-server") is None:
            unavailable[p] = "needs redis-server (Debian package redis-server; .ci/setup installs it)"
        if p == "evalproxy_prev" and (PREV_PY is None or subprocess.run(
                [PREV_PY, "-c", "import evalproxy"], cwd=ROOT).returncode != 0):
            unavailable[p] = "needs --prev-python, an interpreter that imports evalproxy"
    targets = [t for t in ALL_TARGETS if t in ("direct", "evalproxy") or (t in peers and t not in unavailable)]

    upstream = start_upstream()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    memory: dict[str, dict[str, list[float]]] = {}
    stored: dict[str, list[dict[str, Any]]] = {}

    def record(scenario: str, target: str, res: dict[str, Any]) -> None:
        results.setdefault(scenario, {}).setdefault(target, []).append(res)
        cpu = f"{res['cpu_ms_per_req']:.3f}" if "cpu_ms_per_req" in res else "  -  "
        extra = (f" ttft_p99={res['ttft_p99_ms']:.1f} gap_p99={res['gap_p99_ms']:.1f} events={res['events_min']}"
                 if res.get("events_max") else "")
        print(f"  {scenario:<18} {target:<16} rps={res['rps']:7.0f} p50={res['p50_ms']:7.2f} "
              f"p99={res['p99_ms']:7.2f} cpu/req={cpu}{extra} errors={res['errors'] or 0}", flush=True)

    try:
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}/{args.rounds} ({time.monotonic() - t_begin:.0f}s)", flush=True)
            order = targets[rnd % len(targets):] + targets[: rnd % len(targets)]
            for target in order:
                print(f" {target} ({time.monotonic() - t_begin:.0f}s)", flush=True)
                tag = f"r{rnd}-{target}-{time.time_ns()}"
                with running(target, upstream.url) as (proc, url):
                    mem = memory.setdefault(target, {})
                    if proc:
                        time.sleep(0.5)
                        mem.setdefault("idle_mb", []).append(rss_mb(proc.pid))
                    loadgen(url, concurrency=8, requests=z.n_warm, seconds=5, unique=f"warm-{tag}")
                    for name, kw, first in scenarios(target, z, tag):
                        if first:
                            loadgen(url, **first)
                        record(name, target, measured(proc, upstream, url, **kw))
                    if proc:
                        mem.setdefault("end_of_round_mb", []).append(rss_mb(proc.pid))
                    if proc and proc.store:
                        stored.setdefault(target, []).append(stored_sizes(proc.store))
                        print(f"  stored corpus answers: {stored[target][-1]}", flush=True)
        if not args.no_memory:
            memory["evalproxy"].update(memory_growth(upstream, z))
    finally:
        loadgen.close()
        upstream.stop()

    report = summarise(args, z, targets, unavailable, results, memory, time.monotonic() - t_begin)
    report["stored"] = {t: median_of(r) for t, r in stored.items()}
    report["issue23"] = issue23(report, results)
    out = Path(args.out) if args.out else HERE / "results" / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    md = markdown(report)
    out.with_suffix(".md").write_text(md)
    print("\n" + md)
    print(f"results: {out} and {out.with_suffix('.md')} ({report['seconds']:.0f}s)")


def stored_sizes(where: str) -> dict[str, Any]:
    """What a target's store holds of the corpus's answers: their count, stored bytes (as the store keeps them:
    compressed or not) and raw bytes (the answers as the model sent them), for JSON answers and streams apart.
    Read through the store's own interface (a reader, as ``evalproxy cache copy`` is)."""
    import asyncio

    from evalproxy.storage import StoredAnswer, open_store, run_store
    from evalproxy.storage.codec import dictionaries_of

    async def read() -> dict[str, Any]:
        store = open_store(run_store(where))
        sums = {k: [0, 0, 0] for k in ("json", "stream")}
        try:
            table = dictionaries_of(await store.dictionaries())  # what the answers were compressed with
            async for chunk in store.raw_answers():
                for _, blob in chunk:
                    answer = StoredAnswer.decode(blob, table)
                    raw = b"".join(answer.events) if answer.events is not None else answer.body or b""
                    if b'"bench-corpus"' not in raw[:400]:
                        continue
                    acc = sums["stream" if answer.is_stream else "json"]
                    acc[0] += 1
                    acc[1] += len(blob)
                    acc[2] += len(raw)
        finally:
            await store.aclose()
        n, b, r = (sum(v[i] for v in sums.values()) for i in range(3))
        out: dict[str, Any] = {"answers": n, "stored_bytes_per_answer": b / max(1, n),
                               "raw_bytes_per_answer": r / max(1, n), "ratio": b / r if r else 0.0}
        for k, (kn, kb, kr) in sums.items():
            out[f"ratio_{k}"] = kb / kr if kr else 0.0
            out[f"answers_{k}"] = kn
        return out

    return asyncio.run(read())


def memory_growth(upstream: Proc, z: Sizes) -> dict[str, Any]:
    """evalproxy's RSS idle, after ``mem_small`` and after ``mem_big`` unique requests at concurrency 64."""
    mem: dict[str, Any] = {}
    print(f"memory: {z.mem_big} requests", flush=True)
    with running("evalproxy", upstream.url) as (proc, url):
        assert proc is not None
        time.sleep(1)
        mem["idle_before_growth_mb"] = rss_mb(proc.pid)
        a = loadgen(url, concurrency=64, requests=z.mem_small, seconds=120, unique="mem-a")
        mem["after_small_mb"] = rss_mb(proc.pid)
        b = loadgen(url, concurrency=64, requests=z.mem_big - z.mem_small, seconds=300, unique="mem-b")
        mem["after_big_mb"] = rss_mb(proc.pid)
        mem["requests_small"] = a["ok"]
        mem["requests_big"] = a["ok"] + b["ok"]
        mem["errors"] = {**a["errors"], **b["errors"]}
    mem["growth_pct"] = 100 * (mem["after_big_mb"] - mem["after_small_mb"]) / mem["after_small_mb"]
    print(f"  idle {mem['idle_before_growth_mb']:.1f} MB, after {mem['requests_small']} "
          f"{mem['after_small_mb']:.1f} MB, after {mem['requests_big']} {mem['after_big_mb']:.1f} MB "
          f"(+{mem['growth_pct']:.1f}%)", flush=True)
    return mem


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    import aiohttp

    return {
        "nproc": os.cpu_count(),
        "cpu": next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?"),
        "mem_total_gb": round(int(next(ln for ln in meminfo if ln.startswith("MemTotal")).split()[1]) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "loadavg_at_end": os.getloadavg(),
    }


def summarise(args: argparse.Namespace, z: Sizes, targets: list[str], unavailable: dict[str, str],
              results: dict[str, dict[str, list[dict[str, Any]]]], memory: dict[str, dict[str, Any]],
              seconds: float) -> dict[str, Any]:
    summary = {s: {t: median_of(r) for t, r in by.items()} for s, by in results.items()}
    proxies = [t for t in targets if t != "direct"]
    added: dict[str, Any] = {}
    for t in proxies:
        a: dict[str, Any] = {}
        for q in ("p50", "p99"):
            a[f"c1_{q}_ms"] = paired(results, "latency_c1", t, "direct", lambda x, y, q=q: x[f"{q}_ms"] - y[f"{q}_ms"])
            for m in ("ttft", "ttfc", "gap"):
                a[f"stream_{m}_{q}_ms"] = paired(results, "stream_c256", t, "direct",
                                                 lambda x, y, m=m, q=q: x[f"{m}_{q}_ms"] - y[f"{m}_{q}_ms"])
        added[t] = {k: v for k, v in a.items() if v is not None}
    ratios: dict[str, Any] = {}
    for t in [t for t in proxies if t.startswith("evalproxy")]:
        for peer in [p for p in proxies if p != t and not p.startswith("evalproxy")]:
            for s in ("tput_c64", "tput_c256", "tput_c64_50ms", "cache_hits_c64", "stream_c256_burst"):
                r = paired(results, s, t, peer, lambda x, y: x["rps"] / y["rps"] if y["rps"] else float("inf"))
                if r is not None:
                    ratios[f"{t}/{peer} {s} req/s"] = r
            # Replaying from the cache against the peer passing the same requests through to the model.
            r = paired({"x": {t: results.get("cache_hits_c64", {}).get(t, []),
                              peer: results.get("tput_c64", {}).get(peer, [])}}, "x", t, peer,
                       lambda x, y: x["rps"] / y["rps"] if y["rps"] else float("inf"))
            if r is not None:
                ratios[f"{t}/{peer} hits_vs_pass_through req/s"] = r
    vs_prev: dict[str, Any] = {}  # evalproxy / evalproxy_prev per round: the median and every round
    for s in ("latency_c1", "tput_c64", "tput_c256", "tput_c64_50ms", "cache_hits_c64", "cache_hits_c1",
              "stream_c256", "stream_c256_burst", "corpus_c64", "corpus_stream_c64", "corpus_hits_c64"):
        ra, rb = results.get(s, {}).get("evalproxy"), results.get(s, {}).get("evalproxy_prev")
        if ra and rb:
            for key in ("rps", "cpu_ms_per_req"):
                per_round = [x[key] / y[key] for x, y in zip(ra, rb, strict=False) if y.get(key)]
                if per_round:
                    vs_prev[f"{s} {key}"] = {"median": statistics.median(per_round), "rounds": per_round}
    mem = {t: {k: (statistics.median(v) if isinstance(v, list) else v) for k, v in m.items()}
           for t, m in memory.items()}
    report = {"machine": machine(), "quick": args.quick, "rounds": args.rounds, "sizes": z.__dict__,
              "command": " ".join([Path(PY).name, *sys.argv]), "seconds": seconds, "targets": targets,
              "unavailable": unavailable, "summary": summary, "added_vs_direct": added, "ratios": ratios,
              "vs_prev": vs_prev, "memory": mem}
    report["targets_check"] = check_targets(report)
    return report


def check_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets (default chain, cache miss unless said), measured against this run; None: not measured."""
    s, added, ratios, mem = r["summary"], r["added_vs_direct"], r["ratios"], r["memory"]
    ev = lambda scen, k: s.get(scen, {}).get("evalproxy", {}).get(k)  # noqa: E731
    errs = lambda scen: sum(s.get(scen, {}).get("evalproxy", {}).get("errors", {}).values())  # noqa: E731
    ours, bare = added.get("evalproxy", {}), added.get("bare", {})

    def minus_bare(k: str) -> float | None:
        return None if ours.get(k) is None or bare.get(k) is None else ours[k] - bare[k]

    cpu, cpu_bare = ev("tput_c64", "cpu_ms_per_req"), s.get("tput_c64", {}).get("bare", {}).get("cpu_ms_per_req")
    cpu_ratio = cpu / cpu_bare if cpu and cpu_bare else None
    c64, c256 = ratios.get("evalproxy/bare tput_c64 req/s"), ratios.get("evalproxy/bare tput_c256 req/s")
    hits = ratios.get("evalproxy/bare hits_vs_pass_through req/s")
    m = mem.get("evalproxy", {})
    rows: list[tuple[str, Any, bool | None]] = [
        ("c=64 req/s, ratio to bare >= 0.85", c64, _ge(c64, 0.85)),
        ("c=256 req/s, ratio to bare >= 0.80, 0 errors", f"{_fmt(c256)}, {errs('tput_c256')} errors",
         None if c256 is None else c256 >= 0.8 and errs("tput_c256") == 0),
        ("proxy CPU ms/req at c=64, ratio to bare <= 1.25", cpu_ratio, _le(cpu_ratio, 1.25)),
        ("added latency c=1 p50 minus bare's <= +0.4 ms", minus_bare("c1_p50_ms"), _le(minus_bare("c1_p50_ms"), 0.4)),
        ("added latency c=1 p99 minus bare's <= +1.5 ms", minus_bare("c1_p99_ms"), _le(minus_bare("c1_p99_ms"), 1.5)),
        ("256 streams: first answer text, added p99 minus bare's <= +5 ms", minus_bare("stream_ttfc_p99_ms"),
         _le(minus_bare("stream_ttfc_p99_ms"), 5)),
        ("unpaced streams/s, ratio to bare >= 0.75", ratios.get("evalproxy/bare stream_c256_burst req/s"),
         _ge(ratios.get("evalproxy/bare stream_c256_burst req/s"), 0.75)),
        ("cache-hit replay req/s (c=64), ratio to bare's pass-through >= 2", hits, _ge(hits, 2)),
        ("RSS idle <= 50 MB", m.get("idle_mb"), _le(m.get("idle_mb"), 50)),
        ("RSS growth 10k -> 100k requests <= 5 %", m.get("growth_pct"), _le(m.get("growth_pct"), 5)),
        ("no error, no lost event (every scenario)", f"{sum(errs(x) for x in s)} errors, fewest events "
         f"{ev('stream_c256', 'events_min')} / {ev('stream_c256_burst', 'events_min')} of {STREAM_EVENTS}",
         sum(errs(x) for x in s) == 0 and ev("stream_c256", "events_min") == STREAM_EVENTS
         and ev("stream_c256_burst", "events_min") == STREAM_EVENTS),
    ]
    return [{"target": name, "measured": value, "met": met} for name, value, met in rows]


ISSUE23_SCENARIOS = ("tput_c64", "tput_c256", "cache_hits_c64", "corpus_c64", "corpus_stream_c64", "corpus_hits_c64")


def compression_cpu_ms() -> dict[str, float]:
    """CPU ms to encode (compress) one corpus answer as the store does, JSON answers and streams apart (this process,
    best of three passes); ``json_share``: the JSON answers' share of the corpus (what weighs the two kinds into the
    corpus's mix)."""
    from corpus import load

    from evalproxy.storage import StoredAnswer

    out: dict[str, float] = {}
    entries = load()
    for kind in ("json", "stream"):
        answers = [StoredAnswer(200, {"content-type": "application/json"}, body=e["body"].encode())
                   if kind == "json" else StoredAnswer(200, {}, events=[x.encode() for x in e["events"]])
                   for e in entries if e["kind"] == kind]
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for a in answers:
                a.encode()
            best = min(best, (time.process_time() - t0) / len(answers))
        out[kind] = best * 1000
    out["json_share"] = sum(e["kind"] == "json" for e in entries) / max(1, len(entries))
    return out


def issue23(r: dict[str, Any], results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Issue 23's figures: Redis against disk (one proxy, and the fleet) per scenario, paired within rounds;
    redis-server's own CPU per request; bytes per stored corpus answer; compression's CPU against a miss's; hit
    replay against bare's pass-through."""
    def ratio(scen: str, a: str, b: str, key: str = "rps") -> float | None:
        return paired(results, scen, a, b, lambda x, y: x[key] / y[key] if y.get(key) else float("inf"))

    out: dict[str, Any] = {"redis_vs_disk": {}, "fleet_redis_vs_disk": {}, "redis_cpu_ms_per_req": {}}
    for scen in ISSUE23_SCENARIOS:
        for name, a, b in (("redis_vs_disk", "evalproxy_redis", "evalproxy"),
                           ("fleet_redis_vs_disk", "evalproxy_fleet_redis", "evalproxy_fleet_disk")):
            rps, cpu = ratio(scen, a, b), ratio(scen, a, b, "cpu_ms_per_req")
            if rps is not None:
                out[name][scen] = {"rps": rps, "proxy_cpu": cpu}
        for t in ("evalproxy_redis", "evalproxy_fleet_redis"):
            v = r["summary"].get(scen, {}).get(t, {}).get("redis_cpu_ms_per_req")
            if v is not None:
                out["redis_cpu_ms_per_req"][f"{t} {scen}"] = v
    out["c1_hit_p50_redis_minus_disk_ms"] = paired(results, "cache_hits_c1", "evalproxy_redis", "evalproxy",
                                                   lambda x, y: x["p50_ms"] - y["p50_ms"])
    out["hits_vs_bare_pass_through"] = paired(
        {"x": {"evalproxy": results.get("cache_hits_c64", {}).get("evalproxy", []),
               "bare": results.get("tput_c64", {}).get("bare", [])}}, "x", "evalproxy", "bare",
        lambda x, y: x["rps"] / y["rps"])
    out["corpus_hits_vs_bare_pass_through"] = paired(
        {"x": {"evalproxy": results.get("corpus_hits_c64", {}).get("evalproxy", []),
               "bare": results.get("corpus_c64", {}).get("bare", [])}}, "x", "evalproxy", "bare",
        lambda x, y: x["rps"] / y["rps"])
    comp = compression_cpu_ms()
    out["compress_ms_per_answer"] = comp
    s = r["summary"]
    for kind, scen in (("json", "corpus_c64"), ("stream", "corpus_stream_c64")):
        miss = s.get(scen, {}).get("evalproxy", {}).get("cpu_ms_per_req")
        out[f"compress_share_of_miss_{kind}"] = comp[kind] / miss if miss else None
    # The corpus as users store it, both kinds in its proportions: all compression's CPU over all misses' CPU.
    misses = [s.get(scen, {}).get("evalproxy", {}).get("cpu_ms_per_req")
              for scen in ("corpus_c64", "corpus_stream_c64")]
    if all(misses):
        w = comp["json_share"]
        out["compress_share_of_miss_mix"] = ((w * comp["json"] + (1 - w) * comp["stream"])
                                             / (w * misses[0] + (1 - w) * misses[1]))
    else:
        out["compress_share_of_miss_mix"] = None
    return out


def _le(v: float | None, limit: float) -> bool | None:
    return None if v is None else v <= limit


def _ge(v: float | None, limit: float) -> bool | None:
    return None if v is None else v >= limit


# -- output ------------------------------------------------------------------------------------------------------------
ROWS: list[tuple[str, str, str]] = [
    # (scenario, key, label)
    ("latency_c1", "p50_ms", "c=1 latency p50 ms"),
    ("latency_c1", "p99_ms", "c=1 latency p99 ms"),
    ("latency_c1", "cpu_ms_per_req", "c=1 proxy CPU ms/req"),
    ("tput_c64", "rps", "c=64 req/s"),
    ("tput_c64", "p99_ms", "c=64 p99 ms"),
    ("tput_c64", "cpu_ms_per_req", "c=64 proxy CPU ms/req"),
    ("tput_c256", "rps", "c=256 req/s"),
    ("tput_c256", "p99_ms", "c=256 p99 ms"),
    ("tput_c256", "cpu_ms_per_req", "c=256 proxy CPU ms/req"),
    ("tput_c64_50ms", "rps", "c=64, upstream 50 ms: req/s"),
    ("tput_c64_50ms", "p50_ms", "c=64, upstream 50 ms: p50 ms"),
    ("tput_c64_50ms", "p99_ms", "c=64, upstream 50 ms: p99 ms"),
    ("tput_c64_50ms", "cpu_ms_per_req", "c=64, upstream 50 ms: proxy CPU ms/req"),
    ("cache_hits_c64", "rps", "cache hits c=64 req/s"),
    ("cache_hits_c64", "p99_ms", "cache hits c=64 p99 ms"),
    ("cache_hits_c64", "cpu_ms_per_req", "cache hits c=64 proxy CPU ms/req"),
    ("cache_hits_c1", "p50_ms", "cache hits c=1 p50 ms"),
    ("cache_hits_c1", "p99_ms", "cache hits c=1 p99 ms"),
    ("stream_c256", "ttft_p50_ms", "256 streams (50 ms/event): first event p50 ms"),
    ("stream_c256", "ttft_p99_ms", "256 streams (50 ms/event): first event p99 ms"),
    ("stream_c256", "ttfc_p50_ms", "256 streams (50 ms/event): first answer text p50 ms"),
    ("stream_c256", "ttfc_p99_ms", "256 streams (50 ms/event): first answer text p99 ms"),
    ("stream_c256", "gap_p50_ms", "256 streams (50 ms/event): gap p50 ms"),
    ("stream_c256", "gap_p99_ms", "256 streams (50 ms/event): gap p99 ms"),
    ("stream_c256", "events_min", "256 streams (50 ms/event): fewest events in a stream"),
    ("stream_c256", "cpu_ms_per_req", "256 streams (50 ms/event): proxy CPU ms/stream"),
    ("stream_c256_cold", "ttfc_p50_ms", "256 streams of a model not seen before: first answer text p50 ms"),
    ("stream_c256_cold", "ttfc_p99_ms", "256 streams of a model not seen before: first answer text p99 ms"),
    ("stream_c256_burst", "rps", "256 streams, no pacing: streams/s"),
    ("stream_c256_burst", "events_min", "256 streams, no pacing: fewest events"),
    ("stream_c256_burst", "cpu_ms_per_req", "256 streams, no pacing: proxy CPU ms/stream"),
    ("corpus_c64", "rps", "corpus (JSON, 1-30 KB) misses c=64 req/s"),
    ("corpus_c64", "cpu_ms_per_req", "corpus misses c=64 proxy CPU ms/req"),
    ("corpus_stream_c64", "rps", "corpus streams misses c=64 req/s"),
    ("corpus_stream_c64", "cpu_ms_per_req", "corpus streams misses c=64 proxy CPU ms/req"),
    ("corpus_hits_c64", "rps", "corpus hits c=64 req/s"),
    ("corpus_hits_c64", "cpu_ms_per_req", "corpus hits c=64 proxy CPU ms/req"),
]


def issue23_markdown(r: dict[str, Any]) -> list[str]:
    i = r.get("issue23")
    if not i:
        return []
    lines = ["", "| Redis / disk (paired within rounds) | req/s | proxy CPU ms/req |", "|---|---:|---:|"]
    for name in ("redis_vs_disk", "fleet_redis_vs_disk"):
        for scen, v in i[name].items():
            lines.append(f"| {name.replace('_', ' ')}: {scen} | {_fmt(v['rps'])} | {_fmt(v['proxy_cpu'])} |")
    lines += ["", "| redis-server's own CPU ms per request | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in i["redis_cpu_ms_per_req"].items()]
    lines += ["", "| stored corpus answers | answers | stored B/answer | raw B/answer | stored/raw | JSON | streams |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for t, v in r.get("stored", {}).items():
        lines.append(f"| {t} | {v['answers']:.0f} | {v['stored_bytes_per_answer']:.0f} | "
                     f"{v['raw_bytes_per_answer']:.0f} | {v['ratio']:.3f} | {v['ratio_json']:.3f} | "
                     f"{v['ratio_stream']:.3f} |")
    comp = i["compress_ms_per_answer"]
    lines += ["", f"Compression CPU per corpus answer: JSON {comp['json'] * 1000:.0f} us "
                  f"({_fmt(i['compress_share_of_miss_json'])} of a corpus miss's proxy CPU), streams "
                  f"{comp['stream'] * 1000:.0f} us ({_fmt(i['compress_share_of_miss_stream'])}); the corpus's mix "
                  f"({comp['json_share']:.0%} JSON answers) {_fmt(i.get('compress_share_of_miss_mix'))}.",
              f"c=1 hit p50, Redis minus disk: {_fmt(i['c1_hit_p50_redis_minus_disk_ms'])} ms. Hit replay / bare "
              f"pass-through at c=64: {_fmt(i['hits_vs_bare_pass_through'])} (bench answers), "
              f"{_fmt(i['corpus_hits_vs_bare_pass_through'])} (corpus answers)."]
    rd = i["redis_vs_disk"]
    st = r.get("stored", {})

    def at(scen: str) -> float | None:
        return rd.get(scen, {}).get("rps")

    rows: list[tuple[str, Any, bool | None]] = [
        ("Redis misses >= 0.9 of disk req/s, c=64", at("tput_c64"), _ge(at("tput_c64"), 0.9)),
        ("Redis misses >= 0.9 of disk req/s, c=256", at("tput_c256"), _ge(at("tput_c256"), 0.9)),
        ("Redis hits >= 0.9 of disk hits, c=64", at("cache_hits_c64"), _ge(at("cache_hits_c64"), 0.9)),
        ("c=1 hit p50 Redis <= disk + 0.2 ms", i["c1_hit_p50_redis_minus_disk_ms"],
         _le(i["c1_hit_p50_redis_minus_disk_ms"], 0.2)),
    ]
    for t in ("evalproxy", "evalproxy_redis"):
        ratio = st.get(t, {}).get("ratio")
        rows.append((f"bytes per stored corpus answer <= 0.35 of raw ({t})", ratio, _le(ratio, 0.35)))
    for kind in ("mix", "json", "stream"):
        share = i.get(f"compress_share_of_miss_{kind}")
        rows.append((f"compression CPU <= 5 % of a miss ({'the corpus' if kind == 'mix' else kind})", share,
                     _le(share, 0.05)))
    rows.append(("hit replay >= 2x bare's pass-through req/s, c=64", i["hits_vs_bare_pass_through"],
                 _ge(i["hits_vs_bare_pass_through"], 2)))
    verdict = {True: "met", False: "not met", None: "not measured"}
    lines += ["", "| issue 23 target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(v)} | {verdict[met]} |" for name, v, met in rows]
    return lines


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def markdown(r: dict[str, Any]) -> str:
    targets, s = r["targets"], r["summary"]
    lines = [f"| scenario | {' | '.join(targets)} |", "|---|" + "---:|" * len(targets)]
    for scen, key, label in ROWS:
        by = s.get(scen, {})
        if not by:
            continue
        cells = []
        for t in targets:
            v = by.get(t, {}).get(key)
            if key == "cpu_ms_per_req" and t == "direct":
                v = None
            cells.append(_fmt(v))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    errors = {t: sum(sum(by.get(t, {}).get("errors", {}).values()) for by in s.values()) for t in targets}
    lines.append(f"| errors, all scenarios and rounds | {' | '.join(str(errors[t]) for t in targets)} |")
    mem = r["memory"]
    lines.append(f"| RSS idle MB | {' | '.join(_fmt(mem.get(t, {}).get('idle_mb')) for t in targets)} |")
    lines.append(f"| RSS after a round MB | "
                 f"{' | '.join(_fmt(mem.get(t, {}).get('end_of_round_mb')) for t in targets)} |")
    lines += ["", "| added vs direct (paired within rounds, ms) | " + " | ".join(r["added_vs_direct"]) + " |",
              "|---|" + "---:|" * len(r["added_vs_direct"])]
    keys = sorted({k for v in r["added_vs_direct"].values() for k in v})
    for k in keys:
        lines.append(f"| {k} | {' | '.join(_fmt(v.get(k)) for v in r['added_vs_direct'].values())} |")
    lines += ["", "| ratio (paired within rounds) | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["ratios"].items()]
    if r.get("vs_prev"):
        lines += ["", "| evalproxy / evalproxy_prev (paired within rounds) | median | min | max |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {k} | {v['median']:.3f} | {min(v['rounds']):.3f} | {max(v['rounds']):.3f} |"
                  for k, v in r["vs_prev"].items()]
    lines += issue23_markdown(r)
    m = mem.get("evalproxy", {})
    if "growth_pct" in m:
        lines += ["", f"Memory (evalproxy, default chain, c=64): idle {m['idle_before_growth_mb']:.1f} MB, after "
                      f"{m['requests_small']} requests {m['after_small_mb']:.1f} MB, after {m['requests_big']} "
                      f"{m['after_big_mb']:.1f} MB: growth {m['growth_pct']:.1f} %."]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    verdict = {True: "met", False: "not met", None: "not measured"}
    lines += [f"| {c['target']} | {_fmt(c['measured'])} | {verdict[c['met']]} |" for c in r["targets_check"]]
    if r["unavailable"]:
        lines += [""] + [f"- {k} not run: {v}" for k, v in r["unavailable"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
