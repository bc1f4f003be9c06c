"""What the commands share: logging (secrets redacted), the server options of ``serve`` and ``run`` and the config
they load, the bind warning, and waiting for SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from evalproxy import nemo_compat
from evalproxy.adapter.config import LoadedConfig, load_config
from evalproxy.adapter.core.errors import ConfigError
from evalproxy.adapter.core.net import is_loopback
from evalproxy.adapter.core.redact import redact_obj, redact_text
from evalproxy.adapter.registry import Resolved, resolve
from evalproxy.adapter.server.output import server_doc
from evalproxy.storage import is_url

log = logging.getLogger("evalproxy")

EXIT_CONFIG = 2

Command = Callable[[argparse.Namespace], int]
"""What a sub-command's parser carries as ``func`` (``set_defaults``): its arguments in, the exit status out."""


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


def logged(command: Command) -> Command:
    """``command`` run after logging is set up at ``$EVALPROXY_LOG_LEVEL`` (INFO): for commands without a
    ``--log-level``."""

    def run(args: argparse.Namespace) -> int:
        setup_logging(os.environ.get("EVALPROXY_LOG_LEVEL", "INFO"))
        return command(args)

    return run


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
        "allowed_hosts": args.allowed_host,
        "allowed_origins": args.allowed_origin,
    }


def add_server_args(p: argparse.ArgumentParser, default_port: int | None = None) -> None:
    p.add_argument("--config", "-c", help="adapter config (YAML or JSON): bare, launcher-shaped or legacy. A file "
                   "that lists no interceptors gets NeMo Evaluator's default chain (caching, endpoint, "
                   "response_stats); without -c, evalproxy's own default chain applies (reasoning, caching, "
                   "endpoint, response_stats)")
    p.add_argument("--task", help="a launcher config's task (evaluation.tasks[].name) whose adapter config to use; "
                   "needed when the tasks' adapter configs differ")
    p.add_argument("--strict-config", action="store_true",
                   help="an interceptor or hook param no NeMo Evaluator version defines is an error, not a warning")
    p.add_argument("--upstream", "-u", help="model endpoint: base URL (.../v1) or full .../chat/completions URL")
    p.add_argument("--model-id", help="model id (informational; shown in reports)")
    p.add_argument("--api-key-name", help="name of the env var holding the upstream API key")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", "-p", type=int, default=default_port, help="port (0 picks a free one)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="a Host name clients may reach the proxy by, beyond its address and localhost (repeatable; "
                   "'.example.org' for a domain; see docs/security.md)")
    p.add_argument("--allowed-origin", action="append", metavar="ORIGIN",
                   help="a web page origin (http://host:port) allowed to call the proxy, with CORS (repeatable)")
    p.add_argument("--output-dir", "-o", help="where cache, statistics and reports go")
    p.add_argument("--request-timeout", type=float, help="seconds to wait for an upstream answer")
    p.add_argument("--max-retries", type=int, help="retries on 429/5xx/connection errors")
    p.add_argument("--max-concurrent-requests", type=int, help="upstream connection limit")
    p.add_argument("--run-id", help="join this run: proxies started with one run id share its pass@k slots "
                   "(default: a new run id)")
    p.add_argument("--cache-url", help="the caching interceptor's store: a Redis/Valkey URL (redis://host:6379/0, "
                   "rediss://, unix://) shared by proxies on many machines, in place of its cache_dir")
    p.add_argument("--cache-url-env", metavar="NAME", help="the store URL read from this environment variable "
                   "(as --cache-url; a password in it then stays out of the process list)")
    p.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default=None,
                   help="event loop: uvloop where installed (auto, the default), or asyncio's own "
                   "(also EVALPROXY_LOOP=asyncio)")
    p.add_argument("--log-level", default=os.environ.get("EVALPROXY_LOG_LEVEL", "INFO"))
    p.add_argument("--print-config", action="store_true",
                   help="print what the config means here (the chain in order and the hooks, each with every param, "
                   "defaults included; the server settings; secrets redacted) as YAML, and exit without serving")


def start_proxy_command(args: argparse.Namespace) -> tuple[LoadedConfig, Resolved]:
    """What ``serve`` and ``run`` do first: logging at ``--log-level``, the config loaded, then logging again with
    the upstream key redacted, and the open-files limit lifted."""
    setup_logging(args.log_level)
    loaded, resolved = load(args)
    key = loaded.server.api_key()
    setup_logging(args.log_level, [key] if key else [])
    raise_open_files_limit()
    return loaded, resolved


def effective_yaml(loaded: LoadedConfig, resolved: Resolved) -> str:
    """``--print-config``: the resolved chain as a request passes it (outer first, the terminal last: an interceptor
    that only sees answers wraps the terminal, whatever its place in the file) and the hooks, each with all its
    params, and the server settings, as YAML; secret-named fields and the run's secret values redacted."""
    def unit(cls: type[Any], params: Any) -> dict[str, Any]:
        return {"name": getattr(cls, "name", cls.__name__), "params": params.model_dump(mode="json")}

    doc = {"source": loaded.source or "(no file: evalproxy's default chain)", "server": server_doc(loaded.server),
           "chain": [unit(c, p) for c, p in [*resolved.interceptors, resolved.terminal]],
           "post_eval_hooks": [unit(c, p) for c, p in resolved.hooks], "warnings": list(resolved.warnings)}
    return yaml.safe_dump(redact_obj(doc, loaded.server.secrets()), sort_keys=False)


def load(args: argparse.Namespace) -> tuple[LoadedConfig, Resolved]:
    """The config, checked against the plugins it names (discovery runs here, once; plugins written for NeMo
    Evaluator's API load too, through :func:`evalproxy.nemo_compat.install`)."""
    nemo_compat.install()
    loaded = load_config(args.config, overrides=_server_overrides(args), task=args.task,
                         strict=args.strict_config)
    url = args.cache_url
    if getattr(args, "cache_url_env", None):
        url = os.environ.get(args.cache_url_env)
        if not url:
            raise ConfigError(f"--cache-url-env names {args.cache_url_env}, which is not set (or empty) in the "
                              "environment", field="--cache-url-env")
    if url:
        loaded = _with_cache_url(loaded, url)
    if not loaded.server.upstream_url:
        raise ConfigError("no upstream URL: set server.upstream_url (or target.api_endpoint.url) or --upstream",
                          field="server.upstream_url", file=loaded.source)
    resolved = resolve(loaded)
    for warning in resolved.warnings:
        print(f"evalproxy: warning: {loaded.source or 'config'}: {warning}", file=sys.stderr)
    return loaded, resolved


def _with_cache_url(loaded: LoadedConfig, url: str) -> LoadedConfig:
    """``--cache-url``: the caching interceptor's ``cache_url`` set on the command line (it wins over the file)."""
    if not is_url(url):
        raise ConfigError("--cache-url must start with redis://, rediss:// or unix://", field="--cache-url")
    interceptors = [ic.model_copy(update={"config": {**ic.config, "cache_url": url}}) if ic.name == "caching" else ic
                    for ic in loaded.adapter.interceptors]
    if interceptors == loaded.adapter.interceptors:
        raise ConfigError("--cache-url needs a caching interceptor in the chain", field="--cache-url",
                          file=loaded.source)
    loaded.adapter = loaded.adapter.model_copy(update={"interceptors": interceptors})
    return loaded


async def wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def warn_bind(host: str) -> None:
    """A warning when the proxy listens beyond loopback."""
    if not is_loopback(host):
        log.warning(
            "binding to %s: the proxy is reachable beyond this machine; protect admin paths with "
            "server.admin_token_name", host,
        )
