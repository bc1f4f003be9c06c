"""NeMo Evaluator 0.2.8's plugin types, written for evalproxy, and the decorator that wraps a plugin class."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multidict import CIMultiDict
from pydantic import BaseModel

from evalproxy.adapter.chain.hook import BaseHook
from evalproxy.adapter.chain.interceptor import BaseInterceptor, Next
from evalproxy.adapter.core.errors import ProxyError
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.registry.registry import register_for_adapter as _mark


class FatalErrorException(Exception):  # NeMo Evaluator's name, which plugins import
    """Raised by a plugin to stop the evaluation: the request fails with a 500 naming the message."""


class PluginFatalError(ProxyError):
    status = 500
    type = "fatal_error"
    code = "fatal_error"


@dataclass
class AdapterGlobalContext:
    output_dir: str
    url: str
    model_name: str | None = None

    @property
    def metrics_path(self) -> Path:
        return Path(self.output_dir) / "eval_factory_metrics.json"


@dataclass
class AdapterRequestContext:
    cache_hit: bool = False
    cache_key: str | None = None
    request_id: str | None = None


class Request:
    """What a NeMo plugin reads of a Flask request (and builds with ``Request.from_values``)."""

    def __init__(self, path: str = "/", method: str = "POST", headers: Any = None, data: bytes | str = b"",
                 url: str = "", cookies: dict[str, str] | None = None) -> None:
        self.path = path
        self.method = method
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.data = data.encode() if isinstance(data, str) else data
        self.url = url or path
        self.cookies = cookies or {}

    @classmethod
    def from_values(cls, path: str = "/", base_url: str | None = None, query_string: Any = None,
                    method: str = "POST", input_stream: Any = None, content_type: str | None = None,
                    content_length: int | None = None, errors_stream: Any = None, multithread: bool = False,
                    multiprocess: bool = False, run_once: bool = False, headers: Any = None,
                    data: bytes | str | dict[str, Any] | None = None, **_: Any) -> Request:
        raw = json.dumps(data).encode() if isinstance(data, dict) else (data or b"")
        h = CIMultiDict(headers or {})
        if content_type:
            h["Content-Type"] = content_type
        return cls(path=path, method=method, headers=h, data=raw)

    def get_data(self, as_text: bool = False, **_: Any) -> Any:
        return self.data.decode("utf-8", "replace") if as_text else self.data

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        try:
            return json.loads(self.data) if self.data else None
        except ValueError:
            if silent:
                return None
            raise

    @property
    def json(self) -> Any:
        return self.get_json(silent=True)


class Response:
    """What a NeMo plugin reads (and sets, through ``_content``) of a ``requests`` response."""

    def __init__(self, status_code: int = 200, headers: Any = None, content: bytes = b"", url: str = "",
                 reason: str = "") -> None:
        self.status_code = status_code
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self._content = content
        self.url = url
        self.reason = reason or ("OK" if status_code == 200 else "")

    @property
    def content(self) -> bytes:
        return self._content

    @property
    def text(self) -> str:
        return self._content.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def json(self, **kw: Any) -> Any:
        return json.loads(self._content, **kw)


@dataclass
class AdapterRequest:
    r: Request
    rctx: AdapterRequestContext = field(default_factory=AdapterRequestContext)


@dataclass
class AdapterResponse:
    r: Response
    rctx: AdapterRequestContext = field(default_factory=AdapterRequestContext)
    latency_ms: float | None = None


class RequestInterceptor(ABC):
    @abstractmethod
    def intercept_request(self, req: AdapterRequest, context: AdapterGlobalContext) -> AdapterRequest: ...


class RequestToResponseInterceptor(ABC):
    @abstractmethod
    def intercept_request(self, req: AdapterRequest,
                          context: AdapterGlobalContext) -> AdapterRequest | AdapterResponse: ...


class ResponseInterceptor(ABC):
    @abstractmethod
    def intercept_response(self, resp: AdapterResponse, context: AdapterGlobalContext) -> AdapterResponse: ...


class PostEvalHook(ABC):
    @abstractmethod
    def post_eval_hook(self, context: AdapterGlobalContext) -> None: ...


_KINDS = (RequestInterceptor, RequestToResponseInterceptor, ResponseInterceptor, PostEvalHook)


def _check(cls: type) -> None:
    """NeMo's checks: a plugin base class, a nested pydantic Params, ``__init__(self, params: Params)``."""
    if not issubclass(cls, _KINDS):
        raise ValueError(f"{cls.__name__} must subclass one of RequestInterceptor, RequestToResponseInterceptor, "
                         "ResponseInterceptor or PostEvalHook")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise TypeError(f"{cls.__name__} must define a nested pydantic model 'Params'")
    args = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    if len(args) != 1 or args[0].name != "params":
        raise TypeError(f"{cls.__name__}.__init__ must take exactly one parameter named 'params'")


def _context(run: RunContext) -> AdapterGlobalContext:
    return AdapterGlobalContext(output_dir=str(run.output_dir), url=run.server.upstream_url or "",
                                model_name=run.server.model_id)


def register_for_adapter(name: str, description: str = "") -> Any:
    """NeMo Evaluator's decorator: returns an evalproxy interceptor (or hook) that runs the decorated class."""

    def wrap(cls: type) -> type:
        _check(cls)
        params: type[BaseModel] = getattr(cls, "Params")  # noqa: B009  # checked by _check; mypy cannot see it
        cls._interceptor_metadata = {"name": name, "description": description}  # type: ignore[attr-defined]
        if issubclass(cls, (RequestInterceptor, RequestToResponseInterceptor, ResponseInterceptor)):
            adapter: type = type(cls.__name__, (_PluginInterceptor,), {
                "Params": params, "nemo_class": cls, "__doc__": cls.__doc__, "__module__": cls.__module__,
                "modifies_request": issubclass(cls, (RequestInterceptor, RequestToResponseInterceptor))})
        else:
            adapter = type(cls.__name__, (_PluginHook,), {
                "Params": params, "nemo_class": cls, "__doc__": cls.__doc__, "__module__": cls.__module__})
        return _mark(name, description)(adapter)

    return wrap


class _PluginInterceptor(BaseInterceptor[Any]):
    nemo_class: type

    def __init__(self, params: Any, run: RunContext) -> None:
        super().__init__(params, run)
        self.inner = self.nemo_class(params=params)
        self.context = _context(run)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> ProxyResponse:
        try:
            if isinstance(self.inner, (RequestInterceptor, RequestToResponseInterceptor)):
                answered = await asyncio.to_thread(self._request, ctx)
                if answered is not None:
                    return answered
            resp = await call_next(ctx)
            if isinstance(self.inner, ResponseInterceptor) and resp.stream is None:
                await asyncio.to_thread(self._response, ctx, resp)
            return resp
        except FatalErrorException as exc:
            raise PluginFatalError(f"{self.name}: {exc}") from exc

    def _request(self, ctx: RequestContext) -> ProxyResponse | None:
        r = Request(path=ctx.path, method=ctx.method, headers=ctx.headers, data=ctx.body_bytes(),
                    url=f"{self.context.url}")
        out = self.inner.intercept_request(AdapterRequest(r, AdapterRequestContext(request_id=str(ctx.request_id))),
                                           self.context)
        if isinstance(out, AdapterResponse):
            return ProxyResponse(out.r.status_code, CIMultiDict(out.r.headers), out.r.content)
        if out.r is not r or out.r.data != r.data:
            body = out.r.get_json(silent=True)
            if isinstance(body, dict) and body != ctx.json:
                ctx.set_json(body)
        if CIMultiDict(out.r.headers) != ctx.headers:
            ctx.headers.clear()
            ctx.headers.extend(out.r.headers)
        return None

    def _response(self, ctx: RequestContext, resp: ProxyResponse) -> None:
        r = Response(resp.status, resp.headers, resp.body or b"", url=self.context.url)
        out = self.inner.intercept_response(
            AdapterResponse(r, AdapterRequestContext(request_id=str(ctx.request_id))), self.context)
        if out.r.content != (resp.body or b""):
            resp.body = out.r.content
            parsed: Any = None
            with contextlib.suppress(ValueError):
                parsed = json.loads(out.r.content)
            if parsed is not None:
                resp.set_json(parsed)
        resp.status = out.r.status_code

    async def aclose(self) -> None:
        if isinstance(self.inner, PostEvalHook):
            await asyncio.to_thread(self.inner.post_eval_hook, self.context)


class _PluginHook(BaseHook[Any]):
    nemo_class: type

    async def __call__(self) -> None:
        inner = self.nemo_class(params=self.params)
        await asyncio.to_thread(inner.post_eval_hook, _context(self.run))
