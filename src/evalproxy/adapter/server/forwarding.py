"""What the proxy forwards upstream, and how a body becomes the request the chain sees (docs/security.md).

The proxy holds the user's API key and adds it to what it forwards, so it forwards what an evaluation needs and
nothing else: the OpenAI-compatible paths (with or without ``/v1``), plus the ones ``server.forward_paths`` adds,
with the methods ``server.forward_methods`` names (GET and POST). A path is taken only in normal form: a ``.`` or
``..`` segment, an empty segment, a backslash or an encoded slash could otherwise walk out of the upstream's base
path once joined to it. (Upstream headers that act on a browser, cookies and CORS, are dropped by the transport and
never stored: the proxy answers CORS itself.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from evalproxy.adapter.config.schema import ServerConfig
from evalproxy.adapter.core.errors import BadRequestError, NotForwardedError, PayloadTooLargeError
from evalproxy.adapter.flow.frozen import NestingError, freeze
from evalproxy.adapter.flow.request import OFF_LOOP_BYTES
from evalproxy.adapter.server.guard import matches_any

OPENAI_PATHS = (
    "chat/completions", "completions", "embeddings", "models", "models/*", "responses", "responses/*",
    "rerank", "score", "moderations", "audio/*", "images/*", "tokenize", "detokenize", "tokenizer_info",
)
"""Forwarded under ``/v1/`` and at the root (lm-eval's tokenizer probes call ``/tokenize`` outside ``/v1``)."""
DEFAULT_FORWARD_PATHS = tuple(f"/v1/{p}" for p in OPENAI_PATHS) + tuple(f"/{p}" for p in OPENAI_PATHS)
OPAQUE_TYPES = ("multipart/", "audio/", "image/", "video/")
"""Bodies of these types go upstream untouched and unparsed (audio uploads, images); every other body is JSON."""
_BAD_RAW = ("\\", "%2f", "%5c", "%00", "\x00")


class Forwarding:
    """The paths and methods one proxy forwards (``server.forward_paths`` / ``forward_methods``)."""

    def __init__(self, server: ServerConfig) -> None:
        self.paths = DEFAULT_FORWARD_PATHS + tuple(server.forward_paths)
        self.methods = frozenset(m.upper() for m in server.forward_methods)
        self._known: set[str] = set()

    def check(self, method: str, raw_path: str, path: str) -> None:
        """Refuse what is not forwarded: ``raw_path`` as it came (query included), ``path`` the route it names."""
        if method not in self.methods:
            raise NotForwardedError(
                f"method {method} is not forwarded (allowed: {', '.join(sorted(self.methods))}; "
                "server.forward_methods adds more)", method=True)
        if path in self._known:
            return
        raw = raw_path.split("?", 1)[0]
        lowered = raw.lower()
        segments = [unquote(s) for s in raw.split("/")[1:]]
        if any(b in lowered for b in _BAD_RAW) or any(s in ("", ".", "..") for s in segments[:-1]) \
                or segments[-1:] in ([".."], ["."]):
            raise BadRequestError(f"the path {raw!r} is not in normal form (no '.', '..', '//' or encoded '/')",
                                  code="invalid_path")
        if raw != "/" and not matches_any(path, self.paths):
            raise NotForwardedError(
                f"the path {path} is not forwarded: only the OpenAI-compatible paths are (server.forward_paths adds "
                "more)")
        if len(self._known) < 1024:
            self._known.add(path)

    @staticmethod
    def is_opaque(request: web.Request) -> bool:
        ctype = request.headers.get("Content-Type")
        return ctype is not None and ctype.lower().startswith(OPAQUE_TYPES)


def _parse(raw: bytes, max_depth: int) -> Any:
    if not raw.strip():
        raise BadRequestError("request body is empty; expected a JSON object")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise BadRequestError(f"request body must be a JSON object, not {type(parsed).__name__}",
                              code="invalid_body")
    try:
        return freeze(parsed, max_depth)
    except NestingError:
        raise BadRequestError(f"request body is nested deeper than max_json_depth ({max_depth})",
                              code="too_deep") from None


async def parse_body(raw: bytes, max_depth: int, max_objects: int) -> Any:
    """The body as a frozen JSON object (a large one parsed off the event loop), or a 4xx saying why not."""
    if len(raw) <= OFF_LOOP_BYTES:
        return _parse(raw, max_depth)
    # Parsing holds the interpreter for as long as it makes objects (a second per million), in a thread too: a body
    # that may hold more objects and arrays than allowed is counted by another process before it is parsed here.
    # (Each count holds the interpreter about 35 ms per 60 MiB: in a thread of its own, so the loop runs between.)
    if await asyncio.to_thread(raw.count, b"{") + await asyncio.to_thread(raw.count, b"[") > max_objects:
        count = await asyncio.to_thread(count_containers, raw, max_objects)
        if count > max_objects:
            raise PayloadTooLargeError(
                f"request body holds more than max_json_objects ({max_objects}) JSON objects and arrays")
    return await asyncio.to_thread(_parse, raw, max_depth)


_COUNT = """
import sys, orjson
limit = int(sys.argv[1])
try:
    todo = [orjson.loads(sys.stdin.buffer.read())]
except orjson.JSONDecodeError:
    print(0); raise SystemExit
n = 0
while todo and n <= limit:
    v = todo.pop()
    if isinstance(v, dict):
        n += 1; todo.extend(x for x in v.values() if isinstance(x, (dict, list)))
    elif isinstance(v, list):
        n += 1; todo.extend(x for x in v if isinstance(x, (dict, list)))
print(n)
"""
COUNT_TIMEOUT = 60.0


def count_containers(raw: bytes, limit: int) -> int:
    """How many JSON objects and arrays ``raw`` holds (up to just past ``limit``; 0 if it is not JSON), counted
    by a child interpreter so that this one never holds millions of them. Blocking: call it in a thread."""
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _COUNT, str(limit)], input=raw, capture_output=True,
                              timeout=COUNT_TIMEOUT, check=False)
        return int(done.stdout)
    except (ValueError, subprocess.TimeoutExpired, OSError):
        return limit + 1  # the counter died (out of memory) or took too long: the body is too much here too
