"""model_traffic: one line per model call in ``model_traffic.jsonl`` (NeMo Evaluator 0.4's traffic capture).

Each call that reaches this layer gets a JSON line when its answer is complete: ``request_id``, ``session_id`` (the
``X-Session-Id`` header), ``timestamp``, ``method``, ``path``, ``service``, ``model``, ``request_hash`` (a content
hash of the body, to find duplicate calls), ``status_code``, ``latency_ms``, ``finish_reason``, ``usage`` (prompt,
completion, total, reasoning and cached tokens, whichever the answer reports) and ``tool_calls`` (``count`` and
``names``). The capture switches add, for a successful call: ``tool_calls_full`` (id, name, arguments), the
``reasoning_content`` and the ``message_content`` (on by default, as in 0.4), and the ``request_body`` (off by
default); ``max_content_chars`` cuts each captured text (0: no limit). A failed call gets ``error_message``,
``error_type``, ``error_code`` instead; a stream that broke off is recorded as failed.

Placed just before ``endpoint`` (where a 0.4-shaped config puts it), it sees what goes upstream, after every
interceptor changed it, and never a cache hit. Secrets never reach the file: the request body is redacted (secret
fields, and the run's own key anywhere). Lines are appended by one writer in a thread, batched; ``aclose`` flushes.
Several workers of one ``serve`` append to the same file, a whole line per write.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.errors import ProxyError
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.core.redact import redact_obj
from evalproxy.adapter.flow.answers import AnswerHandler, handle, whole_answer
from evalproxy.adapter.flow.request import SESSION_HEADER, RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.shape import message_of, tool_calls
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.model_traffic")

TRAFFIC_FILE = "model_traffic.jsonl"
_ERROR_CHARS = 4000
_USAGE_NAMES = {
    "prompt_tokens": ("prompt_tokens", "input_tokens"),
    "completion_tokens": ("completion_tokens", "output_tokens"),
    "total_tokens": ("total_tokens",),
    "reasoning_tokens": ("reasoning_tokens",),
    "cached_tokens": ("cached_tokens",),
}
_DETAILS = {"reasoning_tokens": ("completion_tokens_details", "output_tokens_details"),
            "cached_tokens": ("prompt_tokens_details", "input_tokens_details")}


class ModelTrafficParams(Params):
    capture_tool_calls: bool = Field(default=True, description="Each tool call's id, name and arguments")
    capture_reasoning: bool = Field(default=True, description="The answer's reasoning_content")
    capture_messages: bool = Field(default=True, description="The answer's content")
    capture_request_body: bool = Field(default=False, description="The body sent upstream (secrets redacted)")
    max_content_chars: int = Field(default=0, ge=0, description="Cut each captured text at this length; 0: no limit")
    path: str = Field(default=TRAFFIC_FILE, description="The file (relative: in the run's output dir)")
    service: str | None = Field(default=None, description="The service name each line carries (0.4's services:)")


def cut(value: Any, limit: int) -> Any:
    """``value`` cut at ``limit`` characters, saying how much was dropped (0: no limit)."""
    if isinstance(value, str) and 0 < limit < len(value):
        return value[:limit] + f"...[truncated, {len(value) - limit} chars dropped]"
    return value


def request_hash(body: Any) -> str | None:
    """16 hex digits identifying a body's content (keys sorted), for finding duplicate calls."""
    if not isinstance(body, dict):
        return None
    return hashlib.sha1(orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()[:16]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_of(raw: Any) -> dict[str, int]:
    """The token counts an answer reports, under one set of names (OpenAI's, or the Responses API's)."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, int] = {}
    for name, aliases in _USAGE_NAMES.items():
        value = next((v for a in aliases if (v := _int(raw.get(a))) is not None), None)
        for details in _DETAILS.get(name, ()):
            if value is None and isinstance(raw.get(details), dict):
                value = _int(raw[details].get(name))
        if value is not None:
            out[name] = value
    if "total_tokens" not in out and {"prompt_tokens", "completion_tokens"} <= set(out):
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def summary(body: Any, p: ModelTrafficParams) -> dict[str, Any]:
    """What a line says of a successful answer (one ``chat.completion`` or ``text_completion`` object)."""
    body = body if isinstance(body, dict) else {}
    finish = ""
    names: list[str] = []
    full: list[dict[str, Any]] = []
    reasoning: list[str] = []
    content: list[str] = []
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        finish = str(choice.get("finish_reason") or finish)
        msg = message_of(choice) or {}
        for call in tool_calls(choice):
            fn: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
            names.append(str(fn.get("name") or ""))
            args = fn.get("arguments")
            args = args if isinstance(args, str) or args is None else orjson.dumps(args).decode()
            full.append({"id": call.get("id") or "", "name": fn.get("name") or "",
                         "arguments": cut(args, p.max_content_chars)})
        if isinstance(msg.get("reasoning_content"), str):
            reasoning.append(msg["reasoning_content"])
        text = msg.get("content") if msg else choice.get("text")
        if isinstance(text, str):
            content.append(text)
    out: dict[str, Any] = {"model": str(body.get("model") or ""), "finish_reason": finish,
                           "usage": usage_of(body.get("usage")),
                           "tool_calls": {"count": len(names), "names": dict(sorted(Counter(n for n in names if n)
                                                                                    .items()))}}
    if p.capture_tool_calls:
        out["tool_calls_full"] = full
    if p.capture_reasoning:
        out["reasoning_content"] = cut("".join(reasoning), p.max_content_chars)
    if p.capture_messages:
        out["message_content"] = cut("".join(content), p.max_content_chars)
    return out


def error_summary(body: Any, limit: int) -> dict[str, Any]:
    """``error_message``, ``error_type`` and ``error_code`` of a failed answer (OpenAI's error shape, or its text)."""
    limit = _ERROR_CHARS if limit <= 0 else min(limit, _ERROR_CHARS)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        out: dict[str, Any] = {"error_message": cut(str(err.get("message") or err.get("detail") or ""), limit)}
        for name in ("type", "code"):
            if err.get(name) is not None:
                out[f"error_{name}"] = str(err[name])
        return out
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = body if isinstance(body, str) else orjson.dumps(body, default=str).decode() if body is not None else ""
    return {"error_message": cut(text, limit)} if text else {}


@register_for_adapter(name="model_traffic", description="Writes one line per model call to model_traffic.jsonl.")
class ModelTrafficInterceptor(BaseInterceptor[ModelTrafficParams]):
    best_effort = True

    Params = ModelTrafficParams

    def __init__(self, params: ModelTrafficParams, run: RunContext) -> None:
        super().__init__(params, run)
        self.path: Path = run.resolve(run.output_dir / params.path)  # an absolute path stays itself
        self.secrets = run.server.secrets()
        self.pending: list[bytes] = []
        self.written = 0
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        # A large body's hash (and captured copy) is worked out in a thread, as caching keys it.
        record = await asyncio.to_thread(self.start, ctx) if ctx.is_large else self.start(ctx)
        t0 = time.perf_counter()
        try:
            resp = await call_next(ctx)
        except ProxyError as exc:
            self.fail(record, exc.status, exc.message, exc.type, exc.code, _ms(t0))
            raise
        return await handle(resp, _Captured(self, record, resp, t0))

    def start(self, ctx: RequestContext) -> dict[str, Any]:
        body: Any = ctx.json
        record: dict[str, Any] = {
            "request_id": ctx.request_id, "session_id": ctx.headers.get(SESSION_HEADER),
            "timestamp": time.time(), "method": ctx.method, "path": ctx.path, "service": self.params.service,
            "model": (body.get("model") or "") if isinstance(body, dict) else "", "request_hash": request_hash(body)}
        if self.params.capture_request_body and isinstance(body, dict):
            safe = redact_obj(body, self.secrets)
            record["request_body"] = cut(orjson.dumps(safe, option=orjson.OPT_SORT_KEYS).decode(),
                                         self.params.max_content_chars)
        return record

    def finish(self, record: dict[str, Any], status: int, body: Any, latency_ms: float) -> None:
        ok = 200 <= status < 400
        record.update(status_code=status, latency_ms=latency_ms)
        if ok:
            got = summary(body, self.params)
            got["model"] = got["model"] or record["model"]
            record.update(got)
        else:
            record.update(finish_reason="", usage={}, tool_calls={"count": 0, "names": {}})
            record.update(error_summary(body, self.params.max_content_chars))
        self.add(record)

    def fail(self, record: dict[str, Any], status: int | None, message: str, kind: str, code: str | None,
             latency_ms: float) -> None:
        """The line of a call that got no answer (the proxy's own error, or a stream that broke off)."""
        record.update(status_code=status, latency_ms=latency_ms, finish_reason="", usage={},
                      tool_calls={"count": 0, "names": {}}, error_message=cut(message, _ERROR_CHARS),
                      error_type=kind)
        if code is not None:
            record["error_code"] = code
        self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        # The run's key, or a bearer token, echoed anywhere in what was captured never reaches the file.
        self.pending.append(orjson.dumps(redact_obj(record, self.secrets), default=str) + b"\n")
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self.pending:
            lines, self.pending = self.pending, []
            try:
                await asyncio.to_thread(_append, self.path, lines)
                self.written += len(lines)
            except OSError as exc:
                log.warning("model_traffic: cannot write %s: %s (%d lines lost)", self.path, exc, len(lines))

    async def aclose(self) -> None:
        if self._writer is not None:
            await self._writer
        if self.pending:
            await self._write_pending()


def _append(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab", buffering=0) as f:
        for line in lines:
            f.write(line)  # unbuffered: one append per line, as the workers of one serve share the file


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


class _Captured(AnswerHandler):
    """Writes the call's line once its answer is complete (a stream assembled into one object)."""

    keep_events = True

    def __init__(self, ic: ModelTrafficInterceptor, record: dict[str, Any], resp: ProxyResponse, t0: float) -> None:
        self.ic, self.record, self.resp, self.t0 = ic, record, resp, t0

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        body = whole_answer(self.resp, events)
        self.ic.finish(self.record, self.resp.status, body, _ms(self.t0))
        return []

    async def on_error(self, exc: BaseException) -> None:
        self.ic.fail(self.record, None, f"the stream did not complete: {type(exc).__name__}: {exc}",
                     "stream_interrupted", None, _ms(self.t0))
