"""The running proxy's heart: one run, its chain, and how a request becomes an answer on the wire.

:class:`Proxy` owns the run's resources; each is opened and closed by a cleanup context of its own
(:meth:`Proxy.cleanup_contexts`, in the manner of aiohttp's ``cleanup_ctx``), so a start that fails halfway closes
exactly what opened, in reverse order. At shutdown, after in-flight requests finished: the status line stops, the
statistics writer stops, the interceptors close (flushing their statistics), the post-eval hooks run once (if the
start had completed), and the upstream session closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from evalproxy.adapter.chain.interceptor import Interceptor, Next, Terminal, build_chain
from evalproxy.adapter.config import nemo04
from evalproxy.adapter.config.schema import LoadedConfig
from evalproxy.adapter.core.errors import PayloadTooLargeError, ProxyError, RequestTimeoutError
from evalproxy.adapter.core.files import atomic_write_bytes
from evalproxy.adapter.core.redact import redact_obj, redact_text, redact_url
from evalproxy.adapter.flow.request import ENDPOINT_PATHS, RequestContext
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.state import CACHE_HIT, UPSTREAM_SECONDS
from evalproxy.adapter.registry.registry import Resolved, resolve
from evalproxy.adapter.server.forwarding import Forwarding, parse_body
from evalproxy.adapter.server.lifecycle import open_run, run_hooks
from evalproxy.adapter.server.output import STATISTICS_FILE, StatisticsFile, write_effective_config
from evalproxy.adapter.server.prometheus import Prometheus
from evalproxy.adapter.server.status import Snapshot, StatusReporter
from evalproxy.adapter.server.stream_writer import write_stream

log = logging.getLogger("evalproxy.server")

OVERHEAD_HEADER = "X-EvalProxy-Overhead-Ms"
STATS_WRITE_INTERVAL = 5.0

CleanupContext = Callable[[web.Application], AsyncIterator[None]]
Observer = Callable[[RequestContext, ProxyResponse | None, int], None]
"""Called on the event loop once per answered request, with its context, the answer the client was sent (None when
the request never became one) and its final status; it must be quick (queue work, never wait). Read ``.json`` only
of a whole (non-stream) answer."""


class Proxy:
    """Everything one running proxy owns: the run, the chain, the transport, interceptors and hooks."""

    def __init__(self, loaded: LoadedConfig, resolved: Resolved | None = None, run_id: str | None = None) -> None:
        self.resolved = resolved or resolve(loaded)
        self.prometheus = Prometheus()
        self.run = open_run(loaded, run_id, self.prometheus)
        self.loaded = LoadedConfig(self.run.config, self.run.server, loaded.source, loaded.prefix,
                                   snapshot=loaded.snapshot)
        self.statistics_file = StatisticsFile(self.run.output_dir / STATISTICS_FILE, self.run.statistics)
        self.transport: Terminal | None = None
        self.interceptors: list[Interceptor] = []
        self.chain: Next = self._not_started
        self.admin_token = self.run.server.admin_token()
        self.forwarding = Forwarding(self.run.server)
        self.answered = 0
        self.errors = 0
        self.in_flight = 0
        self.cache_hits = 0
        self._move_in_flight_gauge = not self.prometheus.count_in_flight(lambda: self.in_flight)
        """Only under ``serve --workers``: elsewhere the gauge reads :attr:`in_flight` when scraped."""
        self.ready = False
        self._hooks_ran_at: int | None = None
        self._hooks_lock = asyncio.Lock()
        self.observers: list[Observer] = []
        """Told of every request the chain answered (see :data:`Observer`); a failing observer is logged, never
        raised."""

    async def _not_started(self, ctx: RequestContext) -> ProxyResponse:
        raise ProxyError("the proxy is not started")

    # -- lifecycle: one cleanup context per resource ----------------------------------------------------------------
    def cleanup_contexts(self) -> list[CleanupContext]:
        """In start order; aiohttp closes those that opened in reverse order, also when a later one failed."""
        return [self._output_ctx, self._transport_ctx, self._hooks_ctx, self._interceptors_ctx,
                self._statistics_ctx, self._status_ctx, self._in_flight_ctx]

    async def _output_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(self.run.output_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(write_effective_config, self.run.output_dir, self.run.config, self.run.server)
        if self.loaded.snapshot is not None:  # a NeMo 0.4-shaped file: kept as written, as 0.4 keeps it
            await asyncio.to_thread(_write_snapshot, self.run.output_dir, self.loaded.snapshot, self.loaded.source)
        yield

    async def _transport_ctx(self, app: web.Application) -> AsyncIterator[None]:
        cls, params = self.resolved.terminal
        transport: Terminal = cls(params, self.run)
        await transport.start()
        self.transport = transport
        try:
            yield
        finally:
            self.transport = None
            await transport.aclose()

    async def _hooks_ctx(self, app: web.Application) -> AsyncIterator[None]:
        yield
        if self.ready:  # a start that failed halfway has no run to report on
            await self.run_hooks(only_if_new=True)

    async def _interceptors_ctx(self, app: web.Application) -> AsyncIterator[None]:
        assert self.transport is not None
        try:
            for cls, params in self.resolved.interceptors:
                # Constructors may open files (a cache): keep that off the event loop.
                self.interceptors.append(await asyncio.to_thread(cls, params, self.run))
        except BaseException:
            await self._close_interceptors()
            raise
        self.chain = build_chain(self.interceptors, self.transport)
        try:
            yield
        finally:
            self.chain = self._not_started
            await self._close_interceptors()

    async def _close_interceptors(self) -> None:
        for ic in reversed(self.interceptors):
            try:
                await ic.aclose()
            except Exception:
                log.exception("closing interceptor '%s' failed", ic.name)
        self.interceptors.clear()

    async def _statistics_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """The statistics writer: every ``STATS_WRITE_INTERVAL`` seconds, or when a unit asks, if any number changed,
        :meth:`write_statistics` (a snapshot of every section on the loop, the files in a thread)."""
        wake = asyncio.Event()

        async def periodically() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), STATS_WRITE_INTERVAL)
                wake.clear()
                if self.run.statistics.dirty:
                    await self.write_statistics()

        task = asyncio.create_task(periodically(), name="evalproxy-statistics-writer")
        self.run.statistics.wake = wake.set
        try:
            yield
        finally:
            self.run.statistics.wake = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _status_ctx(self, app: web.Application) -> AsyncIterator[None]:
        s = self.run.server
        status = StatusReporter(self.status, mode=s.status_line, interval=s.status_interval,
                                total=s.progress_total)
        status.start()
        try:
            yield
        finally:
            await status.aclose()

    async def _in_flight_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self.ready = True
        log.info("run %s: chain %s -> %s", self.run.run_id,
                 " -> ".join(ic.name for _, ic in self.run.config.enabled_interceptors())
                 or self.resolved.terminal[0].name,
                 redact_url(self.run.server.upstream_url))
        yield

    def status(self) -> Snapshot:
        return Snapshot(self.answered, self.errors, self.cache_hits, self.in_flight)

    async def write_statistics(self) -> None:
        """Write ``eval_factory_metrics.json`` and the units' per-run files now; a failure is logged and counted."""
        try:
            await self.statistics_file.write()
        except OSError as exc:
            self.prometheus.errors.labels("stats_write").inc()
            log.warning("cannot write %s: %s", self.statistics_file.path, exc)

    async def run_hooks(self, *, only_if_new: bool = False) -> list[dict[str, Any]]:
        """Run the post-eval hooks; with ``only_if_new``, skip if they already ran and no request came since."""
        async with self._hooks_lock:
            if only_if_new and self._hooks_ran_at is not None and self._hooks_ran_at == self.answered:
                return []
            await self.write_statistics()
            results = await run_hooks(self.resolved.hooks, self.run)
            self._hooks_ran_at = self.answered
            return results

    # -- request handling ------------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer a proxied request. The server never cancels a handler whose client left (``RunningProxy`` and the
        tests' server are set up so): the answer being paid for runs to its end and is stored; only the writing to
        the client stops."""
        self.in_flight += 1
        if self._move_in_flight_gauge:
            self.prometheus.in_flight.inc()
        ctx: RequestContext | None = None
        resp: ProxyResponse | None = None
        status = 500
        hide_usage = False
        try:
            try:
                ctx = await self._context(request)
                hide_usage = self.transport is not None and _ask_usage(ctx, self.transport)
                resp = await self.chain(ctx)
            except ProxyError as exc:
                resp = _error_response(exc)
                self.prometheus.errors.labels(exc.code or exc.type).inc()
            except Exception as exc:
                # A bug of ours: still an OpenAI-shaped answer, and a full traceback in the log.
                log.exception("internal error while answering %s %s", request.method, request.path)
                resp = _error_response(ProxyError(f"internal proxy error: {type(exc).__name__}: {exc}"))
                self.prometheus.errors.labels("internal").inc()
            status = resp.status
            if status >= 400 and self.run.config.log_failed_requests:
                _log_failure(ctx, resp, self.run.server.secrets())
            if ctx is not None:
                resp.headers[OVERHEAD_HEADER] = _overhead_ms(ctx)
            if resp.stream is not None:
                out, status = await write_stream(request, ctx, resp, self.prometheus, hide_usage=hide_usage)
                return out
            return web.Response(status=resp.status, headers=resp.headers, body=resp.body)
        finally:
            self.in_flight -= 1
            self.answered += 1
            if status >= 400:
                self.errors += 1
            if self._move_in_flight_gauge:
                self.prometheus.in_flight.dec()
            self._observe(request, ctx, resp, status)

    def _path(self, request: web.Request) -> str:
        """The request's path; a POST to ``/`` (NeMo Evaluator's adapter is called that way) means endpoint_type."""
        if request.path == "/" and request.method == "POST":
            return ENDPOINT_PATHS.get(self.run.config.endpoint_type, "/v1/chat/completions")
        return request.path

    async def _context(self, request: web.Request) -> RequestContext:
        path = self._path(request)
        self.forwarding.check(request.method, request.raw_path, path)
        server = self.run.server
        try:
            if request.content.is_eof():  # the whole body came with the headers (the usual case): nothing to wait for
                raw = await request.read()
            else:
                async with asyncio.timeout(server.client_body_timeout):
                    raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLargeError(
                f"request body is larger than max_request_bytes ({server.max_request_bytes} bytes)"
            ) from exc
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive within client_body_timeout ({server.client_body_timeout:g} s)"
            ) from None
        body = None
        if request.method in ("POST", "PUT", "PATCH") and not self.forwarding.is_opaque(request):
            body = await parse_body(raw, server.max_json_depth, server.max_json_objects)
        return RequestContext(
            method=request.method,
            path=path,
            query=request.rel_url.raw_query_string,
            headers=CIMultiDict(request.headers),
            raw=raw,
            json=body,
            run=self.run,
            request_id=self.run.next_request_id(),
            client_gone=lambda: request.transport is None,
        )

    def _observe(self, request: web.Request, ctx: RequestContext | None, resp: ProxyResponse | None,
                 status: int) -> None:
        prom = self.prometheus
        if ctx is None:
            prom.count_request(request.path, status, "none")
            return
        state = ctx.state
        hit = state.get(CACHE_HIT, False)
        up = state.get(UPSTREAM_SECONDS)
        if hit:
            self.cache_hits += 1
        prom.count_request(request.path, status, "hit" if hit else "none" if up is None else "miss")
        total = time.perf_counter() - ctx.started
        prom.request_seconds.observe(total)
        if up is not None:
            prom.upstream_seconds.observe(up)
            prom.overhead_seconds.observe(max(0.0, total - up))
        for observer in self.observers:
            try:
                observer(ctx, resp, status)
            except Exception:
                log.exception("request observer %r failed", observer)


def _overhead_ms(ctx: RequestContext) -> str:
    total = time.perf_counter() - ctx.started
    up = ctx.state.get(UPSTREAM_SECONDS, 0.0)
    return f"{max(0.0, total - up) * 1000:.3f}"


def _error_response(exc: ProxyError) -> ProxyResponse:
    h: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    return ProxyResponse(exc.status, h, body=exc.to_json())


def _ask_usage(ctx: RequestContext, transport: Terminal) -> bool:
    """Ask upstream for a stream's token usage when the transport wants it and the client did not: as a change of
    the request before the chain, so the cache key covers what is sent and the cache keeps the usage with the answer
    (a replayed stream reports the same tokens). True: the client gets the stream without it."""
    if ctx.json is None or not transport.wants_usage(ctx):
        return False
    options = ctx.json.get("stream_options")
    extra = options if isinstance(options, dict) else {}
    ctx.set_json({**ctx.json, "stream_options": {**extra, "include_usage": True}})
    return True


def _log_failure(ctx: RequestContext | None, resp: ProxyResponse, secrets: list[str]) -> None:
    """``log_failed_requests``: the failed request and the answer, in the log (secret fields and the run's secret
    values redacted)."""
    request = redact_obj(ctx.json, secrets) if ctx is not None and ctx.json is not None else None
    body = redact_text((resp.body or b"")[:2000].decode("utf-8", "replace"), secrets)
    log.warning("request failed with %s: request=%s answer=%s", resp.status,
                orjson.dumps(request).decode()[:4000] if request is not None else "-", body)


def _write_snapshot(output_dir: Path, snapshot: dict[str, Any], source: str | None) -> None:
    """The 0.4-shaped config file, as written, into the run's output dir (YAML dumped here: off the event loop)."""
    atomic_write_bytes(output_dir / nemo04.SNAPSHOT_FILE, nemo04.snapshot_text(snapshot, source).encode())
