"""logging: every request and every answer of a run in the log, one line each (NeMo Evaluator 0.4's ``logging``).

0.4 registers its request/response logger under the name ``logging``: a line per request (method, path, the body's
top-level keys, a preview of the body) and a line per answer (status, latency, a preview of the body), at INFO, with
no cap and no settings. The same here, with the body previews redacted (an ``api_key`` field in a body is never
logged) and a stream logged once it ended, assembled into one object. Best-effort: a logging failure never fails a
request. The older ``request_logging`` and ``response_logging`` (NeMo 0.2.8's, with caps) are unchanged.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.core.redact import clip, redact_obj
from evalproxy.adapter.flow.answers import AnswerHandler, handle, whole_answer
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.logging")

PREVIEW_CHARS = 512
"""How much of a body a line shows (0.4's preview length)."""


class TrafficLogParams(Params):
    preview_chars: int = Field(default=PREVIEW_CHARS, ge=0, description="Characters of a body each line shows")


@register_for_adapter(name="logging", description="Logs every request and answer (NeMo 0.4's logging).")
class TrafficLogInterceptor(BaseInterceptor[TrafficLogParams]):
    best_effort = True

    Params = TrafficLogParams

    def __init__(self, params: TrafficLogParams, run: Any) -> None:
        super().__init__(params, run)
        self.secrets = run.server.secrets()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        if not log.isEnabledFor(logging.INFO):  # nothing would be written: no redaction, no stream held
            return await call_next(ctx)
        body: Any = ctx.json
        keys = list(body) if isinstance(body, dict) else []
        shown = redact_obj(body, self.secrets) if body is not None else None
        log.info("request #%s %s %s body_keys=%s body_preview=%s", ctx.request_id, ctx.method, ctx.path, keys,
                 clip(shown, self.params.preview_chars) if shown is not None else "")
        resp = await call_next(ctx)
        return await handle(resp, _Logged(self, ctx, resp))

    def log_answer(self, ctx: RequestContext, status: int, body: Any) -> None:
        latency_ms = (time.perf_counter() - ctx.started) * 1000
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        body = redact_obj(body, self.secrets)
        log.info("response #%s status=%d latency_ms=%.2f body_preview=%s", ctx.request_id, status, latency_ms,
                 clip(body, self.params.preview_chars) if body is not None else "")


class _Logged(AnswerHandler):
    """Logs one answer once it is complete (a stream assembled into one object)."""

    keep_events = True

    def __init__(self, ic: TrafficLogInterceptor, ctx: RequestContext, resp: ProxyResponse) -> None:
        self.ic, self.ctx, self.resp = ic, ctx, resp

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        body = whole_answer(self.resp, events)
        self.ic.log_answer(self.ctx, self.resp.status, body)
        return []
