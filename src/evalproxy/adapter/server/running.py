"""The proxy served on a real socket: what ``evalproxy serve``, ``evalproxy run``, the demo and services start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web

from evalproxy.adapter.config.schema import LoadedConfig
from evalproxy.adapter.registry.registry import Resolved
from evalproxy.adapter.server.app import PROXY, create_app
from evalproxy.adapter.server.proxy import Proxy

log = logging.getLogger("evalproxy")


class RunningProxy:
    """The proxy served on a real socket; :meth:`stop` finishes in-flight requests, runs hooks and closes.

    Usable as ``async with RunningProxy(loaded) as running: ...running.url...``.
    """

    def __init__(self, loaded: LoadedConfig, *, resolved: Resolved | None = None, run_id: str | None = None) -> None:
        self.loaded = loaded
        # Handlers are never cancelled when a client leaves, so an answer being paid for runs to its end without a
        # task and a shield of its own.
        self.app = create_app(loaded, resolved=resolved, run_id=run_id, handler_cancellation=False)
        self.proxy: Proxy = self.app[PROXY]
        self.runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=loaded.server.shutdown_timeout,
            handler_cancellation=False,
        )
        self.url = ""

    async def start(self) -> str:
        try:
            await self.runner.setup()
            s = self.loaded.server
            site = web.TCPSite(self.runner, s.host, s.port, backlog=4096, reuse_address=True)
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
