"""request_logging: the first requests of a run in the log, secrets redacted."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params as BaseParams
from evalproxy.adapter.core.redact import clip, redact_headers, redact_obj
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.logging")


class RequestLoggingParams(BaseParams):
    nemo_fields = frozenset({"output_dir"})  # NeMo Evaluator fields with no effect here
    log_request_body: bool = True
    log_request_headers: bool = True
    max_requests: int | None = Field(default=2, ge=0, description="None: every request")


@register_for_adapter(name="request_logging", description="Logs the first requests (secrets redacted).")
class RequestLoggingInterceptor(BaseInterceptor[RequestLoggingParams]):
    best_effort = True

    Params = RequestLoggingParams

    def __init__(self, params: Any, run: Any) -> None:
        super().__init__(params, run)
        self.count = 0
        self.secrets = run.server.secrets()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        p = self.params
        if p.max_requests is None or self.count < p.max_requests:
            self.count += 1
            parts = [f"request #{ctx.request_id} {ctx.method} {ctx.path}"]
            if p.log_request_headers:
                parts.append(f"headers={clip(redact_headers(ctx.headers.items()))}")
            if p.log_request_body and ctx.json is not None:
                parts.append(f"body={clip(redact_obj(ctx.json, self.secrets))}")
            log.info(" ".join(parts))
        return await call_next(ctx)
