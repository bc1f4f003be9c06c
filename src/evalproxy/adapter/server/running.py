"""The proxy served on a real socket: what ``evalproxy serve``, ``evalproxy run``, the demo and services start.

:class:`Workers` is ``evalproxy serve --workers N``: N worker processes of one run on one port (SO_REUSEPORT), the
post-eval hooks run once by the parent after all of them stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from evalproxy.adapter.config.schema import LoadedConfig
from evalproxy.adapter.core.files import atomic_write_bytes, dump_json
from evalproxy.adapter.registry.registry import Resolved
from evalproxy.adapter.server import lifecycle
from evalproxy.adapter.server.app import PROXY, create_app
from evalproxy.adapter.server.lifecycle import new_run_id, open_run
from evalproxy.adapter.server.output import STATISTICS_FILE, merge_statistics, read_json_file
from evalproxy.adapter.server.proxy import Proxy

log = logging.getLogger("evalproxy")

WORKER_ENV = "EVALPROXY_WORKER"
"""Set by :class:`Workers` in each worker's environment: the worker's index."""
WORKER_HEADER = "X-EvalProxy-Worker"


class RunningProxy:
    """The proxy served on a real socket; :meth:`stop` finishes in-flight requests, runs hooks and closes.

    Usable as ``async with RunningProxy(loaded) as running: ...running.url...``.
    """

    def __init__(self, loaded: LoadedConfig, *, resolved: Resolved | None = None, run_id: str | None = None,
                 worker: int | None = None) -> None:
        self.loaded = loaded
        self.worker = worker
        """The worker's index under ``serve --workers``: it shares its port with its siblings (SO_REUSEPORT) and
        says who answered in a response header."""
        self.app = create_app(loaded, resolved=resolved, run_id=run_id)
        self.proxy: Proxy = self.app[PROXY]
        if worker is not None:
            tag = str(worker)

            async def say_worker(request: web.BaseRequest, response: web.StreamResponse) -> None:
                response.headers[WORKER_HEADER] = tag

            self.app.on_response_prepare.append(say_worker)
        # Handlers are never cancelled when a client leaves: an answer being paid for runs to its end and is stored.
        # keepalive_timeout also bounds a connection that never completes its request's headers (aiohttp closes a
        # connection idle past it from the moment it opens), so a client trickling headers is let go.
        self.runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=loaded.server.shutdown_timeout,
            handler_cancellation=False, keepalive_timeout=loaded.server.client_header_timeout,
        )
        self.url = ""

    async def start(self) -> str:
        try:
            await self.runner.setup()
            s = self.loaded.server
            site = web.TCPSite(self.runner, s.host, s.port, backlog=4096, reuse_address=True,
                               reuse_port=self.worker is not None or None)
            await site.start()
        except BaseException:
            await self.runner.cleanup()  # closes exactly what opened, in reverse order
            raise
        port = self.loaded.server.port
        for addr in self.runner.addresses:
            if isinstance(addr, tuple):
                port = addr[1]
                break
        host = self.loaded.server.host
        host = host if ":" not in host else f"[{host}]"
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def harness_env(url: str) -> dict[str, str]:
    """The environment a harness runs in: the OpenAI SDKs' base URL pointed at the proxy."""
    base = f"{url}/v1"
    env = dict(os.environ)
    env["OPENAI_BASE_URL"] = base
    env["OPENAI_API_BASE"] = base
    env["EVALPROXY_URL"] = url
    # The proxy adds the real key upstream; SDKs insist on having one.
    env.setdefault("OPENAI_API_KEY", "evalproxy")
    return env


async def run_command(running: RunningProxy, command: list[str]) -> int:
    """Run ``command`` against a started proxy (``{proxy_url}`` in its arguments becomes ``<url>/v1``); SIGINT and
    SIGTERM are passed on to it. Returns its exit status as a shell reports it (128 + signal when killed)."""
    base = f"{running.url}/v1"
    argv = [a.replace("{proxy_url}", base) for a in command]
    print(f"evalproxy listening on {running.url}; running: {' '.join(argv)}", file=sys.stderr, flush=True)
    try:
        proc = await asyncio.create_subprocess_exec(*argv, env=harness_env(running.url))
    except OSError as exc:
        print(f"evalproxy: cannot start {argv[0]!r}: {exc}", file=sys.stderr)
        return 127
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _forward, proc, sig)
    try:
        status = await proc.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 128 - status if status < 0 else status


def _forward(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)


def worker_count(value: str) -> int:
    """``--workers``: a positive number, or ``auto`` for one per core this process may use."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = int(value)
    if n < 1:
        raise ValueError("--workers must be at least 1 (or auto)")
    return n


class Workers:
    """``evalproxy serve --workers N``: N processes of one run on one port, one event loop each.

    The parent picks the run id and the port (a socket bound with SO_REUSEPORT, never listening, holds it), and
    starts each worker as ``evalproxy serve`` on a config of its own: the same chain, its own output dir
    (``<output_dir>/workers/<i>``: statistics and logs), the shared cache (the caching interceptor's ``cache_dir``
    pinned to the run's, or its ``cache_url``), no post-eval hooks. The kernel spreads connections over the
    workers; pass@k slots are claimed in the shared store, so they stay consistent. Every worker writes its
    Prometheus values to one temporary directory (prometheus_client's multiprocess mode), so ``/metrics`` on the port
    shows their sum. :meth:`stop` sends SIGTERM to every worker and waits for them; then the parent merges their
    statistics into the run's ``eval_factory_metrics.json`` and runs the post-eval hooks once.
    """

    def __init__(self, loaded: LoadedConfig, resolved: Resolved, n: int, *, run_id: str | None = None,
                 log_level: str = "INFO") -> None:
        self.loaded, self.resolved, self.n = loaded, resolved, n
        self.run_id = run_id or new_run_id()
        self.log_level = log_level
        self.output_dir = (Path.cwd() / loaded.server.output_dir).resolve()
        self.procs: list[asyncio.subprocess.Process] = []
        self.url = ""
        self._reserved: socket.socket | None = None
        self._metrics_dir = ""
        self._tmp: Path | None = None
        self._drains: list[asyncio.Task[None]] = []

    def worker_config(self, i: int, port: int) -> dict[str, Any]:
        adapter = self.loaded.adapter
        cache_dir = str(adapter.cache_dir(self.output_dir))
        interceptors = []
        for ic in adapter.interceptors:
            cfg = dict(ic.config)
            if ic.name == "caching" and not cfg.get("cache_dir") and not cfg.get("cache_url"):
                cfg["cache_dir"] = cache_dir  # the run's cache, not one per worker output dir
            interceptors.append({**ic.model_dump(mode="json"), "config": cfg})
        doc = adapter.model_dump(mode="json")
        doc.update(interceptors=interceptors, post_eval_hooks=[], generate_html_report=False)
        server = self.loaded.server.model_dump(mode="json", exclude_unset=True)
        server.update(port=port, output_dir=str(self.output_dir / "workers" / str(i)), status_line="off")
        doc["server"] = server
        return doc

    async def start(self) -> str:
        s = self.loaded.server
        self._reserved = sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.port))
        port = int(sock.getsockname()[1])
        # Private (0700) and removed at the end: the workers' configs carry the upstream URL as given, credentials
        # and all; the metrics files are per process.
        self._tmp = Path(tempfile.mkdtemp(prefix="evalproxy-workers-"))
        self._metrics_dir = str(self._tmp / "metrics")
        await asyncio.to_thread(os.mkdir, self._metrics_dir)
        try:
            for i in range(self.n):
                cfg = self._tmp / f"worker-{i}.yaml"
                await asyncio.to_thread(cfg.write_text, yaml.safe_dump(self.worker_config(i, port), sort_keys=False))
                env = {**os.environ, WORKER_ENV: str(i), "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir,
                       "EVALPROXY_LOG_LEVEL": self.log_level}
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "evalproxy", "serve", "-c", str(cfg), "--run-id", self.run_id, env=env,
                    stdout=asyncio.subprocess.PIPE, start_new_session=False)
                self.procs.append(proc)
            for i, proc in enumerate(self.procs):
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 60)
                if b"listening on" not in line:
                    raise RuntimeError(f"worker {i} did not start (exit status {await proc.wait()}); see its log above")
                self._drains.append(asyncio.create_task(_drain(proc.stdout)))
        except BaseException:
            await self.stop(run_hooks=False)
            raise
        host = s.host if ":" not in s.host else f"[{s.host}]"
        self.url = f"http://{host}:{port}"
        return self.url

    async def wait_any(self) -> int:
        """Until a worker exits by itself (a crash): its exit status."""
        done, _ = await asyncio.wait([asyncio.create_task(p.wait()) for p in self.procs],
                                     return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()

    async def stop(self, *, run_hooks: bool = True) -> int:
        """SIGTERM to every worker, wait for all (SIGKILL after the shutdown timeout), then the hooks once.
        Returns 0 when every worker stopped cleanly."""
        for p in self.procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        grace = self.loaded.server.shutdown_timeout + 30
        status = 0
        for i, p in enumerate(self.procs):
            try:
                code = await asyncio.wait_for(p.wait(), grace)
            except TimeoutError:
                log.error("worker %d did not stop within %g s: killed", i, grace)
                p.kill()
                code = await p.wait()
            if code not in (0, -signal.SIGTERM):
                status = 1
                log.error("worker %d exited with status %d", i, code)
            if self._metrics_dir:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(p.pid, self._metrics_dir)  # type: ignore[no-untyped-call]  # untyped upstream
        for t in self._drains:
            t.cancel()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        if run_hooks and self.procs:
            await asyncio.to_thread(merge_worker_statistics, self.output_dir, self.n, self.resolved.interceptors)
            for r in await lifecycle.run_hooks(self.resolved.hooks, open_run(self.loaded, self.run_id)):
                if not r["ok"]:
                    status = 1
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp, self._metrics_dir = None, ""
        return status


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def merge_worker_statistics(output_dir: Path, n: int, interceptors: list[tuple[type[Any], Any]]) -> None:
    """The run's ``eval_factory_metrics.json`` from its workers' files (see :func:`merge_statistics`); each worker's
    own sections under ``workers``."""
    dirs = [output_dir / "workers" / str(i) for i in range(n)]
    files = {str(i): read_json_file(d / STATISTICS_FILE) for i, d in enumerate(dirs)}
    merged = merge_statistics(dirs, interceptors)
    if not merged:
        return
    data = read_json_file(output_dir / STATISTICS_FILE)
    data.update(merged)
    data["workers"] = files
    atomic_write_bytes(output_dir / STATISTICS_FILE, dump_json(data))
