"""drop_params: remove request fields a model rejects (NeMo Evaluator 0.3+'s ``drop_params``).

Only top-level keys are removed, as in NeMo; ``payload_modifier``'s ``params_to_remove`` reaches every depth. Each
dropped name is logged once per run, so a harness sending it on every request does not flood the log.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.registry import register_for_adapter

log = logging.getLogger("evalproxy.drop_params")


class DropParamsParams(Params):
    params: list[str] = Field(min_length=1, description="Top-level request fields to remove")


@register_for_adapter(name="drop_params", description="Removes top-level request fields a model rejects.")
class DropParamsInterceptor(BaseInterceptor[DropParamsParams]):
    modifies_request = True

    Params = DropParamsParams

    def __init__(self, params: DropParamsParams, run: RunContext) -> None:
        super().__init__(params, run)
        self.names = frozenset(params.params)
        self.told: set[str] = set()

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        body: Any = ctx.json
        if isinstance(body, dict):
            found = self.names.intersection(body)
            if found:
                ctx.set_json({k: v for k, v in body.items() if k not in found})
                for name in sorted(found - self.told):
                    self.told.add(name)
                    log.info("drop_params: removing '%s' from requests", name)
        return await call_next(ctx)
