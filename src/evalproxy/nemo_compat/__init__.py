"""Run interceptors and hooks written against NeMo Evaluator 0.2.8's plugin API without NeMo installed.

A NeMo plugin imports ``register_for_adapter`` from ``nemo_evaluator.adapters.decorators`` and its base classes and
request/response types from ``nemo_evaluator.adapters.types``. :func:`install` makes those imports resolve to this
package when the real ``nemo_evaluator`` is not installed (a meta path finder for the ``nemo_evaluator`` names
only). ``evalproxy serve`` and ``evalproxy run`` call it before discovery, so ``discovery.modules`` and
``discovery.dirs`` load such plugins as they are; code that builds a proxy itself calls it too.

The decorator checks the class as NeMo does (one of the four base classes, a nested pydantic ``Params``) and returns
an evalproxy interceptor (or hook) wrapping it. The plugin's synchronous methods run in a worker thread, on objects
shaped like the Flask request and ``requests`` response NeMo passes: ``req.r.get_json()``, ``Request.from_values``,
``resp.r.status_code``, ``resp.r._content``, ``resp.r.json()`` ... A ``FatalErrorException`` fails the request with a
500 naming it. Streamed answers are passed to response interceptors only once whole; a stream is left as it is.
"""

from evalproxy.nemo_compat.api import (
    AdapterGlobalContext,
    AdapterRequest,
    AdapterRequestContext,
    AdapterResponse,
    FatalErrorException,
    PostEvalHook,
    Request,
    RequestInterceptor,
    RequestToResponseInterceptor,
    Response,
    ResponseInterceptor,
    register_for_adapter,
)
from evalproxy.nemo_compat.shim import install

__all__ = [
    "AdapterGlobalContext",
    "AdapterRequest",
    "AdapterRequestContext",
    "AdapterResponse",
    "FatalErrorException",
    "PostEvalHook",
    "Request",
    "RequestInterceptor",
    "RequestToResponseInterceptor",
    "Response",
    "ResponseInterceptor",
    "install",
    "register_for_adapter",
]
