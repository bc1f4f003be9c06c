"""evalproxy: a local OpenAI-compatible proxy for LLM evaluation runs.

What a plugin author needs: subclass :class:`BaseInterceptor` (or :class:`BaseHook`), declare ``Params``, decorate
with :func:`register_for_adapter`; read or change answers with :class:`AnswerHandler` and :func:`handle_answer`.
"""

from evalproxy.adapter.chain.hook import BaseHook
from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.answers import AnswerHandler
from evalproxy.adapter.flow.answers import handle as handle_answer
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.state import State, StateKey
from evalproxy.adapter.registry.registry import register_for_adapter

__version__ = "0.2.0.dev0"

__all__ = [
    "AnswerHandler",
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
    "handle_answer",
    "register_for_adapter",
]
