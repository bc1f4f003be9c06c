"""evalproxy: a local OpenAI-compatible proxy for LLM evaluation runs."""

from evalproxy.adapter.chain import BaseInterceptor, Next, Params
from evalproxy.adapter.context import ProxyResponse, RequestContext, RunContext, State, StateKey
from evalproxy.adapter.hooks import BaseHook
from evalproxy.adapter.registry import register_for_adapter

__version__ = "0.1.0"

__all__ = [
    "BaseHook",
    "BaseInterceptor",
    "Next",
    "Params",
    "ProxyResponse",
    "RequestContext",
    "RunContext",
    "State",
    "StateKey",
    "__version__",
    "register_for_adapter",
]
