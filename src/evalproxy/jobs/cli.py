"""``evalproxy jobs serve``: the command line of the jobs service (wired into ``evalproxy`` by the main cli)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from evalproxy.adapter.core.net import is_loopback
from evalproxy.jobs.settings import DEFAULT_PORT, Settings

log = logging.getLogger("evalproxy.jobs")

EXIT_USAGE = 2
DEFAULT_TOKEN_ENV = "EVALPROXY_JOBS_TOKEN"


def add_jobs_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``jobs`` (with its ``serve`` action) to the ``evalproxy`` sub-commands; returns the ``jobs`` parser."""
    jobs: argparse.ArgumentParser = subparsers.add_parser(
        "jobs", help="the evaluation jobs service (REST): targets, configs and jobs")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    p = actions.add_parser("serve", help="serve /v1/evaluation/{targets,configs,jobs} until SIGINT/SIGTERM")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; beyond it needs a token)")
    p.add_argument("--port", "-p", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: free)")
    p.add_argument("--data-dir", default="evalproxy_jobs", help="records, job directories and caches go here")
    p.add_argument("--max-concurrent", type=int, default=2, help="jobs running at once; the rest wait (pending)")
    p.add_argument("--token-env", default=DEFAULT_TOKEN_ENV,
                   help=f"env var holding the bearer token every call must carry (default {DEFAULT_TOKEN_ENV}; "
                        "required when binding beyond loopback)")
    p.add_argument("--grace-period", type=float, default=30.0,
                   help="seconds a cancelled job gets between SIGTERM and SIGKILL (default 30)")
    p.add_argument("--log-level", default=os.environ.get("EVALPROXY_LOG_LEVEL", "INFO"))
    return jobs


def run_jobs_command(args: argparse.Namespace) -> int:
    """Run the ``jobs`` action parsed by :func:`add_jobs_parser`; the process exit status."""
    if args.jobs_command != "serve":
        print(f"evalproxy jobs: unknown action {args.jobs_command!r}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.max_concurrent < 1:
        print("evalproxy jobs: --max-concurrent must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    token = os.environ.get(args.token_env) or None
    if token is None and not is_loopback(args.host):
        print(f"evalproxy jobs: refusing to bind {args.host} without a token: anyone who reaches it could run "
              f"commands here. Set {args.token_env} (or name another variable with --token-env).", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings(data_dir=Path(args.data_dir).resolve(), max_concurrent=args.max_concurrent, token=token,
                        grace_period=args.grace_period)
    try:
        return asyncio.run(_serve(settings, args.host, args.port))
    except OSError as exc:
        print(f"evalproxy jobs: {exc}", file=sys.stderr)
        return 1


async def _serve(settings: Settings, host: str, port: int) -> int:
    from evalproxy.jobs.app import create_app  # here, not at the top: ``evalproxy serve`` never loads the service

    runner = web.AppRunner(create_app(settings), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = port
        for addr in runner.addresses:
            if isinstance(addr, tuple):
                bound = addr[1]
                break
        shown = f"[{host}]" if ":" in host else host
        print(f"evalproxy jobs listening on http://{shown}:{bound} (data: {settings.data_dir})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: running jobs are stopped and marked failed; queued jobs wait for the next start")
    finally:
        await runner.cleanup()
    return 0
