"""``evalproxy serve`` on uvloop instead of asyncio's own loop: how much a faster event loop would save.

    .venv/bin/python bench/evalproxy_uvloop.py serve --config FILE --port 0 ...   (the same arguments as the CLI)

A benchmark variant only (target ``evalproxy_uvloop``); evalproxy itself runs on asyncio's default loop.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

from evalproxy.cli import main

if __name__ == "__main__":
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
