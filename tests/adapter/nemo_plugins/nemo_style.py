"""A plugin written against NeMo Evaluator 0.2.8's API, as its docs show one: no evalproxy import at all."""

import json

from nemo_evaluator.adapters.decorators import register_for_adapter
from nemo_evaluator.adapters.types import (
    AdapterGlobalContext,
    AdapterRequest,
    AdapterResponse,
    FatalErrorException,
    RequestInterceptor,
    ResponseInterceptor,
)
from pydantic import BaseModel


@register_for_adapter(name="nemo_add_field", description="Adds a field to every request body.")
class AddField(RequestInterceptor):
    class Params(BaseModel):
        field: str = "nemo_field"

    def __init__(self, params: Params):
        self.field = params.field

    def intercept_request(self, req: AdapterRequest, context: AdapterGlobalContext) -> AdapterRequest:
        body = req.r.get_json()
        if body.get("stop_now"):
            raise FatalErrorException("asked to stop")
        body[self.field] = context.model_name
        new = type(req.r).from_values(path=req.r.path, headers=dict(req.r.headers), data=json.dumps(body),
                                      method=req.r.method)
        return AdapterRequest(r=new, rctx=req.rctx)


@register_for_adapter(name="nemo_shout", description="Upper-cases answers.")
class Shout(ResponseInterceptor):
    class Params(BaseModel):
        pass

    def __init__(self, params: Params):
        pass

    def intercept_response(self, resp: AdapterResponse, context: AdapterGlobalContext) -> AdapterResponse:
        data = resp.r.json()
        for ch in data.get("choices", []):
            ch["message"]["content"] = ch["message"]["content"].upper()
        resp.r._content = json.dumps(data).encode()
        return resp
