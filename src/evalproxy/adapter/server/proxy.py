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
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from evalproxy.adapter.chain.interceptor import Interceptor, Next, Terminal, build_chain
from evalproxy.adapter.config.schema import AdapterConfig, LoadedConfig
from evalproxy.adapter.core.errors import (
    PayloadTooLargeError,
    ProxyError,
    RequestTimeoutError,
    UnauthorizedError,
)
from evalproxy.adapter.core.net import is_store_url
from evalproxy.adapter.core.redact import redact_obj, redact_url
from evalproxy.adapter.flow.request import RequestContext, request_kind
from evalproxy.adapter.flow.response import ProxyResponse
from evalproxy.adapter.flow.run import RunContext
from evalproxy.adapter.flow.state import ANSWER, CACHE_HIT, EVENTS_AT_HAND, UPSTREAM_SECONDS, WRITE_HELD
from evalproxy.adapter.registry.registry import Resolved, resolve
from evalproxy.adapter.server.forwarding import OFF_LOOP_BYTES, Forwarding, outgoing_headers, parse_body
from evalproxy.adapter.server.output import STATISTICS_FILE, StatisticsFile, write_effective_config
from evalproxy.adapter.server.prometheus import CONTENT_TYPE, Prometheus
from evalproxy.adapter.server.status import Snapshot, StatusReporter

log = logging.getLogger("evalproxy.server")

OVERHEAD_HEADER = "X-EvalProxy-Overhead-Ms"
_ROOT_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embedding": "/v1/embeddings",
               "embeddings": "/v1/embeddings"}
STATS_WRITE_INTERVAL = 5.0
# Config params that name a place on disk: made absolute at start, so a report rendered later from another working
# directory finds the same files.
_PATH_PARAMS = ("cache_dir", "output_dir")

CleanupContext = Callable[[web.Application], AsyncIterator[None]]
Observer = Callable[[RequestContext, int], None]
"""Called on the event loop once per answered request, with its context and final status; it must be quick (queue
work, never wait). The answer sent is ``ctx.state[ANSWER]`` when there was one."""


def new_run_id() -> str:
    """A run id that sorts by start time (UTC, so it sorts across DST changes and machines)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def absolute_paths(adapter: AdapterConfig, base: Path) -> AdapterConfig:
    """``adapter`` with relative ``caching_dir`` and interceptor ``cache_dir`` / ``output_dir`` made absolute."""
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not is_store_url(value):
            p = Path(value).expanduser()
            return str(p if p.is_absolute() else (base / p).resolve())
        return value

    interceptors = [
        ic.model_copy(update={"config": {k: fix(v) if k in _PATH_PARAMS else v for k, v in ic.config.items()}})
        for ic in adapter.interceptors
    ]
    return adapter.model_copy(update={"caching_dir": fix(adapter.caching_dir), "interceptors": interceptors})


class Proxy:
    """Everything one running proxy owns: the run, the chain, the transport, interceptors and hooks."""

    def __init__(self, loaded: LoadedConfig, resolved: Resolved | None = None, run_id: str | None = None,
                 *, handler_cancellation: bool = True) -> None:
        self.resolved = resolved or resolve(loaded)
        cwd = Path.cwd()
        adapter = absolute_paths(loaded.adapter, cwd)
        server = loaded.server.model_copy(update={"output_dir": str((cwd / loaded.server.output_dir).resolve())})
        self.loaded = LoadedConfig(adapter, server, loaded.source, loaded.prefix)
        self.prometheus = Prometheus()
        self.run = RunContext(
            output_dir=Path(server.output_dir),
            run_id=run_id or new_run_id(),
            config=adapter,
            server=server,
            prometheus=self.prometheus,
        )
        self.statistics_file = StatisticsFile(self.run.output_dir / STATISTICS_FILE, self.run.statistics)
        self.transport: Terminal | None = None
        self.interceptors: list[Interceptor] = []
        self.chain: Next = self._not_started
        self.admin_token = server.admin_token()
        self.forwarding = Forwarding(server)
        self.answered = 0
        self.errors = 0
        self.in_flight = 0
        self.cache_hits = 0
        self.ready = False
        self._hooks_ran_at: int | None = None
        self._hooks_lock = asyncio.Lock()
        self._pending: set[asyncio.Task[web.StreamResponse]] = set()
        self.handler_cancellation = handler_cancellation
        """Whether the server cancels a handler whose client left (aiohttp's test server does; ``RunningProxy``'s
        does not): only then does each answer need a task of its own."""
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
        yield

    async def _transport_ctx(self, app: web.Application) -> AsyncIterator[None]:
        cls, params = next(((c, p) for c, p in self.resolved.interceptors if c.name == "endpoint"), (None, None))
        if cls is None:
            cls = self.resolved.registry.interceptor("endpoint")
            params = cls.Params()
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
                if cls.name != "endpoint":
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
        status = StatusReporter(self.status, mode=s.status_line, interval=s.status_interval)
        status.start()
        try:
            yield
        finally:
            await status.aclose()

    async def _in_flight_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self.ready = True
        log.info("run %s: chain %s -> %s", self.run.run_id,
                 " -> ".join(cls.name for cls, _ in self.resolved.interceptors) or "endpoint",
                 redact_url(self.run.server.upstream_url))
        yield
        if self._pending:
            # Answers whose clients left: let them finish (bounded), so what was paid for is stored.
            _, late = await asyncio.wait(self._pending, timeout=self.run.server.shutdown_timeout)
            for leftover in late:
                leftover.cancel()

    def status(self) -> Snapshot:
        return Snapshot(self.answered, self.errors, self.cache_hits, self.in_flight)

    async def write_statistics(self) -> None:
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
            results = []
            for cls, params in self.resolved.hooks:
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
        and stored, and only the writing to the client stops. A server that never cancels handlers needs no shield.
        """
        if not self.handler_cancellation:
            return await self._answer(request)
        task = asyncio.create_task(self._answer(request))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.prometheus.in_flight.inc()
        ctx: RequestContext | None = None
        status = 500
        try:
            try:
                ctx = await self._context(request)
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
            if ctx is not None:
                ctx.state[ANSWER] = resp
            if status >= 400 and self.run.config.log_failed_requests:
                self._log_failure(ctx, resp)
            if ctx is not None:
                resp.headers[OVERHEAD_HEADER] = _overhead_ms(ctx)
            if resp.stream is not None:
                out, status = await self._send_stream(request, ctx, resp)
                return out
            return web.Response(status=resp.status, headers=outgoing_headers(resp.headers), body=resp.body)
        finally:
            self.in_flight -= 1
            self.answered += 1
            if status >= 400:
                self.errors += 1
            self.prometheus.in_flight.dec()
            self._observe(request, ctx, status)
            if ctx is not None and len(ctx.raw) > OFF_LOOP_BYTES:
                # Freeing a body of millions of objects takes as long as parsing it: in a thread, as that was.
                last = [ctx]
                del ctx
                await asyncio.to_thread(last.clear)

    def _path(self, request: web.Request) -> str:
        """The request's path; a POST to ``/`` (NeMo Evaluator's adapter is called that way) means endpoint_type."""
        if request.path == "/" and request.method == "POST":
            return _ROOT_PATHS.get(self.run.config.endpoint_type, "/v1/chat/completions")
        return request.path

    async def _context(self, request: web.Request) -> RequestContext:
        path = self._path(request)
        self.forwarding.check(request.method, request.raw_path, path)
        server = self.run.server
        try:
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

    async def _send_stream(
        self, request: web.Request, ctx: RequestContext | None, resp: ProxyResponse
    ) -> tuple[web.StreamResponse, int]:
        """Write a stream event by event; (the response, the status the request is counted with).

        A failure while the stream is read (the upstream broke off, an interceptor failed) ends the client's stream
        with an OpenAI-shaped error event and counts the request with the error's status, not the 200 already sent.
        """
        assert resp.stream is not None
        out = web.StreamResponse(status=resp.status, headers=outgoing_headers(resp.headers))
        status = resp.status
        sink = _ClientStream(out)
        first = True
        try:
            await out.prepare(request)
        except (ConnectionResetError, OSError):
            sink.gone = True
        error: ProxyError | None = None
        state = ctx.state if ctx is not None else None
        if state is not None:
            state[WRITE_HELD] = sink.write_held
        try:
            async for event in resp.stream:
                if sink.gone:
                    # Keep reading: the answer is being paid for, and the cache stores it once complete.
                    continue
                if state is not None and state.get(EVENTS_AT_HAND, False) and not event.is_done:
                    sink.held.append(event.raw)  # the next event is already here: both leave in one write
                    continue
                await sink.send(event.raw)
                if first and not sink.gone and ctx is not None:
                    first = False
                    self.prometheus.ttft_seconds.observe(time.perf_counter() - ctx.started)
        except ProxyError as exc:
            error = exc
            log.warning("stream ended with an error: %s", exc.message)
        except Exception as exc:
            log.exception("internal error in the middle of a stream")
            error = ProxyError(f"internal proxy error: {type(exc).__name__}: {exc}")
        if error is not None:
            status = error.status
            self.prometheus.errors.labels(error.code or error.type).inc()
            await sink.send(b"data: " + error.to_json() + b"\n\n")
        held = sink.write_held()
        if held is not None:
            await held
        if not sink.gone:
            with contextlib.suppress(ConnectionResetError, OSError):
                await out.write_eof()
        return out, status

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
        self.prometheus.child(self.prometheus.requests, request_kind(request.path), str(status), cache).inc()
        if ctx is not None:
            total = time.perf_counter() - ctx.started
            self.prometheus.request_seconds.observe(total)
            up = ctx.state.get(UPSTREAM_SECONDS)
            if up is not None:
                self.prometheus.upstream_seconds.observe(up)
                self.prometheus.overhead_seconds.observe(max(0.0, total - up))
            for observer in self.observers:
                try:
                    observer(ctx, status)
                except Exception:
                    log.exception("request observer %r failed", observer)

    # -- own endpoints ---------------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return _json(
            {
                "status": "ok",
                "run_id": self.run.run_id,
                "upstream": redact_url(self.run.server.upstream_url),
                "requests": self.answered,
                "errors": self.errors,
                "in_flight": self.in_flight,
                "uptime_seconds": round(time.time() - self.run.started_at, 3),
            }
        )

    async def prometheus_text(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.prometheus.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def run_post_hook(self, request: web.Request) -> web.Response:
        if self.admin_token is not None:
            given = request.headers.get("X-Admin-Token") or request.headers.get("Authorization") or ""
            token = given.removeprefix("Bearer ").strip()
            if not hmac.compare_digest(token.encode(), self.admin_token.encode()):
                return _error(UnauthorizedError("this admin path needs the admin token (X-Admin-Token header)"))
        results = await self.run_hooks()
        # NeMo Evaluator's answer (a hook's failure is logged, not an error of the call), with each hook's result.
        return _json({"status": "success", "message": "Post-eval hooks executed successfully", "hooks": results})


def _overhead_ms(ctx: RequestContext) -> str:
    total = time.perf_counter() - ctx.started
    up = ctx.state.get(UPSTREAM_SECONDS, 0.0)
    return f"{max(0.0, total - up) * 1000:.3f}"


class _ClientStream:
    """The client's side of a stream. An event whose successor has already arrived (the transport says so with
    :data:`EVENTS_AT_HAND`) is held and leaves with it in one write: under load the upstream's events come in
    bunches, and a write per event was a fifth of the proxy's CPU per stream. The transport flushes what is held
    before it waits for the network (:data:`WRITE_HELD`), so no event ever waits for one that has not arrived."""

    __slots__ = ("gone", "held", "out")

    def __init__(self, out: web.StreamResponse) -> None:
        self.out = out
        self.held: list[bytes] = []
        self.gone = False

    async def send(self, data: bytes) -> None:
        if self.held:
            self.held.append(data)
            data = b"".join(self.held)
            self.held.clear()
        if self.gone:
            return
        try:
            await self.out.write(data)
        except (ConnectionResetError, OSError):
            self.gone = True
            log.info("client went away mid-stream; finishing the upstream answer for the cache")

    def write_held(self) -> Coroutine[Any, Any, None] | None:
        """The write of what is held, to await; None if nothing is (no coroutine made for nothing, per event)."""
        return self.send(b"") if self.held else None


def _error_response(exc: ProxyError) -> ProxyResponse:
    h: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    return ProxyResponse(exc.status, h, body=exc.to_json())


def _error(exc: ProxyError) -> web.Response:
    return web.Response(status=exc.status, body=exc.to_json(), content_type="application/json")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")
