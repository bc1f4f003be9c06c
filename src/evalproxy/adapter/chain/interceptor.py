"""The interceptor chain: protocols, the base class, and :func:`build_chain`.

An interceptor is an async callable ``(ctx, call_next) -> ProxyResponse``. It may

* change the request, by giving ``ctx`` a new body (:meth:`RequestContext.set_json`), and then ``await call_next(ctx)``;
* change or observe the response that ``call_next`` returned, whole or streamed alike, through
  :mod:`evalproxy.adapter.flow.answers`;
* answer by itself, returning a response without calling ``call_next`` (a cache hit short-circuits that way: no flag,
  no stage; whatever is inside it, the upstream included, never runs).

The configured list ``[a, b, endpoint, c]`` is folded once at start-up, outer to inner, into
``a(b(c(transport)))``: ``endpoint`` names where the upstream transport (the :class:`Terminal`) sits, and is the end
of the chain rather than a layer. Interceptors listed after ``endpoint`` are response-side layers nested *inside* the
ones before it, so in NeMo Evaluator's default order ``system_message, reasoning, caching, endpoint, response_stats``:

* system_message changes the request before caching sees it (the cache key covers the injected prompt);
* reasoning wraps caching, so the cache stores the model's raw answer and stripping is re-applied on every replay;
* response_stats sits inside caching and counts only real upstream calls, never replays.

An interceptor listed after ``endpoint`` must not change the request: the config is rejected (see
:func:`check_order`).

Errors: a failure of an interceptor, in its call or while a stream it wrapped is read, fails the request with an
:class:`InterceptorError` naming it (a stream already under way ends with an error event), unless the interceptor is
declared ``best_effort`` (statistics, logging, progress): then the failure is logged and the answer goes on without
that interceptor, its stream included. The chain never changes after it is built.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from evalproxy.adapter.core.errors import ConfigError, InterceptorError, ProxyError
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.sse import Event

log = logging.getLogger("evalproxy.chain")

Next = Callable[[RequestContext], Awaitable[ProxyResponse]]
"""The rest of the chain below an interceptor: call it with the (possibly changed) request to get the answer."""

P = TypeVar("P", bound=Params)


class Interceptor(Protocol):
    """One layer of the chain. See the module docstring for order, short-circuit and error semantics."""

    name: ClassVar[str]
    modifies_request: ClassVar[bool]
    best_effort: ClassVar[bool]

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse: ...

    async def aclose(self) -> None: ...


class Terminal(Protocol):
    """The end of the chain (what ``endpoint`` names): sends the request upstream. Opened and closed by the server.

    A class registered as one declares ``is_terminal = True``; the registry keeps terminals in a table of their own.
    """

    is_terminal: ClassVar[bool]

    async def __call__(self, ctx: RequestContext) -> ProxyResponse: ...

    def wants_usage(self, ctx: RequestContext) -> bool:
        """Whether the server should ask upstream for this stream's token usage on the client's behalf."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class BaseInterceptor(Generic[P]):
    """Convenience base: keeps ``params`` (typed: ``BaseInterceptor[MyParams]``) and ``run``.

    ``modifies_request``: the interceptor changes requests, so it must be listed before ``endpoint``.
    ``best_effort``: a failure of this interceptor is logged and the request continues without it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    modifies_request: ClassVar[bool] = False
    best_effort: ClassVar[bool] = False
    Params: ClassVar[type[Params]] = Params

    def __init__(self, params: P, run: RunContext) -> None:
        self.params: P = params
        self.run = run

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        return await call_next(ctx)

    async def aclose(self) -> None:
        """Release resources and flush state; called once when the server stops."""


def check_order(names: Sequence[str], classes: dict[str, type[Any]], kind: Callable[[type], str]) -> None:
    """Reject an order the chain cannot honour: two terminals, or a request-changer after the terminal.

    ``kind(cls)`` says which entries are terminals (the registry knows)."""
    ends = [i for i, n in enumerate(names) if n in classes and kind(classes[n]) == "terminal"]
    if len(ends) > 1:
        end = names[ends[0]]
        raise ConfigError(f"'{end}' is listed more than once; it is the terminal of the chain"
                          if names.count(end) > 1 else
                          f"'{end}' and '{names[ends[1]]}' are both chain ends; list one", field="interceptors")
    if not ends:
        return
    end = names[ends[0]]
    for n in names[ends[0] + 1 :]:
        cls = classes.get(n)
        if cls is not None and getattr(cls, "modifies_request", False):
            raise ConfigError(
                f"interceptor '{n}' changes requests but is listed after '{end}'; move '{n}' before '{end}'",
                field="interceptors",
            )


def build_chain(interceptors: Sequence[Interceptor], terminal: Next) -> Next:
    """Fold ``interceptors`` (outer first) around ``terminal`` once, and return the callable entry of the chain.

    ``interceptors`` is the configured list with ``endpoint`` removed: the caller has already placed the terminal.
    Each layer hands its interceptor the layer below itself as ``call_next`` (no wrapper per request): a layer marks
    the stream it hands up (:attr:`ProxyResponse.typed_stream`), so the layer above knows a stream passed on
    unchanged, whose failures are typed already, from one its interceptor made.
    """
    handler = _typed(terminal) if interceptors else terminal
    for ic in reversed(interceptors):
        handler = _lenient(ic, handler) if ic.best_effort else _strict(ic, handler)
    return handler


def _typed(terminal: Next) -> Next:
    """The terminal, its answers' streams marked as typed (the transport raises ProxyErrors only)."""

    async def end(ctx: RequestContext) -> ProxyResponse:
        resp = await terminal(ctx)
        resp.typed_stream = resp.stream
        return resp

    return end


def _strict(ic: Interceptor, inner: Next) -> Next:
    name = ic.name

    async def layer(ctx: RequestContext) -> ProxyResponse:
        try:
            resp = await ic(ctx, inner)
        except ProxyError:
            # Typed errors are answered as they are: raised on purpose here or further down the chain.
            raise
        except Exception as exc:
            # Every layer below turns its own failures into ProxyErrors, so this one is ic's own.
            raise InterceptorError(name, exc) from exc
        stream = resp.stream
        if stream is not None and stream is not resp.typed_stream:
            # A stream passed on as it came from below holds no failure of ic's own: one level less per event.
            resp.stream = resp.typed_stream = _named(name, stream)
        return resp

    return layer


async def _named(name: str, stream: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """A stream whose own failures (not those of the layers below, already typed) name its interceptor."""
    try:
        async for event in stream:
            yield event
    except ProxyError:
        raise
    except Exception as exc:
        raise InterceptorError(name, exc) from exc


class _Tap:
    """The inner stream of a best-effort layer, remembering the event it handed over and has not seen answered."""

    __slots__ = ("pending", "source")

    def __init__(self, source: AsyncIterator[Event]) -> None:
        self.source = source
        self.pending: Event | None = None

    def __aiter__(self) -> _Tap:
        return self

    async def __anext__(self) -> Event:
        event = await self.source.__anext__()
        self.pending = event
        return event


def _lenient(ic: Interceptor, inner: Next) -> Next:
    name = ic.name

    async def layer(ctx: RequestContext) -> ProxyResponse:
        result: ProxyResponse | None = None
        tap: _Tap | None = None

        async def call_next(c: RequestContext) -> ProxyResponse:
            nonlocal result, tap
            result = await inner(c)
            if result.stream is not None:
                tap = _Tap(result.stream)
                result.stream = tap
            return result

        try:
            resp = await ic(ctx, call_next)
        except ProxyError:
            raise
        except Exception:
            log.exception("best-effort interceptor '%s' failed; the request goes on without it", name)
            if result is not None:
                if tap is not None:
                    result.stream = tap.source
                resp = result
            else:
                resp = await inner(ctx)
        else:
            if resp.stream is not None and tap is not None:
                resp.stream = _tolerant(name, resp.stream, tap)
        resp.typed_stream = resp.stream  # whatever fails in it is typed or tolerated here
        return resp

    return layer


async def _tolerant(name: str, stream: AsyncIterator[Event], tap: _Tap) -> AsyncIterator[Event]:
    """A best-effort layer's stream: if the layer fails mid-stream, the rest comes straight from the layer below."""
    try:
        async for event in stream:
            tap.pending = None
            yield event
        return
    except ProxyError:
        raise
    except Exception:
        log.exception("best-effort interceptor '%s' failed mid-stream; the stream goes on without it", name)
    if tap.pending is not None:
        yield tap.pending
    async for event in tap.source:
        yield event
