"""The aiohttp app: routes, error mapping, and the one place that opens and closes the run's resources.

:func:`create_app` builds an ``aiohttp.web.Application`` from a loaded config. Every path not listed below is
proxied through the chain (any method). Its ``cleanup_ctx`` opens the upstream session, the interceptors and the
periodic statistics writer, and at shutdown, after in-flight requests finished, closes the interceptors (which flush
their statistics), runs the post-eval hooks once, and closes the upstream.

    GET  /health                      liveness and a few counters
    GET  /metrics                     Prometheus text
    POST /adapterserver/run-post-hook run the post-eval hooks now (NeMo Evaluator compatible)
    *    /{anything}                  proxied
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from evalproxy.adapter.chain import Next, build_chain
from evalproxy.adapter.config import LoadedConfig, resolve_hooks, resolve_interceptors
from evalproxy.adapter.context import (
    CACHE_HIT,
    UPSTREAM_SECONDS,
    ProxyResponse,
    RequestContext,
    RunContext,
    request_kind,
)
from evalproxy.adapter.errors import (
    BadRequestError,
    PayloadTooLargeError,
    ProxyError,
    UnauthorizedError,
)
from evalproxy.adapter.metrics import CONTENT_TYPE, ProxyMetrics
from evalproxy.adapter.output import METRICS_FILE, MetricsFile, write_effective_config
from evalproxy.adapter.redact import redact_obj
from evalproxy.adapter.registry import Registry
from evalproxy.adapter.status import Snapshot, StatusReporter
from evalproxy.adapter.upstream import Upstream

log = logging.getLogger("evalproxy.server")

PROXY: web.AppKey[Proxy] = web.AppKey("evalproxy")
OVERHEAD_HEADER = "X-EvalProxy-Overhead-Ms"
# Bodies of these types go upstream untouched and unparsed (audio uploads, images). Every other body must be JSON,
# whatever its Content-Type says: `curl -d` labels JSON as a form, and some harnesses send none at all.
_OPAQUE_TYPES = ("multipart/", "audio/", "image/", "video/")
_ROOT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embedding": "/v1/embeddings",
               "embeddings": "/v1/embeddings"}
STATS_WRITE_INTERVAL = 5.0


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)


class Proxy:
    """Everything one running proxy owns: the run, the chain, the upstream, interceptors and hooks."""

    def __init__(self, loaded: LoadedConfig, registry: Registry | None = None, run_id: str | None = None) -> None:
        self.loaded = loaded
        adapter, server = loaded.adapter, loaded.server
        self.registry = registry or Registry.default(adapter.discovery.modules, adapter.discovery.dirs)
        self._resolved = resolve_interceptors(adapter, self.registry, prefix=loaded.prefix, file=loaded.source)
        self._resolved_hooks = resolve_hooks(adapter, self.registry, prefix=loaded.prefix, file=loaded.source)
        output_dir = Path(server.output_dir)
        self.metrics = ProxyMetrics()
        self.run = RunContext(
            output_dir=output_dir,
            run_id=run_id or new_run_id(),
            config=adapter,
            server=server,
            metrics=self.metrics,
            metrics_file=MetricsFile(output_dir / METRICS_FILE),
        )
        endpoint_params = next((p for cls, p in self._resolved if cls.name == "endpoint"), None)
        self.upstream = Upstream(server, self.metrics, endpoint_params)
        self.interceptors: list[Any] = []
        self.chain: Next = self.upstream
        self.admin_token = server.admin_token()
        self.answered = 0
        self.errors = 0
        self.in_flight = 0
        self.cache_hits = 0
        self.status = StatusReporter(
            self.snapshot, mode=server.status_line, interval=server.status_interval
        )
        self._hooks_ran_at: int | None = None
        self._hooks_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[asyncio.Task[web.StreamResponse]] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self.run.output_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(
            write_effective_config, self.run.output_dir, self.loaded.adapter, self.loaded.server
        )
        await self.upstream.start()
        for cls, params in self._resolved:
            if cls.name == "endpoint":
                continue
            # Constructors may open files (a cache): keep that off the event loop.
            self.interceptors.append(await asyncio.to_thread(cls, params, self.run))
        self.chain = build_chain(self.interceptors, self.upstream)
        self._tasks.append(asyncio.create_task(self._write_stats_periodically(), name="evalproxy-stats-writer"))
        self.status.start()
        log.info(
            "run %s: chain %s -> %s",
            self.run.run_id,
            " -> ".join(cls.name for cls, _ in self._resolved) or "endpoint",
            self.loaded.server.upstream_url,
        )

    def snapshot(self) -> Snapshot:
        return Snapshot(self.answered, self.errors, self.cache_hits, self.in_flight)

    async def aclose(self) -> None:
        if self._pending:
            # Answers whose clients left: let them finish (bounded), so what was paid for is stored.
            _, late = await asyncio.wait(self._pending, timeout=self.loaded.server.shutdown_timeout)
            for leftover in late:
                leftover.cancel()
        await self.status.aclose()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for ic in reversed(self.interceptors):
            try:
                await ic.aclose()
            except Exception:
                log.exception("closing interceptor '%s' failed", ic.name)
        await self._write_stats()
        await self.run_hooks(only_if_new=True)
        await self.upstream.aclose()

    async def _write_stats(self) -> None:
        try:
            await self.run.metrics_file.write()
        except OSError as exc:
            self.metrics.errors.labels("stats_write").inc()
            log.warning("cannot write %s: %s", self.run.metrics_file.path, exc)

    async def _write_stats_periodically(self) -> None:
        while True:
            await asyncio.sleep(STATS_WRITE_INTERVAL)
            if self.run.metrics_file.dirty:
                await self._write_stats()

    async def run_hooks(self, *, only_if_new: bool = False) -> list[dict[str, Any]]:
        """Run the post-eval hooks; with ``only_if_new``, skip if they already ran and no request came since."""
        async with self._hooks_lock:
            if only_if_new and self._hooks_ran_at is not None and self._hooks_ran_at == self.answered:
                return []
            await self._write_stats()
            results = []
            for cls, params in self._resolved_hooks:
                t0 = time.perf_counter()
                try:
                    hook = cls(params, self.run)
                    await hook()
                    results.append({"name": cls.name, "ok": True, "seconds": round(time.perf_counter() - t0, 3)})
                except Exception as exc:
                    log.exception("post-eval hook '%s' failed", cls.name)
                    results.append({"name": cls.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            self._hooks_ran_at = self.answered
            return results

    # -- request handling ------------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer a proxied request in a task of its own that outlives the client.

        A client that disconnects cancels its handler (aiohttp can be set up that way, and its test server is);
        the answer it asked for is still being paid for, so the work goes on, shielded, until the answer is complete
        and stored, and only the writing to the client stops.
        """
        task = asyncio.create_task(self._answer(request))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.metrics.in_flight.inc()
        ctx: RequestContext | None = None
        status = 500
        try:
            try:
                ctx = await self._context(request)
                resp = await self.chain(ctx)
            except ProxyError as exc:
                resp = _error_response(exc)
                self.metrics.errors.labels(exc.code or exc.type).inc()
            except Exception as exc:
                # A bug of ours: still an OpenAI-shaped answer, and a full traceback in the log.
                log.exception("internal error while answering %s %s", request.method, request.path)
                resp = _error_response(ProxyError(f"internal proxy error: {type(exc).__name__}: {exc}"))
                self.metrics.errors.labels("internal").inc()
            status = resp.status
            if status >= 400 and self.loaded.adapter.log_failed_requests:
                self._log_failure(ctx, resp)
            if resp.stream is not None:
                return await self._send_stream(request, ctx, resp)
            headers = resp.headers
            if ctx is not None:
                headers[OVERHEAD_HEADER] = _overhead_ms(ctx)
            return web.Response(status=resp.status, headers=headers, body=resp.body)
        finally:
            self.in_flight -= 1
            self.answered += 1
            if status >= 400:
                self.errors += 1
            self.metrics.in_flight.dec()
            self._observe(request, ctx, status)

    def _path(self, request: web.Request) -> str:
        """The request's path; a POST to ``/`` (NeMo Evaluator's adapter is called that way) means endpoint_type."""
        if request.path == "/" and request.method == "POST":
            return _ROOT_PATHS.get(self.loaded.adapter.endpoint_type, "/v1/chat/completions")
        return request.path

    async def _context(self, request: web.Request) -> RequestContext:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise PayloadTooLargeError(
                f"request body is larger than max_request_bytes ({self.loaded.server.max_request_bytes} bytes)"
            ) from exc
        body: dict[str, Any] | None = None
        if request.method in ("POST", "PUT", "PATCH") and not request.content_type.startswith(_OPAQUE_TYPES):
            if not raw.strip():
                raise BadRequestError("request body is empty; expected a JSON object")
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
            if not isinstance(parsed, dict):
                raise BadRequestError(
                    f"request body must be a JSON object, not {type(parsed).__name__}", code="invalid_body"
                )
            body = parsed
        return RequestContext(
            method=request.method,
            path=self._path(request),
            query=request.query_string,
            headers=CIMultiDict(request.headers),
            raw=raw,
            json=body,
            run=self.run,
            request_id=self.run.next_request_id(),
        )

    async def _send_stream(
        self, request: web.Request, ctx: RequestContext | None, resp: ProxyResponse
    ) -> web.StreamResponse:
        assert resp.stream is not None
        headers = resp.headers
        if ctx is not None:
            headers[OVERHEAD_HEADER] = _overhead_ms(ctx)
        out = web.StreamResponse(status=resp.status, headers=headers)
        client_gone = False
        first = True
        try:
            await out.prepare(request)
        except (ConnectionResetError, OSError):
            client_gone = True
        try:
            async for event in resp.stream:
                if client_gone:
                    # Keep reading: the answer is being paid for, and the cache stores it once complete.
                    continue
                try:
                    await out.write(event)
                except (ConnectionResetError, OSError):
                    client_gone = True
                    log.info("client went away mid-stream; finishing the upstream answer for the cache")
                    continue
                if first and ctx is not None:
                    first = False
                    self.metrics.ttft_seconds.observe(time.perf_counter() - ctx.started)
        except ProxyError as exc:
            self.metrics.errors.labels(exc.code or exc.type).inc()
            log.warning("stream ended with an error: %s", exc.message)
            if not client_gone:
                with contextlib.suppress(ConnectionResetError, OSError):
                    await out.write(b"data: " + exc.to_json() + b"\n\n")
        if not client_gone:
            with contextlib.suppress(ConnectionResetError, OSError):
                await out.write_eof()
        return out

    def _log_failure(self, ctx: RequestContext | None, resp: ProxyResponse) -> None:
        """``log_failed_requests``: the failed request (secrets redacted) and the answer, in the log."""
        request = redact_obj(ctx.json) if ctx is not None and ctx.json is not None else None
        body = (resp.body or b"")[:2000].decode("utf-8", "replace")
        log.warning("request failed with %s: request=%s answer=%s", resp.status,
                    orjson.dumps(request).decode()[:4000] if request is not None else "-", body)

    def _observe(self, request: web.Request, ctx: RequestContext | None, status: int) -> None:
        hit = ctx is not None and ctx.state.get(CACHE_HIT, False)
        if hit:
            self.cache_hits += 1
        upstream_called = ctx is not None and ctx.state.get(UPSTREAM_SECONDS) is not None
        cache = "hit" if hit else ("miss" if upstream_called else "none")
        self.metrics.child(self.metrics.requests, request_kind(request.path), str(status), cache).inc()
        if ctx is not None:
            total = time.perf_counter() - ctx.started
            self.metrics.request_seconds.observe(total)
            up = ctx.state.get(UPSTREAM_SECONDS)
            if up is not None:
                self.metrics.upstream_seconds.observe(up)
                self.metrics.overhead_seconds.observe(max(0.0, total - up))

    # -- own endpoints ---------------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return _json(
            {
                "status": "ok",
                "run_id": self.run.run_id,
                "upstream": self.loaded.server.upstream_url,
                "requests": self.answered,
                "errors": self.errors,
                "in_flight": self.in_flight,
                "uptime_seconds": round(time.time() - self.run.started_at, 3),
            }
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def run_post_hook(self, request: web.Request) -> web.Response:
        if self.admin_token is not None:
            given = request.headers.get("X-Admin-Token") or request.headers.get("Authorization") or ""
            if given.removeprefix("Bearer ").strip() != self.admin_token:
                return _error(UnauthorizedError("this admin path needs the admin token (X-Admin-Token header)"))
        results = await self.run_hooks()
        return _json({"status": "ok", "hooks": results})


def _overhead_ms(ctx: RequestContext) -> str:
    total = time.perf_counter() - ctx.started
    up = ctx.state.get(UPSTREAM_SECONDS, 0.0)
    return f"{max(0.0, total - up) * 1000:.3f}"


def _error_response(exc: ProxyError) -> ProxyResponse:
    h: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    return ProxyResponse(exc.status, h, body=exc.to_json())


def _error(exc: ProxyError) -> web.Response:
    return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")


def create_app(loaded: LoadedConfig, *, registry: Registry | None = None, run_id: str | None = None) -> web.Application:
    """The proxy as an aiohttp Application. Resources open on app start-up and close on cleanup."""
    proxy = Proxy(loaded, registry, run_id)
    app = web.Application(client_max_size=loaded.server.max_request_bytes, handler_args={"max_field_size": 65536})
    app[PROXY] = proxy

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await proxy.open()
        yield
        await proxy.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/health", proxy.health)
    app.router.add_get("/metrics", proxy.metrics_text)
    app.router.add_post("/adapterserver/run-post-hook", proxy.run_post_hook)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app
