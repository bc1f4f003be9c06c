"""log_tokens: one log line per answer with its token usage and latency (NeMo Evaluator 0.3+'s ``log_tokens``).

Whole JSON answers with ``usage`` only (streams pass through unlogged, as in NeMo). Never fails a request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.log_tokens")


class LogTokensParams(Params):
    pass


@register_for_adapter(name="log_tokens", description="Logs each answer's token usage and latency.")
class LogTokensInterceptor(BaseInterceptor[LogTokensParams]):
    best_effort = True

    Params = LogTokensParams

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        t0 = time.perf_counter()
        resp = await call_next(ctx)
        body: Any = resp.json if resp.stream is None else None
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            log.info("tokens model=%s prompt=%s completion=%s total=%s latency_ms=%.1f", body.get("model"),
                     usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens"),
                     (time.perf_counter() - t0) * 1000)
        return resp
