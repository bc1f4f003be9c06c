"""A fast fake model for benchmarks: fixed answers, optional delay, SSE streams. Prints its port, then serves.

    python bench/upstream.py [--delay-ms 0] [--chunks 20] [--chunk-gap-ms 0]

It does no JSON parsing on the hot path (it looks for ``"stream": true`` in the raw body), so it stays cheaper per
request than any proxy in front of it.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web
from loopback import serve_forever

ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "The answer is 42. " * 8},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 40, "total_tokens": 60},
}
BODY = json.dumps(ANSWER).encode()


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    obj = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--chunk-gap-ms", type=float, default=0.0)
    args = p.parse_args()
    delay = args.delay_ms / 1000
    gap = args.chunk_gap_ms / 1000
    events = [chunk("")] + [chunk(f"tok{i} ") for i in range(args.chunks)] + [chunk(None, "stop")]
    usage = b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [],
                                    "usage": ANSWER["usage"]}).encode() + b"\n\n"

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if delay:
            await asyncio.sleep(delay)
        if b'"stream":true' in raw or b'"stream": true' in raw:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for e in events:
                await resp.write(e)
                if gap:
                    await asyncio.sleep(gap)
            if b"include_usage" in raw:
                await resp.write(usage)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.Response(body=BODY, content_type="application/json")

    async def serve() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        await serve_forever(app)

    try:
        import uvloop  # optional: faster when installed

        uvloop.run(serve())
    except ImportError:
        asyncio.run(serve())


if __name__ == "__main__":
    main()
