"""The terminal of the chain: the model endpoint, over one pooled aiohttp ``ClientSession``.

``endpoint`` in the interceptor list names where this transport sits; it is not itself a layer. The built-in
``endpoint`` (:mod:`evalproxy.interceptors.endpoint`) is this transport, registered with its params. It retries 429, 5xx
and connection failures with exponential backoff and jitter (honouring ``Retry-After``) until an answer has started
to reach the client, passes streams through event by event, and turns what cannot be answered into typed errors.
What it holds of an answer is bounded: ``max_answer_bytes`` for a whole answer or a stream in all,
``max_sse_line_bytes`` for one stream event not yet ended; past either it stops reading (``AnswerTooLargeError``).
Streams are read by :mod:`evalproxy.adapter.server.sse_reader`.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import random
import time
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from evalproxy.adapter.core.errors import (
    AnswerTooLargeError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    UpstreamUnreachableError,
)
from evalproxy.adapter.core.params import Params
from evalproxy.adapter.core.redact import HOP_BY_HOP, redact_url
from evalproxy.adapter.flow.request import RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.state import UPSTREAM_SECONDS
from evalproxy.adapter.server.sse_reader import SSEReader, answer_too_large

log = logging.getLogger("evalproxy.upstream")

_ENDPOINT_SUFFIXES = ("/chat/completions", "/completions", "/embeddings", "/models", "/responses")
# Client headers that must not be forwarded: hop-by-hop ones, and those aiohttp computes itself.
_DROP_REQUEST = HOP_BY_HOP | {"accept-encoding"}
# Upstream headers that must not reach the client: aiohttp already decompressed the body and aiohttp.web frames it.
_DROP_RESPONSE = HOP_BY_HOP | {"content-encoding", "set-cookie", "set-cookie2"}
# ... and what acts on a browser: the proxy answers CORS itself (docs/security.md), never the upstream for it.
_BROWSER_PREFIX = "access-control-"
# aiohttp sends bytes above this size as a stream (from a BytesIO), so a large body never holds the event loop.
_LARGE_BODY = 1 << 20


class EndpointParams(Params):
    """``endpoint``'s params: they override the server's upstream settings for this chain."""

    # NeMo Evaluator 0.3+ endpoint fields: the upstream comes from the server settings here.
    nemo_fields = frozenset({"upstream_url", "api_key", "extra_body", "extra_headers", "max_concurrent",
                             "model_traffic_store_id"})

    request_timeout: float | None = None
    max_retries: int | None = None
    retry_backoff: float | None = None
    stream_usage: bool = True
    """Ask upstream for usage on streams whose client did not (for statistics); the client never sees it."""


def split_upstream(url: str) -> tuple[str, str | None]:
    """``(base, suffix)`` of an upstream URL's path part: ``.../v1/chat/completions`` gives ``.../v1`` and
    ``/chat/completions``; a base URL gives itself and None. The query string is not part of either."""
    u = url.split("?", 1)[0].rstrip("/")
    for suffix in _ENDPOINT_SUFFIXES:
        if u.endswith(suffix):
            return u[: -len(suffix)], suffix
    return u, None


def upstream_url_for(upstream: str, path: str, query: str = "") -> str:
    """Where a request for ``path`` (and its ``query``) goes, for an upstream given as a base or an endpoint URL.

    As the OpenAI SDKs join ``base_url`` and a relative path: a request to the proxy's ``/v1/chat/completions`` goes
    to ``<base>/chat/completions`` whatever the base ends with (``.../v1``, ``.../v1beta/openai``, ``.../openai/v1``).
    A full endpoint URL (``.../v1/chat/completions``) receives requests of its own kind and requests to ``/``; other
    paths go to its base. A base that is only a host (``http://host:8000``) is the server's root: paths keep their
    ``/v1``. Paths outside ``/v1`` (``/tokenize``) go beside a base that ends in ``/v1``, else under it.
    The upstream URL's own query (``?api-version=...``) is kept, and the request's is added to it.
    """
    up_query = urlsplit(upstream).query
    full = upstream.split("?", 1)[0].rstrip("/")
    base, suffix = split_upstream(upstream)
    p = path.rstrip("/")
    if path in ("", "/"):
        target = full if suffix else base + "/"
    # "/chat/completions" also ends with "/completions": a completions URL must not take chat requests.
    elif suffix is not None and p.endswith(suffix) and (
            suffix != "/completions" or not p.endswith("/chat/completions")):
        target = full
    elif (path == "/v1" or path.startswith("/v1/")) and urlsplit(base).path not in ("", "/"):
        target = base + path[3:]
    elif base.endswith("/v1"):
        target = base[:-3] + path
    else:
        target = base + path
    q = "&".join(x for x in (up_query, query) if x)
    return f"{target}?{q}" if q else target


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class UpstreamTransport:
    """The transport: owns the ``ClientSession`` (opened in :meth:`start`, closed in :meth:`aclose`)."""

    name = "endpoint"
    description = "Sends the request to the model endpoint (the terminal of the chain)."
    best_effort = False
    modifies_request = False
    Params = EndpointParams

    def __init__(self, params: EndpointParams, run: RunContext) -> None:
        p = params
        server = run.server
        self.url = server.upstream_url
        self.api_key = server.api_key()
        self.request_timeout = p.request_timeout or server.request_timeout
        self.connect_timeout = min(server.connect_timeout, self.request_timeout)
        self.max_retries = p.max_retries if p.max_retries is not None else server.max_retries
        self.backoff = p.retry_backoff if p.retry_backoff is not None else server.retry_backoff
        self.max_backoff = server.retry_max_backoff
        self.retry_status = frozenset(server.retry_on_status)
        self.limit = server.max_concurrent_requests
        self.stream_usage = p.stream_usage
        self.max_answer = server.max_answer_bytes
        self.max_event = server.max_sse_line_bytes
        self.prometheus = run.prometheus
        self._session: aiohttp.ClientSession | None = None
        # A stream may take long in total, but must not go silent for longer than request_timeout: its headers are
        # awaited within it, and then the reader's watchdog looks at it (no sock_read timer: see sse_reader).
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        self._reader = SSEReader(self.request_timeout, self.max_answer, self.max_event, self.prometheus)
        self._timeout = aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=self.connect_timeout)
        self._urls: dict[str, str] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.limit, limit_per_host=self.limit, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
        )

    async def aclose(self) -> None:
        await self._reader.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    def _headers(self, ctx: RequestContext) -> CIMultiDict[str]:
        out: CIMultiDict[str] = CIMultiDict()
        for k, v in ctx.headers.items():
            if k.lower() not in _DROP_REQUEST:
                out.add(k, v)
        if self.api_key:
            out["Authorization"] = f"Bearer {self.api_key}"
        return out

    def wants_usage(self, ctx: RequestContext) -> bool:
        """Whether this request should ask upstream for token usage its client did not ask for (``stream_usage``):
        a chat or completions stream without ``stream_options.include_usage``. The server adds it to the request
        before the chain (so the cache key covers what is sent, and the cache keeps the usage with the answer) and
        takes it out of what the client gets."""
        if not (self.stream_usage and ctx.is_stream_request and ctx.kind in ("chat", "completions")):
            return False
        options = ctx.json.get("stream_options") if ctx.json is not None else None
        return not (isinstance(options, dict) and options.get("include_usage"))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return float(min(retry_after, self.request_timeout))
        d = min(self.max_backoff, self.backoff * 2.0**attempt)
        return d / 2 + random.uniform(0, d / 2)

    async def __call__(self, ctx: RequestContext) -> ProxyResponse:
        if not self.url:
            raise UpstreamUnreachableError("no upstream URL is configured (set server.upstream_url or --upstream)")
        url = self._url_for(ctx)
        # The client's own bytes unless a layer (or the server, asking for usage) changed the body: what goes
        # upstream is always the request the cache key was made from. A large changed body is serialised in a thread.
        body: bytes | None = None
        if ctx.method not in ("GET", "HEAD"):
            body = await asyncio.to_thread(ctx.body_bytes) if ctx.is_large else ctx.body_bytes()
        t0 = time.perf_counter()
        resp = await self._send(ctx, url, body)
        out_headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in resp.headers.items()
            if (low := k.lower()) not in _DROP_RESPONSE and not low.startswith(_BROWSER_PREFIX)
        )
        if resp.status == 200 and resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            ctx.state[UPSTREAM_SECONDS] = time.perf_counter() - t0
            return ProxyResponse(resp.status, out_headers, stream=self._reader.events(ctx, resp, t0))
        data = await self._whole(resp, declared=ctx.method != "HEAD")
        ctx.state[UPSTREAM_SECONDS] = time.perf_counter() - t0
        out = ProxyResponse(resp.status, out_headers, body=data)
        if resp.status == 200:
            out.null_content_to_empty()
        return out

    def _url_for(self, ctx: RequestContext) -> str:
        url = self._urls.get(ctx.path)
        if url is None:
            url = upstream_url_for(self.url or "", ctx.path)
            if len(self._urls) < 1024:  # paths are few (a harness uses one or two); never grow without bound
                self._urls[ctx.path] = url
        if ctx.query:
            url = f"{url}{'&' if '?' in url else '?'}{ctx.query}"
        return url

    async def _send(self, ctx: RequestContext, url: str, body: bytes | None) -> aiohttp.ClientResponse:
        """The upstream's answer (its headers; the body is read by the caller), retried with backoff on connection
        errors and on ``retry_on_status`` until ``max_retries``."""
        headers = self._headers(ctx)
        stream = ctx.is_stream_request
        timeout = self._stream_timeout if stream else self._timeout
        attempt = 0
        while True:
            try:
                data: bytes | io.BytesIO | None = body
                if body is not None and len(body) > _LARGE_BODY:
                    data = io.BytesIO(body)
                pending = self.session.request(
                    ctx.method, url, data=data, headers=headers, timeout=timeout, allow_redirects=False
                )
                if stream:
                    async with asyncio.timeout(self.request_timeout):
                        resp = await pending
                else:
                    resp = await pending
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                self.prometheus.errors.labels("upstream_timeout").inc()
                raise UpstreamTimeoutError(
                    f"the upstream did not answer within {self.request_timeout:g}s ({redact_url(url)})"
                ) from exc
            except aiohttp.ClientError as exc:
                if attempt < self.max_retries:
                    self.prometheus.retries.labels("connection").inc()
                    await asyncio.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                self.prometheus.errors.labels("upstream_unreachable").inc()
                raise UpstreamUnreachableError(
                    f"cannot reach the upstream at {redact_url(url)}: {type(exc).__name__}: {redact_url(str(exc))}"
                    + (f" (after {attempt + 1} attempts)" if attempt else "")
                ) from exc
            if resp.status not in self.retry_status or attempt >= self.max_retries:
                return resp
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            resp.release()
            self.prometheus.retries.labels(str(resp.status)).inc()
            log.info("upstream answered %s; retry %d/%d", resp.status, attempt + 1, self.max_retries)
            await asyncio.sleep(self._delay(attempt, retry_after))
            attempt += 1

    async def _whole(self, resp: aiohttp.ClientResponse, declared: bool) -> bytes:
        """The body of an answer that is not a stream, its failures typed (the connection is let go either way)."""
        try:
            return await self._read(resp, declared)
        except AnswerTooLargeError:
            resp.close()  # the rest is never read
            self.prometheus.errors.labels("answer_too_large").inc()
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            resp.close()
            self.prometheus.errors.labels("upstream_timeout").inc()
            raise UpstreamTimeoutError(
                f"the upstream did not finish its answer within {self.request_timeout:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            resp.close()
            self.prometheus.errors.labels("upstream_broken").inc()
            raise UpstreamProtocolError(f"the upstream broke off its answer: {type(exc).__name__}: {exc}") from exc
        finally:
            resp.release()

    async def _read(self, resp: aiohttp.ClientResponse, declared: bool) -> bytes:
        """The whole body of an answer that is not a stream, read no further than ``max_answer_bytes``: with
        ``declared`` (not for HEAD, whose Content-Length describes a body never sent), a Content-Length over it is
        refused before reading; a body is also counted as it comes (one without Content-Length, or decompressed)."""
        limit = self.max_answer
        if declared and resp.content_length is not None and resp.content_length > limit:
            raise answer_too_large(limit, f"declares {resp.content_length} bytes, more than max_answer_bytes allows")
        parts: list[bytes] = []
        size = 0
        content = resp.content
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                raise answer_too_large(limit, "went past max_answer_bytes")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)
