"""response_logging: the first answers of a run in the log (streams assembled once complete), secrets redacted."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain import BaseInterceptor, Next
from evalproxy.adapter.chain import Params as BaseParams
from evalproxy.adapter.context import ProxyResponse, RequestContext
from evalproxy.adapter.redact import clip, redact_headers
from evalproxy.adapter.registry import register_for_adapter
from evalproxy.adapter.sse import assemble_stream

log = logging.getLogger("evalproxy.logging")


@register_for_adapter(name="response_logging", description="Logs the first answers.")
class ResponseLoggingInterceptor(BaseInterceptor):
    best_effort = True

    class Params(BaseParams):
        log_response_body: bool = True
        log_response_headers: bool = True
        max_responses: int | None = Field(default=None, ge=0, description="None: every answer")

    def __init__(self, params: Any, run: Any) -> None:
        super().__init__(params, run)
        self.count = 0

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        p = self.params
        if p.max_responses is not None and self.count >= p.max_responses:
            return resp
        self.count += 1
        if resp.stream is not None:
            resp.stream = self._log_stream(ctx, resp.status, resp.headers.items(), resp.stream)
        else:
            self._log(ctx, resp.status, resp.headers.items(), resp.json if resp.json is not None else resp.body)
        return resp

    def _log(self, ctx: RequestContext, status: int, headers: Any, body: Any) -> None:
        parts = [f"answer to #{ctx.request_id} status={status}"]
        if self.params.log_response_headers:
            parts.append(f"headers={clip(redact_headers(headers))}")
        if self.params.log_response_body:
            shown = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            parts.append(f"body={clip(shown)}")
        log.info(" ".join(parts))

    async def _log_stream(self, ctx: RequestContext, status: int, headers: Any,
                          stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        events: list[bytes] = []
        headers = list(headers)
        async for event in stream:
            events.append(event)
            yield event
        self._log(ctx, status, headers, assemble_stream(events))
