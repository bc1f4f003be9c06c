"""A fast fake model for the benchmarks: fixed answers, no JSON parsing. Prints its port, then serves.

    python bench/upstream.py

One process serves every scenario; the request's model name says how to answer, so a proxy under test is started
once per round and sees one upstream:

    "model": "bench"                  answer at once
    "model": "bench-d50"              answer after 50 ms (for a stream: first event after 50 ms)
    "model": "bench-g50"              with "stream": true: 20 content events, 50 ms apart
    "model": "bench-d20-g50-n40"      combined; n is the number of content events (default 20)
    "model": "bench-corpus"           an answer of the realistic corpus (bench/corpus.py, path in $BENCH_CORPUS):
                                      a JSON one, or for "stream": true a stream; one per prompt (crc32 of the body)

It looks for ``"stream": true`` in the raw body, so it stays cheaper per request than any proxy in front of it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import zlib
from pathlib import Path

from aiohttp import web
from loopback import run, serve_forever

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
MODEL = re.compile(rb'"model": ?"bench((?:-[dgn]\d+)*)"')
KNOB = re.compile(rb"-([dgn])(\d+)")


def chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    obj = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


ROLE = b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                               "model": "bench", "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                              "finish_reason": None}]}).encode() + b"\n\n"
CONTENT = [chunk(f"tok{i} ") for i in range(1000)]
FINISH = chunk(None, "stop")
USAGE = b"data: " + json.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [],
                                "usage": ANSWER["usage"]}).encode() + b"\n\n"
DONE = b"data: [DONE]\n\n"


def load_corpus() -> tuple[list[bytes], list[list[bytes]]]:
    """(JSON answers, streams' events) of the corpus at $BENCH_CORPUS; empty without one."""
    path = os.environ.get("BENCH_CORPUS")
    if not path:
        return [], []
    entries = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return ([e["body"].encode() for e in entries if e["kind"] == "json"],
            [[x.encode() for x in e["events"]] for e in entries if e["kind"] == "stream"])


CORPUS_JSON, CORPUS_STREAMS = load_corpus()


async def corpus_answer(request: web.Request, raw: bytes, stream: bool) -> web.StreamResponse:
    pick = zlib.crc32(raw)
    if not stream:
        return web.Response(body=CORPUS_JSON[pick % len(CORPUS_JSON)], content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"".join(CORPUS_STREAMS[pick % len(CORPUS_STREAMS)]))
    await resp.write_eof()
    return resp


def knobs(raw: bytes) -> tuple[float, float, int]:
    """(delay s, gap s, content events) from the model name."""
    m = MODEL.search(raw)
    d = g = 0.0
    n = 20
    if m and m.group(1):
        for k, v in KNOB.findall(m.group(1)):
            if k == b"d":
                d = int(v) / 1000
            elif k == b"g":
                g = int(v) / 1000
            else:
                n = min(int(v), len(CONTENT))
    return d, g, n


async def handle(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    stream = b'"stream":true' in raw or b'"stream": true' in raw
    if CORPUS_JSON and b'"bench-corpus"' in raw:
        return await corpus_answer(request, raw, stream)
    delay, gap, n = knobs(raw)
    if delay:
        await asyncio.sleep(delay)
    if not stream:
        return web.Response(body=BODY, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(ROLE)
    for e in CONTENT[:n]:
        if gap:
            await asyncio.sleep(gap)
        await resp.write(e)
    await resp.write(FINISH)
    if b"include_usage" in raw:
        await resp.write(USAGE)
    await resp.write(DONE)
    await resp.write_eof()
    return resp


def main() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    run(serve_forever(app))


if __name__ == "__main__":
    main()
