"""The command line: ``evalproxy serve | run | report | cache | demo | jobs``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalproxy import __version__
from evalproxy.adapter.config import LoadedConfig, load_config
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.redact import redact_text
from evalproxy.adapter.registry import Resolved, resolve
from evalproxy.adapter.server.running import RunningProxy, run_command
from evalproxy.jobs.cli import add_jobs_parser, run_jobs_command

log = logging.getLogger("evalproxy")

EXIT_CONFIG = 2


class _RedactingFilter(logging.Filter):
    """Removes the upstream API key and bearer tokens from every log record."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg, self.secrets)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = redact_text(str(exc), self.secrets)
            if text != str(exc):
                record.exc_info = None
                record.msg = f"{record.msg} ({type(exc).__name__}: {text})"
        return True


def setup_logging(level: str, secrets: Sequence[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter(secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def raise_open_files_limit() -> None:
    """Many concurrent requests need many sockets: lift the soft open-files limit to the hard one where allowed."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:  # not on every platform, nor always permitted
        log.debug("open-files limit unchanged: %s", exc)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "upstream_url": args.upstream,
        "model_id": args.model_id,
        "api_key_name": args.api_key_name,
        "host": args.host,
        "port": args.port,
        "output_dir": args.output_dir,
        "request_timeout": args.request_timeout,
        "max_retries": args.max_retries,
        "max_concurrent_requests": args.max_concurrent_requests,
    }


def _add_server_args(p: argparse.ArgumentParser, default_port: int | None = None) -> None:
    p.add_argument("--config", "-c", help="adapter config (YAML or JSON): bare, launcher-shaped or legacy")
    p.add_argument("--upstream", "-u", help="model endpoint: base URL (.../v1) or full .../chat/completions URL")
    p.add_argument("--model-id", help="model id (informational; shown in reports)")
    p.add_argument("--api-key-name", help="name of the env var holding the upstream API key")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", "-p", type=int, default=default_port, help="port (0 picks a free one)")
    p.add_argument("--output-dir", "-o", help="where cache, statistics and reports go")
    p.add_argument("--request-timeout", type=float, help="seconds to wait for an upstream answer")
    p.add_argument("--max-retries", type=int, help="retries on 429/5xx/connection errors")
    p.add_argument("--max-concurrent-requests", type=int, help="upstream connection limit")
    p.add_argument("--run-id", help="join this run: proxies started with one run id share its pass@k slots "
                   "(default: a new run id)")
    p.add_argument("--log-level", default=os.environ.get("EVALPROXY_LOG_LEVEL", "INFO"))


def _load(args: argparse.Namespace) -> tuple[LoadedConfig, Resolved]:
    """The config, checked against the plugins it names (discovery runs here, once)."""
    loaded = load_config(args.config, overrides=_server_overrides(args))
    if not loaded.server.upstream_url:
        raise ConfigError("no upstream URL: set server.upstream_url (or target.api_endpoint.url) or --upstream",
                          field="server.upstream_url", file=loaded.source)
    return loaded, resolve(loaded)


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _warn_bind(host: str) -> None:
    if not is_loopback(host):
        log.warning(
            "binding to %s: the proxy is reachable beyond this machine; protect admin paths with "
            "server.admin_token_name", host,
        )


async def _serve(loaded: LoadedConfig, resolved: Resolved, run_id: str | None) -> int:
    running = RunningProxy(loaded, resolved=resolved, run_id=run_id)
    url = await running.start()
    _warn_bind(loaded.server.host)
    print(f"evalproxy listening on {url}", flush=True)
    print(f"  point your harness at {url}/v1  (output: {running.proxy.run.output_dir})", flush=True)
    await _wait_for_signal()
    log.info("stopping: finishing in-flight requests, then post-eval hooks")
    await running.stop()
    print("evalproxy stopped", flush=True)
    return 0


async def _run(loaded: LoadedConfig, resolved: Resolved, command: list[str], run_id: str | None) -> int:
    running = RunningProxy(loaded, resolved=resolved, run_id=run_id)
    await running.start()
    _warn_bind(loaded.server.host)
    try:
        return await run_command(running, command)
    finally:
        await running.stop()


def _cmd_report(args: argparse.Namespace) -> int:
    from evalproxy.hooks.post_eval_report import render_reports

    paths = asyncio.run(render_reports(Path(args.dir)))
    for p in paths:
        print(p)
    return 0


def _cache_dir(path: Path) -> Path:
    return path / "cache" if (path / "cache").is_dir() else path


def _cmd_cache(args: argparse.Namespace) -> int:
    import json

    from evalproxy.storage.disk import CacheStore

    cache_dir = _cache_dir(Path(args.dir))
    if not cache_dir.is_dir():
        print(f"evalproxy: no cache at {cache_dir}", file=sys.stderr)
        return 1
    store = CacheStore(cache_dir)
    try:
        if args.action == "stats":
            print(json.dumps(store.stats(), indent=2))
        else:
            n = store.clear()
            print(f"cleared {n} entries from {cache_dir}")
    finally:
        store.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evalproxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"evalproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the proxy until SIGINT/SIGTERM, then the post-eval hooks")
    _add_server_args(p)

    p = sub.add_parser("run", help="run a harness command through the proxy: evalproxy run -c FILE -- CMD ...")
    _add_server_args(p, default_port=0)
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")

    p = sub.add_parser("report", help="re-render report.html and report.json from a run directory")
    p.add_argument("dir")

    p = sub.add_parser("cache", help="look at or clear a cache")
    p.add_argument("action", choices=["stats", "clear"])
    p.add_argument("dir", help="a run's output dir or a cache dir")

    p = sub.add_parser("demo", help="a self-contained run against a simulated model")
    p.add_argument("--output-dir", "-o", default=None, help="where the demo writes (default: a new temp dir)")
    p.add_argument("--requests", type=int, default=24)

    add_jobs_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "jobs":
            return run_jobs_command(args)
        if args.command in ("serve", "run"):
            setup_logging(args.log_level)
            loaded, resolved = _load(args)
            key = loaded.server.api_key()
            setup_logging(args.log_level, [key] if key else [])
            raise_open_files_limit()
            if args.command == "serve":
                return asyncio.run(_serve(loaded, resolved, args.run_id))
            cmd = list(args.cmd)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            if not cmd:
                print("evalproxy run: give the command after --", file=sys.stderr)
                return EXIT_CONFIG
            return asyncio.run(_run(loaded, resolved, cmd, args.run_id))
        setup_logging(os.environ.get("EVALPROXY_LOG_LEVEL", "INFO"))
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "cache":
            return _cmd_cache(args)
        if args.command == "demo":
            from evalproxy.demo import run_demo

            return run_demo(args)
    except ConfigError as exc:
        print(f"evalproxy: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"evalproxy: {exc}", file=sys.stderr)
        return 1
    return 0
