"""raise_client_errors: an upstream 4xx that means the evaluation is misconfigured stops being an ordinary answer.

NeMo Evaluator's rule for which statuses count: a status in ``status_codes`` always does; otherwise one in
``exclude_status_codes`` never does; otherwise one within ``status_code_range_start..status_code_range_end``
(either bound may be null) does. ``status_codes`` adds to the range rather than replacing it, as in NeMo.

Such an answer becomes a 500 error naming the upstream status, and the first one writes
``<output_dir>/.nemo_evaluator_server_error`` (the marker NeMo's harness wrappers look for). Unlike NeMo, the proxy
does not signal its parent process: evalproxy does not assume it was started by the evaluation it serves.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import model_validator

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.errors import UpstreamClientError
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.raise_client_errors")

MARKER = ".nemo_evaluator_server_error"


class RaiseClientErrorsParams(Params):
    exclude_status_codes: list[int] | None = [408, 429]
    status_codes: list[int] | None = None
    status_code_range_start: int | None = 400
    status_code_range_end: int | None = 499

    @model_validator(mode="after")
    def _consistent(self) -> RaiseClientErrorsParams:
        overlap = set(self.status_codes or ()) & set(self.exclude_status_codes or ())
        if overlap:
            raise ValueError(f"status codes both raised and excluded: {sorted(overlap)}")
        start, end = self.status_code_range_start, self.status_code_range_end
        if start and end and start >= end:
            raise ValueError("status_code_range_start must be below status_code_range_end")
        return self

    def raises(self, status: int) -> bool:
        if status in (self.status_codes or ()):
            return True
        if status in (self.exclude_status_codes or ()):
            return False
        start, end = self.status_code_range_start, self.status_code_range_end
        if start and end:
            return start <= status <= end
        if start:
            return status >= start
        if end:
            return status <= end
        return False


@register_for_adapter(name="raise_client_errors", description="Turns chosen upstream 4xx answers into a fatal error.")
class RaiseClientErrorsInterceptor(BaseInterceptor[RaiseClientErrorsParams]):
    Params = RaiseClientErrorsParams

    def __init__(self, params: RaiseClientErrorsParams, run: Any) -> None:
        super().__init__(params, run)
        self.marked = False

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        resp = await call_next(ctx)
        if not self.params.raises(resp.status):
            return resp
        close = getattr(resp.stream, "aclose", None)
        if close is not None:
            await close()
        message = f"Upstream endpoint error detected with status code {resp.status}"
        log.error("request #%s: %s", ctx.request_id, message)
        if not self.marked:
            self.marked = True
            try:
                self.run.output_dir.mkdir(parents=True, exist_ok=True)
                (self.run.output_dir / MARKER).write_text(message)
            except OSError as exc:
                log.warning("cannot write %s: %s", MARKER, exc)
        raise UpstreamClientError(message)
