"""A simulated OpenAI-compatible model: the upstream of ``evalproxy demo``, of the tests and of the benchmarks.

It answers chat, completions, embeddings and ``GET /v1/models``, streams with SSE (``stream_options.include_usage``
included), can think aloud in ``<think>...</think>``, and has knobs for faults: a queue of scripted answers (status
codes, ``Retry-After``, delays, broken streams, non-JSON bodies). Answers are deterministic for a deterministic request
(``temperature`` 0 or a ``seed``) and differ between repeats of a sampled one, like a real model. Every request it
receives is kept in :attr:`SimulatedModel.log`, so a test can see exactly what reached the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

_WORDS = (
    "the answer follows from the premises so we compute each step carefully and check the result against the "
    "question then we state it plainly"
).split()


GATE_SECONDS = 10.0


@dataclass
class Fault:
    """One scripted misbehaviour, used by the next request that reaches the model."""

    status: int | None = None
    """Answer with this status and an OpenAI-shaped error body."""
    retry_after: str | None = None
    delay: float = 0.0
    """Wait this long before answering."""
    drop_after_events: int | None = None
    """For a stream: send this many events, then cut the connection."""
    end_after_events: int | None = None
    """For a stream: send this many events, then end the response cleanly (negative: all but that many, so -1
    leaves out only ``[DONE]``)."""
    error_event_after: int | None = None
    """For a stream: send this many events, then an ``{"error": ...}`` event and ``[DONE]``, as vLLM does when
    generation fails after the 200 went out."""
    body: bytes | None = None
    """Answer 200 with exactly this body (for example, not JSON)."""
    headers: dict[str, str] | None = None
    """Extra headers on the ``body`` answer (a hostile upstream's Set-Cookie or CORS headers)."""
    content: str | None = None
    """Answer with this message content instead of the generated one."""
    finish_reason: str = "stop"
    """For a chat stream: the finish reason its last content is sent with (``length``: cut off by max_tokens)."""


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    at: float = field(default_factory=time.time)


class SimulatedModel:
    """A fake model endpoint; ``app()`` is its aiohttp application."""

    def __init__(
        self,
        *,
        model: str = "sim-model",
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        reasoning: bool = False,
        reasoning_words: int = 12,
        answer_words: int = 8,
        chunk_chars: int = 7,
        tool_calls: int = 0,
        answers: Callable[[str], str] | None = None,
        fail_status: int | None = None,
    ) -> None:
        self.model = model
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.reasoning = reasoning
        self.reasoning_words = reasoning_words
        self.answer_words = answer_words
        self.chunk_chars = chunk_chars
        self.tool_calls = tool_calls
        """Answer a chat request that offers ``tools`` with this many calls of them (0: never). Streamed, each call is
        named in its first delta and its arguments follow in ``chunk_chars`` pieces, the calls interleaved."""
        self.answers = answers
        """The answer's text for a prompt, in place of generated words: a model whose answers a test can score (see
        :func:`sums`)."""
        self.fail_status = fail_status
        """Answer every request with this error status (an upstream that is down for good)."""
        self.faults: deque[Fault] = deque()
        self.log: list[Received] = []
        self._samples = itertools.count(1)
        self._ids = itertools.count(1)
        self.keep_log = True
        self.streams_finished: list[float] = []
        """perf_counter() when each stream's last byte was written."""
        self.finish_gate: asyncio.Event | None = None
        """When set (by a test): a chat stream waits before its finish event until the gate opens (at most
        ``GATE_SECONDS``). A client that opens it on its first answer text shows, without any clock, that the text
        reached it before the model finished: the stream came event by event, not held to its end."""
        self.gate_opened: list[bool] = []
        """For each gated stream: whether the gate opened before the finish event was sent."""

    # -- scripting -------------------------------------------------------------------------------------------------
    def script(self, *faults: Fault) -> None:
        """Queue faults for the next requests, one each, in order."""
        self.faults.extend(faults)

    def requests_to(self, suffix: str) -> list[Received]:
        return [r for r in self.log if r.path.endswith(suffix)]

    # -- content ---------------------------------------------------------------------------------------------------
    def _seed_for(self, body: dict[str, Any], prompt: str) -> str:
        temperature = body.get("temperature", 1.0)
        deterministic = body.get("seed") is not None or (
            isinstance(temperature, int | float) and temperature == 0
        )
        salt = f"seed={body.get('seed')}" if deterministic else f"sample={next(self._samples)}"
        return hashlib.sha256(f"{prompt}|{salt}|{body.get('max_tokens')}".encode()).hexdigest()

    def _text(self, digest: str, n: int, offset: int = 0) -> str:
        vals = bytes.fromhex(digest)
        return " ".join(_WORDS[(vals[(i + offset) % len(vals)] + i) % len(_WORDS)] for i in range(n))

    def make_content(self, body: dict[str, Any], prompt: str) -> tuple[str, str | None]:
        """(content, reasoning) for a request: the content includes the ``<think>`` block when reasoning is on."""
        if self.answers is not None:
            return self.answers(prompt), None
        digest = self._seed_for(body, prompt)
        answer = f"[{digest[:8]}] " + self._text(digest, self.answer_words)
        if not self.reasoning:
            return answer, None
        thought = self._text(digest, self.reasoning_words, offset=5)
        return f"<think>{thought}</think>{answer}", thought

    def make_tool_calls(self, body: dict[str, Any], prompt: str) -> list[dict[str, Any]]:
        """The tool calls for a request offering ``tools`` (none when it offers none or the knob is 0)."""
        tools = [t for t in body.get("tools") or () if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        if not (self.tool_calls and tools):
            return []
        digest = self._seed_for(body, prompt)
        return [{"id": f"call_{digest[:8]}_{k}", "type": "function",
                 "function": {"name": str(tools[k % len(tools)]["function"].get("name")),
                              "arguments": orjson.dumps({"query": self._text(digest, 16, offset=k), "k": k}).decode()}}
                for k in range(self.tool_calls)]

    # -- handlers --------------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "sim"}]}
        )

    def _record(self, request: web.Request, body: dict[str, Any] | None) -> None:
        if self.keep_log:
            self.log.append(Received(request.method, request.path, dict(request.headers), body))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            if request.path.endswith("/audio/transcriptions"):
                self._record(request, None)
                return web.json_response({"text": f"{len(raw)} bytes of audio"})
            return _error(400, "simulated model: body is not JSON")
        self._record(request, body)
        if self.fail_status is not None:
            return _error(self.fail_status, f"simulated error {self.fail_status}")
        fault = self.faults.popleft() if self.faults else None
        delay = self.latency + (fault.delay if fault else 0.0)
        if delay:
            await asyncio.sleep(delay)
        if fault and fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return _error(fault.status, f"simulated error {fault.status}", headers)
        if fault and fault.body is not None:
            return web.Response(body=fault.body, content_type="application/json", headers=fault.headers)
        path = request.path.rstrip("/")
        if path.endswith("/chat/completions"):
            return await self._chat(request, body, fault)
        if path.endswith("/completions"):
            return await self._completions(request, body, fault)
        if path.endswith("/embeddings"):
            return _embeddings(body, self.model)
        return web.json_response({"echo": body, "path": request.path})

    async def _chat(self, request: web.Request, body: dict[str, Any], fault: Fault | None) -> web.StreamResponse:
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            return _error(400, "simulated model: messages must be a list")
        prompt = " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 128:
            # A real server refuses these too; looping 10**16 times would hang the tests that fuzz bodies.
            return _error(400, "simulated model: n must be an integer from 1 to 128")
        choices = []
        contents = []
        reasoning: str | None = None
        for i in range(n):
            content, reasoning = self.make_content(body, prompt)
            if fault and fault.content is not None:
                content = fault.content
            contents.append(content)
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            )
        calls = self.make_tool_calls(body, prompt)
        for c in choices if calls else ():
            c["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
            c["finish_reason"] = "tool_calls"
        usage = _usage(prompt, " ".join(contents), reasoning)
        rid = f"chatcmpl-sim-{next(self._ids)}"
        if body.get("stream"):
            return await self._stream_chat(request, body, rid, contents[0], usage, fault, calls)
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": choices,
                "usage": usage,
            }
        )

    async def _stream_chat(
        self,
        request: web.Request,
        body: dict[str, Any],
        rid: str,
        content: str,
        usage: dict[str, Any],
        fault: Fault | None,
        calls: list[dict[str, Any]] | None = None,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        created = int(time.time())
        model = body.get("model", self.model)

        events, finish_at = _chat_events(rid, created, model, content, calls or [], self.chunk_chars, body, usage,
                                         fault)
        for k, ev in enumerate(events):
            if fault and fault.drop_after_events is not None and k >= fault.drop_after_events:
                assert request.transport is not None
                request.transport.close()
                return resp
            if k == finish_at and self.finish_gate is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.finish_gate.wait(), GATE_SECONDS)
                self.gate_opened.append(self.finish_gate.is_set())
            await resp.write(ev)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write_eof()
        self.streams_finished.append(time.perf_counter())
        return resp

    async def _completions(
        self, request: web.Request, body: dict[str, Any], fault: Fault | None
    ) -> web.StreamResponse:
        prompts = body.get("prompt", "")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list):
            return _error(400, "simulated model: prompt must be a string or a list")
        choices = []
        total_prompt = ""
        total_text = ""
        for i, p in enumerate(prompts):
            text, _ = self.make_content(body, str(p))
            if fault and fault.content is not None:
                text = fault.content
            total_prompt += " " + str(p)
            total_text += " " + text
            choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": "length"})
        return web.json_response(
            {
                "id": f"cmpl-sim-{next(self._ids)}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": choices,
                "usage": _usage(total_prompt, total_text, None),
            }
        )


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "simulated_error", "code": status}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _usage(prompt: str, content: str, reasoning: str | None) -> dict[str, Any]:
    p = len(prompt.split())
    c = len(content.split())
    usage: dict[str, Any] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": len(reasoning.split())}
    return usage


def _embeddings(body: dict[str, Any], model: str) -> web.Response:
    inputs = body.get("input", "")
    if isinstance(inputs, str):
        inputs = [inputs]
    data = []
    for i, text in enumerate(inputs):
        d = hashlib.sha256(str(text).encode()).digest()
        data.append({"object": "embedding", "index": i, "embedding": [b / 255 for b in d[:8]]})
    tokens = sum(len(str(t).split()) for t in inputs)
    return web.json_response(
        {"object": "list", "data": data, "model": body.get("model", model),
         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def _chat_events(rid: str, created: int, model: Any, content: str, calls: list[dict[str, Any]], step: int,
                 body: dict[str, Any], usage: dict[str, Any], fault: Fault | None) -> tuple[list[bytes], int]:
    """A chat stream's events (content, or tool calls named first and their arguments in ``step``-long pieces,
    interleaved), the usage chunk when asked for, ``[DONE]``, with the fault's cuts applied; and the index of the
    finish event."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    if calls:
        events = [chunk({"role": "assistant", "content": None})]
        events += [chunk({"tool_calls": [{"index": k, "id": c["id"], "type": "function",
                                          "function": {"name": c["function"]["name"], "arguments": ""}}]})
                   for k, c in enumerate(calls)]
        args = [c["function"]["arguments"] for c in calls]
        pieces = [[a[i : i + step] for i in range(0, len(a), step)] for a in args]
        events += [chunk({"tool_calls": [{"index": k, "function": {"arguments": p[i]}}]})
                   for i in range(max(map(len, pieces))) for k, p in enumerate(pieces) if i < len(p)]
    else:
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": content[i : i + step]}) for i in range(0, len(content), step)]
    finish_at = len(events)
    events.append(chunk({}, "tool_calls" if calls else fault.finish_reason if fault else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        final = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [], "usage": usage}
        events.append(b"data: " + orjson.dumps(final) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    if fault and fault.end_after_events is not None:
        events = events[: fault.end_after_events]
    if fault and fault.error_event_after is not None:
        error = {"error": {"message": "simulated failure mid-stream", "type": "InternalServerError", "code": 500}}
        events = [*events[: fault.error_event_after], b"data: " + orjson.dumps(error) + b"\n\n", b"data: [DONE]\n\n"]
    return events, finish_at


_SUM = re.compile(r"(\d+)\s*\+\s*(\d+)")


def sums(wrong: Callable[[int], bool] | Iterable[int] = ()) -> Callable[[str], str]:
    """An ``answers`` function: the sum of the last "A + B" a prompt asks, off by one where ``wrong`` says (a set of
    sums, or a rule), and "I do not know." for a prompt asking none: a model a harness can score."""
    is_wrong = wrong if callable(wrong) else frozenset(wrong).__contains__

    def answer(prompt: str) -> str:
        found = _SUM.findall(prompt)
        if not found:
            return "I do not know."
        total = int(found[-1][0]) + int(found[-1][1])
        return str(total + 1 if is_wrong(total) else total)

    return answer


def main(argv: list[str] | None = None) -> None:
    """``python -m evalproxy.simulator --port N [--sums] [--wrong 7,11] [--fail]``: serve it on 127.0.0.1."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m evalproxy.simulator", description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--sums", action="store_true", help="answer the sums a prompt asks (see --wrong)")
    parser.add_argument("--wrong", default="", help="with --sums: comma-separated sums answered off by one")
    parser.add_argument("--fail", action="store_true", help="answer every request with a 500")
    args = parser.parse_args(argv)
    wrong = [int(x) for x in args.wrong.split(",") if x]
    sim = SimulatedModel(answers=sums(wrong) if args.sums or wrong else None, fail_status=500 if args.fail else None)
    web.run_app(sim.app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
