"""``evalproxy serve``, ``evalproxy run`` and ``evalproxy demo``: the commands that start a proxy."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from evalproxy.adapter.config import LoadedConfig
from evalproxy.adapter.registry import Resolved
from evalproxy.adapter.server.loop import run as run_loop
from evalproxy.adapter.server.running import WORKER_ENV, RunningProxy, Workers, worker_count
from evalproxy.cli.common import (
    EXIT_CONFIG,
    add_server_args,
    effective_yaml,
    logged,
    start_proxy_command,
    wait_for_signal,
    warn_bind,
)
from evalproxy.records.run import run_evaluation

log = logging.getLogger("evalproxy")


def add_parsers(sub: Any) -> None:
    """``serve`` and ``run`` (``demo`` is added by :func:`add_demo_parser`, after the record commands)."""
    p = sub.add_parser("serve", help="run the proxy until SIGINT/SIGTERM, then the post-eval hooks")
    add_server_args(p)
    p.add_argument("--workers", default="1", help="processes serving one run on one port (auto: one per core)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="run a harness command through the proxy: evalproxy run -c FILE -- CMD ...")
    add_server_args(p, default_port=0)
    p.add_argument("--results", help="the harness's results file or directory, when evalproxy cannot find it")
    p.add_argument("--progress", choices=["auto", "line", "bar", "off"], default=None,
                   help="the status line: plain periodic lines (line; auto, as the harness shares the terminal), a "
                   "bar redrawn in place (bar: only when the harness prints nothing), or none (off); with total, "
                   "percent and ETA when --limit or a launcher's limit_samples says how many")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    p.set_defaults(func=cmd_run)


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="a self-contained run against a simulated model")
    p.add_argument("--output-dir", "-o", default=None, help="where the demo writes (default: a new temp dir)")
    p.add_argument("--requests", type=int, default=24)
    p.set_defaults(func=logged(cmd_demo))


def cmd_serve(args: argparse.Namespace) -> int:
    loaded, resolved = start_proxy_command(args)
    if args.print_config:
        sys.stdout.write(effective_yaml(loaded, resolved))
        return 0
    worker = os.environ.get(WORKER_ENV)
    execution = loaded.sections.get("execution")
    exports = "export" in loaded.sections or (isinstance(execution, dict) and "auto_export" in execution)
    if worker is None and exports:
        log.warning("the config's exports run when an evaluation ends: `evalproxy run` does them, `serve` does not "
                    "(export a served run with `evalproxy export RUN_DIR --dest ...`)")
    if worker is not None:  # one of serve --workers' processes
        return run_loop(_serve(loaded, resolved, args.run_id, int(worker)), args.loop)
    try:
        n = worker_count(args.workers)
    except ValueError:
        print(f"evalproxy: --workers must be a number of at least 1 or auto, not {args.workers!r}", file=sys.stderr)
        return EXIT_CONFIG
    if n > 1:
        return run_loop(_serve_workers(loaded, resolved, n, args.run_id, args.log_level), args.loop)
    return run_loop(_serve(loaded, resolved, args.run_id), args.loop)


def cmd_run(args: argparse.Namespace) -> int:
    """``run -- CMD``: the run itself is :func:`evalproxy.records.run.run_evaluation` (the jobs service's jobs run
    this command)."""
    loaded, resolved = start_proxy_command(args)
    if args.print_config:
        sys.stdout.write(effective_yaml(loaded, resolved))
        return 0
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("evalproxy run: give the command after --", file=sys.stderr)
        return EXIT_CONFIG
    host = loaded.server.host
    return run_loop(run_evaluation(loaded, resolved, cmd, run_id=args.run_id, results=args.results,
                                   on_started=lambda: warn_bind(host), progress=args.progress), args.loop)


def cmd_demo(args: argparse.Namespace) -> int:
    from evalproxy.demo import run_demo  # the simulator and its templates, only for the demo

    return run_demo(args)


async def _serve(loaded: LoadedConfig, resolved: Resolved, run_id: str | None, worker: int | None = None) -> int:
    running = RunningProxy(loaded, resolved=resolved, run_id=run_id, worker=worker)
    url = await running.start()
    warn_bind(loaded.server.host)
    print(f"evalproxy listening on {url}", flush=True)
    print(f"  point your harness at {url}/v1  (output: {running.proxy.run.output_dir})", flush=True)
    await wait_for_signal()
    log.info("stopping: finishing in-flight requests, then post-eval hooks")
    await running.stop()
    print("evalproxy stopped", flush=True)
    return 0


async def _serve_workers(loaded: LoadedConfig, resolved: Resolved, n: int, run_id: str | None,
                         log_level: str) -> int:
    """``serve --workers N``: N processes of one run on one port; SIGTERM/SIGINT stops them all, then the hooks."""
    workers = Workers(loaded, resolved, n, run_id=run_id, log_level=log_level)
    url = await workers.start()
    warn_bind(loaded.server.host)
    print(f"evalproxy listening on {url}", flush=True)
    print(f"  point your harness at {url}/v1  ({n} workers, run {workers.run_id}, output: {workers.output_dir})",
          flush=True)
    signalled = asyncio.ensure_future(wait_for_signal())
    crashed = asyncio.ensure_future(workers.wait_any())
    await asyncio.wait([signalled, crashed], return_when=asyncio.FIRST_COMPLETED)
    crash = crashed.done()
    if crash:
        log.error("a worker exited (status %s): stopping the others", crashed.result())
    else:
        log.info("stopping %d workers: finishing in-flight requests, then post-eval hooks", n)
    signalled.cancel()
    crashed.cancel()
    status = await workers.stop()
    print("evalproxy stopped", flush=True)
    return 1 if crash else status
