"""response_logging: the first answers of a run in the log (streams assembled once complete), secrets redacted."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.core.redact import clip, redact_headers, redact_obj
from evalproxy.adapter.flow.answers import AnswerHandler, handle, whole_answer
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.sse import Event
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.logging")


class ResponseLoggingParams(BaseParams):
    nemo_fields = frozenset({"output_dir"})  # NeMo Evaluator fields with no effect here
    log_response_body: bool = True
    log_response_headers: bool = True
    max_responses: int | None = Field(default=None, ge=0, description="None: every answer")


@register_for_adapter(name="response_logging", description="Logs the first answers.")
class ResponseLoggingInterceptor(BaseInterceptor[ResponseLoggingParams]):
    best_effort = True

    Params = ResponseLoggingParams

    def __init__(self, params: Any, run: Any) -> None:
        super().__init__(params, run)
        self.count = 0
        self.secrets = run.server.secrets()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        p = self.params
        if p.max_responses is not None and self.count >= p.max_responses:
            return resp
        self.count += 1
        return await handle(resp, _Logged(self, ctx, resp))

    def _log(self, ctx: RequestContext, status: int, headers: Any, body: Any) -> None:
        parts = [f"answer to #{ctx.request_id} status={status}"]
        if self.params.log_response_headers:
            parts.append(f"headers={clip(redact_headers(headers))}")
        if self.params.log_response_body:
            shown = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            parts.append(f"body={clip(redact_obj(shown, self.secrets))}")
        log.info(" ".join(parts))


class _Logged(AnswerHandler):
    """Logs one answer once complete (a stream assembled into one object)."""

    keep_events = True

    def __init__(self, ic: ResponseLoggingInterceptor, ctx: RequestContext, resp: ProxyResponse) -> None:
        self.ic, self.ctx, self.resp = ic, ctx, resp
        self.headers = list(resp.headers.items())

    async def on_end(self, events: list[Event] | None) -> list[dict[str, Any]]:
        body = whole_answer(self.resp, events)
        self.ic._log(self.ctx, self.resp.status, self.headers, body)
        return []
