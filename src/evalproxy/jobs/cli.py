"""``evalproxy jobs serve``: the command line of the jobs service (wired into ``evalproxy`` by the main cli)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from evalproxy.adapter.core.errors import JobLaunchError
from evalproxy.adapter.core.net import is_loopback, is_store_url
from evalproxy.jobs.settings import DEFAULT_PORT, EXECUTORS, Settings

log = logging.getLogger("evalproxy.jobs")

EXIT_USAGE = 2
DEFAULT_TOKEN_ENV = "EVALPROXY_JOBS_TOKEN"
TOKEN_FILE = "token"
SLURM_POLL = 2.0
"""Seconds between two looks at a Slurm job's state (``scontrol show job``)."""


def add_jobs_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``jobs`` (with its ``serve`` action) to the ``evalproxy`` sub-commands; returns the ``jobs`` parser."""
    jobs: argparse.ArgumentParser = subparsers.add_parser(
        "jobs", help="the evaluation jobs service (REST): targets, configs and jobs")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    p = actions.add_parser("serve", help="serve /v1/evaluation/{targets,configs,jobs} until SIGINT/SIGTERM")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", "-p", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: free)")
    p.add_argument("--data-dir", default="evalproxy_jobs", help="records, job directories and caches go here")
    p.add_argument("--max-concurrent", type=int, default=2, help="jobs running at once; the rest wait (pending)")
    p.add_argument("--token-env", default=DEFAULT_TOKEN_ENV,
                   help=f"env var holding the bearer token every call must carry (default {DEFAULT_TOKEN_ENV}); "
                        f"when it is not set, the token is read from DATA_DIR/{TOKEN_FILE}, or generated there "
                        "(mode 0600) and printed")
    p.add_argument("--no-token", action="store_true",
                   help="serve without a token (loopback only): every local process and user can then run commands")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another Host name this service answers to (repeatable; '.example.org' allows its "
                        "subdomains); other names get 421")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web page origin (https://app.example.org) that may call the service, with CORS "
                        "(repeatable); pages of other origins get 403")
    p.add_argument("--grace-period", type=float, default=30.0,
                   help="seconds a cancelled job gets between SIGTERM and SIGKILL (default 30)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where jobs run: local (a subprocess each, on this machine; the default) or slurm (a batch "
                        "job each, submitted with sbatch; see docs/cluster.md)")
    p.add_argument("--public-url", metavar="URL",
                   help="slurm: the service's URL as the nodes reach it (http://login1:3826), where each job fetches "
                        "its key with its ticket (default: the address bound); its host is then allowed too")
    p.add_argument("--partition", help="slurm: the partition jobs are submitted to (sbatch --partition)")
    p.add_argument("--account", help="slurm: the account jobs are charged to (sbatch --account)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="slurm: one more sbatch option for every job, e.g. --sbatch-arg=--time=02:00:00 (repeatable)")
    p.add_argument("--cache-url", metavar="URL",
                   help="the store every job's answers go to: redis://HOST:6379/0, rediss:// or unix:// (one "
                        "prefix per config inside it), unless a job's adapter config names its own store; with "
                        "--executor slurm, the one cache all nodes share")
    p.add_argument("--poll-interval", type=float, metavar="SECONDS",
                   help=f"how often a job's progress (and on Slurm its state) is read (default 0.5; {SLURM_POLL:g} "
                        "with --executor slurm)")
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
    data_dir = Path(args.data_dir).resolve()
    problem = _executor_problem(args, data_dir)
    if problem:
        print(f"evalproxy jobs: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.no_token:
        if not is_loopback(args.host):
            print(f"evalproxy jobs: refusing --no-token on {args.host}: anyone who reaches it could run commands "
                  "here. Drop --no-token (a token is then generated) or bind 127.0.0.1.", file=sys.stderr)
            return EXIT_USAGE
        print("evalproxy jobs: --no-token: every process and every user of this machine can now create jobs, which "
              "run commands as you, and read every job's logs and files; web pages are still refused by the Host "
              "and Origin checks.", file=sys.stderr)
        token, shown = None, "no token (--no-token)"
    else:
        try:
            token, shown = _token(args.token_env, data_dir)
        except OSError as exc:
            print(f"evalproxy jobs: cannot keep the token under {data_dir}: {exc}", file=sys.stderr)
            return 1
    public_host = urlsplit(args.public_url).hostname if args.public_url else None
    settings = Settings(data_dir=data_dir, max_concurrent=args.max_concurrent, token=token,
                        grace_period=args.grace_period, bind=args.host, public_url=args.public_url,
                        allowed_hosts=(*args.allowed_host, *([public_host] if public_host else [])),
                        allowed_origins=tuple(args.allowed_origin), executor=args.executor,
                        partition=args.partition, account=args.account, sbatch_args=tuple(args.sbatch_arg),
                        cache_url=args.cache_url, poll_interval=_poll_interval(args))
    try:
        return asyncio.run(_serve(settings, args.host, args.port, shown))
    except OSError as exc:
        print(f"evalproxy jobs: {exc}", file=sys.stderr)
        return 1


def _poll_interval(args: argparse.Namespace) -> float:
    if args.poll_interval is not None:
        return float(args.poll_interval)
    return SLURM_POLL if args.executor == "slurm" else 0.5


def _executor_problem(args: argparse.Namespace, data_dir: Path) -> str | None:
    """Why the executor options cannot work, or None: a --cache-url that is not a store URL; on Slurm, a data
    directory whose path Slurm would rewrite, or a disk cache on a filesystem shared between machines."""
    if args.poll_interval is not None and not 0 < args.poll_interval <= 60:
        return "--poll-interval must be more than 0 and at most 60 seconds"
    if args.cache_url and not is_store_url(args.cache_url):
        return "--cache-url must start with redis://, rediss:// or unix://"
    if args.executor != "slurm":
        if args.partition or args.account or args.sbatch_arg or args.public_url:
            return "--partition, --account, --sbatch-arg and --public-url need --executor slurm"
        return None
    if args.public_url:
        parts = urlsplit(args.public_url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            return f"--public-url {args.public_url!r}: expected http(s)://HOST[:PORT][/PATH], as the nodes reach it"
    if "%" in str(data_dir) or "\\" in str(data_dir):
        return f"--data-dir {data_dir}: Slurm reads % and \\ in an output path as patterns; choose another directory"
    missing = [name for name in ("sbatch", "squeue", "scontrol", "scancel") if shutil.which(name) is None]
    if missing:
        return (f"--executor slurm: {', '.join(missing)} not found on PATH (this machine needs Slurm's client "
                "commands, e.g. Debian's slurm-client, and a slurm.conf that names the cluster)")
    if not args.cache_url:
        from evalproxy.jobs import launch  # here: ``evalproxy serve`` never loads the jobs service

        try:
            launch.check_cache_filesystem(data_dir / "cache")
        except JobLaunchError as exc:
            return str(exc).replace("the job's disk cache", "the jobs' disk cache")
        log.warning("--executor slurm without --cache-url: jobs keep their answers on disk under %s, which works "
                    "when the nodes share it on a filesystem whose locks hold (or on one node); give --cache-url "
                    "redis://HOST:6379/0 for one cache that every node shares", data_dir / "cache")
    return None


def _token(env_name: str, data_dir: Path) -> tuple[str, str]:
    """(the token, how to show it): from the environment, else from ``data_dir/token``, else a new one written there
    readable by the user alone. Only a token from the file is shown (once, at start): the user set the other."""
    given = os.environ.get(env_name)
    if given:
        return given, f"the token in ${env_name}"
    path = data_dir / TOKEN_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        pass
    else:
        with os.fdopen(fd, encoding="utf-8") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
                log.warning("%s was readable by others: now 0600 (anyone who read it can call this service; delete "
                            "it to get a new token)", path)
                os.fchmod(f.fileno(), 0o600)
            token = f.read().strip()
        if token:
            return token, _header_line(token, path)
        path.unlink()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, _header_line(token, path)


def _header_line(token: str, path: Path) -> str:
    return f"every call needs the header 'Authorization: Bearer {token}' (kept in {path})"


async def _serve(settings: Settings, host: str, port: int, token_note: str) -> int:
    # here, not at the top: ``evalproxy serve`` never loads the service
    from evalproxy.jobs.app import RUNNER, create_app

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
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
        # what the nodes can call; getfqdn may ask DNS: not on the loop
        reached = await asyncio.to_thread(socket.getfqdn) if host in ("", "0.0.0.0", "::") else shown
        app[RUNNER].service_url.set(f"http://{reached}:{bound}")
        print(f"evalproxy jobs listening on http://{shown}:{bound} (data: {settings.data_dir})\n"
              f"  {token_note}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if settings.executor == "slurm":
            log.info("stopping: jobs on the cluster go on; the next start watches them again")
        else:
            log.info("stopping: running jobs are stopped and marked failed; queued jobs wait for the next start")
    finally:
        await runner.cleanup()
    return 0
