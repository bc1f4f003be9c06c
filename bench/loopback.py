"""Serving an aiohttp app on a free 127.0.0.1 port for the benchmark's own processes, with uvloop where installed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

from aiohttp import web


async def serve_forever(app: web.Application) -> None:
    """Bind a free loopback port, print it (the parent reads it), and serve until killed."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, backlog=4096).start()
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


def run(main: Coroutine[Any, Any, None], *, use_uvloop: bool = True) -> None:
    """Run ``main`` on uvloop if it is installed (the fake upstream and the load generator must stay cheap)."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
