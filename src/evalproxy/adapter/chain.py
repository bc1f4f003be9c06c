"""The interceptor chain: protocols, the base class, and :func:`build_chain`.

An interceptor is an async callable ``(ctx, call_next) -> ProxyResponse``. It may

* change the request in ``ctx`` and then ``await call_next(ctx)``;
* change the response that ``call_next`` returned (its body, or wrap its ``stream`` of events);
* answer by itself, returning a response without calling ``call_next`` (a cache hit short-circuits that way: no flag,
  no stage; whatever is inside it, the upstream included, never runs).

The configured list ``[a, b, endpoint, c]`` is folded once at start-up, outer to inner, into
``a(b(c(upstream)))``: ``endpoint`` names where the upstream transport sits, and is the terminal of the chain rather
than a layer. Interceptors listed after ``endpoint`` are response-side layers nested *inside* the ones before it, so in
NeMo Evaluator's default order ``system_message, reasoning, caching, endpoint, response_stats``:

* system_message changes the request before caching sees it (the cache key covers the injected prompt);
* reasoning wraps caching, so the cache stores the model's raw answer and stripping is re-applied on every replay;
* response_stats sits inside caching and counts only real upstream calls, never replays.

An interceptor listed after ``endpoint`` must not change the request: the config is rejected (see
:func:`check_order`). An interceptor failure fails the request with an error naming it, unless the interceptor is
declared ``best_effort`` (statistics, logging, progress), in which case the failure is logged and the request goes on.
The chain never changes after it is built.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from evalproxy.adapter.errors import ConfigError, InterceptorError, ProxyError

if TYPE_CHECKING:
    from evalproxy.adapter.context import ProxyResponse, RequestContext, RunContext

log = logging.getLogger("evalproxy.chain")

Next = Callable[["RequestContext"], Awaitable["ProxyResponse"]]
"""The rest of the chain below an interceptor: call it with the (possibly changed) request to get the answer."""


class Params(BaseModel):
    """Base of every interceptor's and hook's ``Params``: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_level: str | None = None
    """Accepted as in NeMo Evaluator's configs, where every interceptor has it; evalproxy logs by logger name."""


_BaseParams = Params  # nested ``Params`` classes below shadow the name


@runtime_checkable
class Interceptor(Protocol):
    """One layer of the chain. See the module docstring for order and short-circuit semantics."""

    name: ClassVar[str]
    modifies_request: ClassVar[bool]
    best_effort: ClassVar[bool]

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse: ...

    async def aclose(self) -> None: ...


class BaseInterceptor:
    """Convenience base: keeps ``params`` and ``run``; subclasses declare ``Params`` and the class flags.

    ``modifies_request``: the interceptor changes requests, so it must be listed before ``endpoint``.
    ``best_effort``: a failure of this interceptor is logged and the request continues without it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    modifies_request: ClassVar[bool] = False
    best_effort: ClassVar[bool] = False

    class Params(_BaseParams):
        pass

    def __init__(self, params: Any, run: RunContext) -> None:
        self.params = params
        self.run = run

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        return await call_next(ctx)

    async def aclose(self) -> None:
        """Release resources and flush state; called once when the server stops."""


def check_order(names: Sequence[str], classes: dict[str, type[Any]]) -> None:
    """Reject an order the chain cannot honour: ``endpoint`` twice, or a request-changer after ``endpoint``."""
    if names.count("endpoint") > 1:
        raise ConfigError("'endpoint' is listed more than once; it is the terminal of the chain", field="interceptors")
    if "endpoint" not in names:
        return
    after = names[names.index("endpoint") + 1 :]
    for n in after:
        cls = classes.get(n)
        if cls is not None and getattr(cls, "modifies_request", False):
            raise ConfigError(
                f"interceptor '{n}' changes requests but is listed after 'endpoint'; "
                f"move '{n}' before 'endpoint'",
                field="interceptors",
            )


def build_chain(interceptors: Sequence[Interceptor], terminal: Next) -> Next:
    """Fold ``interceptors`` (outer first) around ``terminal`` once, and return the callable entry of the chain.

    ``interceptors`` is the configured list with ``endpoint`` removed: the caller has already placed the terminal.
    """
    handler = terminal
    for ic in reversed(interceptors):
        handler = _layer(ic, handler)
    return handler


def _layer(ic: Interceptor, inner: Next) -> Next:
    name = ic.name

    if not ic.best_effort:

        async def strict(ctx: RequestContext) -> ProxyResponse:
            try:
                return await ic(ctx, inner)
            except ProxyError:
                # Typed errors are answered as they are: raised on purpose here or further down the chain.
                raise
            except Exception as exc:
                # Every layer below turns its own failures into ProxyErrors, so this one is ic's own.
                raise InterceptorError(name, exc) from exc

        return strict

    async def lenient(ctx: RequestContext) -> ProxyResponse:
        result: ProxyResponse | None = None
        called = False

        async def call_next(c: RequestContext) -> ProxyResponse:
            nonlocal result, called
            called = True
            result = await inner(c)
            return result

        try:
            return await ic(ctx, call_next)
        except ProxyError:
            raise
        except Exception:
            log.exception("best-effort interceptor '%s' failed; the request goes on without it", name)
            if result is not None:
                return result
            if called:
                raise
            return await inner(ctx)

    return lenient
